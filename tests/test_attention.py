"""alignkit's blocked causal attention (the CPU default) computes what SDPA computes: the same logits and
gradients over several blocks, with grouped key/value heads, under padding masks (handed to SDPA) and with a
cache; it is what the automatic settings pick on a CPU, and a model trained with it saves and loads anywhere."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.recipe.automatic import Facts, decide
from alignkit.train import attention
from alignkit.train.attention import NAME, register

CPU = Facts(device="cpu", bf16=True, flash_attn=False, liger=False, activations_fit=True, memory_reason="1 of 8 GiB")


@pytest.fixture
def model_with(small_llama):
    """The small Llama with `kernel` as its attention."""

    def build(kernel: str, kv_heads: int = 4):
        model = small_llama(kv_heads)
        model.set_attn_implementation(register() if kernel == NAME else kernel)
        return model

    return build


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 queries, so sequences of a few dozen tokens cross several block edges, and tiles of 200
    scores, so a batch's rows go through a block in several tiles."""
    monkeypatch.setattr(attention, "BLOCK", 8)
    monkeypatch.setattr(attention, "TILE", 200)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_logits_and_gradients_equal_sdpa_across_blocks(small_blocks, kv_heads, model_with):
    ids = torch.randint(0, 64, (3, 29), generator=torch.Generator().manual_seed(1))
    results = []
    for kernel in ("sdpa", NAME):
        model = model_with(kernel, kv_heads)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        results.append((out.logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (sdpa_logits, sdpa_grad), (ours_logits, ours_grad) = results
    torch.testing.assert_close(ours_logits, sdpa_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, sdpa_grad, rtol=1e-4, atol=1e-6)


def test_a_padding_mask_goes_to_sdpa_unchanged(small_blocks, model_with):
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding: a real mask, which the blocked path never sees
    sdpa, ours = (model_with(kernel)(input_ids=ids, attention_mask=mask).logits for kernel in ("sdpa", NAME))
    torch.testing.assert_close(ours, sdpa, rtol=1e-5, atol=1e-5)


def test_generation_with_a_cache_matches_sdpa(small_blocks, model_with):
    prompt = torch.randint(0, 64, (1, 19), generator=torch.Generator().manual_seed(3))
    outputs = [
        model_with(kernel).generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for kernel in ("sdpa", NAME)
    ]
    assert torch.equal(outputs[0], outputs[1])


def test_the_cpu_default_and_what_a_gpu_gets():
    from alignkit.methods import METHODS

    def chosen(facts: Facts, **model) -> tuple:
        recipe = METHODS["sft"].recipe.model_validate(
            {"model": {"name_or_path": "m", **model}, "data": {"datasets": [{"path": "d.jsonl"}]}}
        )
        (setting,) = [s for s in decide(recipe, facts) if s.path == "model.attn_implementation"]
        return setting.value, setting.automatic

    assert chosen(CPU) == ("blocked_matmul", True)
    gpu = Facts(device="cuda", bf16=True, flash_attn=True, liger=False)
    assert chosen(gpu) == ("flash_attention_2", True)
    assert chosen(Facts(device="cuda", bf16=True, flash_attn=False, liger=False)) == ("sdpa", True)
    assert chosen(CPU, attn_implementation="sdpa") == ("sdpa", False)


def test_a_model_saved_after_blocked_attention_loads_with_the_stock_kernels(tmp_path, model_with):
    from transformers import AutoModelForCausalLM

    model = model_with(NAME)
    model.save_pretrained(tmp_path)
    assert NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def _reference(query, key, value, offset: int):
    """float64 attention where query i sees keys up to offset + i."""
    q, k, v = (t.double() for t in (query, key, value))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    future = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).triu(offset + 1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v


@pytest.mark.parametrize(("offset", "kv_heads"), [(0, 3), (5, 3), (0, 1), (5, 1)])
def test_the_written_out_backward_matches_float64_autograd(small_blocks, offset, kv_heads):
    """Gradients of queries, keys and values in float32 and in bfloat16 (the CPU's autocast dtype) against a
    float64 reference, over blocks of 8, with keys ahead of the queries (a cache) and with three query heads
    sharing one key/value head."""
    generator = torch.Generator().manual_seed(5)
    batch, heads, length, dim = 2, 3, 21, 16
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, length + offset, dim, generator=generator) for _ in range(2))
    grad = torch.randn(batch, length, heads, dim, generator=generator)
    exact = [t.double().requires_grad_() for t in (query, key, value)]
    _reference(*exact, offset).transpose(1, 2).backward(grad.double())
    # bf16 rounds relative to the magnitude, and the keys' gradients sum over the heads that share them.
    for dtype, tolerance, relative in ((torch.float32, 1e-5, 0), (torch.bfloat16, 4e-2, 2e-2)):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (query, key, value)]
        out = attention.attend(*inputs, dim**-0.5)
        out.backward(grad.to(dtype))
        assert out.dtype == dtype
        expected = _reference(*exact, offset).transpose(1, 2).detach()
        torch.testing.assert_close(out.double(), expected, rtol=relative, atol=tolerance)
        for ours, reference in zip(inputs, exact, strict=True):
            assert ours.grad.dtype == dtype
            torch.testing.assert_close(ours.grad.double(), reference.grad, rtol=relative, atol=tolerance)


def test_training_under_bf16_autocast_follows_float32(small_blocks, model_with):
    """A model step under CPU autocast: the loss and a gradient land where float32's do, to bf16's precision."""
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(6))
    results = []
    for autocast in (False, True):
        model = model_with(NAME, kv_heads=2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.k_proj.weight.grad))
    (loss32, grad32), (loss16, grad16) = results
    assert abs(loss16 - loss32) < 0.02 * loss32
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.99


def test_under_autocast_the_products_run_in_the_autocast_dtype_as_sdpas_do(small_blocks):
    """The rotated queries and keys reach the kernel in float32 under autocast (the rotation tables are float32);
    it computes in bf16 like autocast's SDPA, not in float32 (which ran slower than SDPA)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(7)
    query, key = (torch.randn(2, 4, 20, 16, generator=generator) for _ in range(2))
    value = torch.randn(2, 4, 20, 16, generator=generator).bfloat16()
    module = torch.nn.Module()
    module.is_causal = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = attention.blocked_attention(module, query, key, value, None)
        sdpa, _ = sdpa_attention_forward(module, query, key, value, None)
    assert ours.dtype == sdpa.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), sdpa.float(), rtol=0, atol=4e-2)
