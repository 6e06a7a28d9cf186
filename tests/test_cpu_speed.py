"""What alignkit adds on a CPU under bf16 autocast beyond its attention kernel: grouped batches padded to a
multiple of 16 tokens (so the matrix kernels meet fewer lengths), norm outputs handed on in bf16 (what the
next products compute in anyway, the rotary tables left in float32), and dpo's batches split by length."""

from __future__ import annotations

import json
import random
import statistics

import pytest
import torch

from alignkit.hardware import Hardware
from alignkit.methods import METHODS
from alignkit.recipe.automatic import Facts
from alignkit.train.compute_dtype import hand_on_in_compute_dtype

CPU = Hardware(device="cpu", bf16=True, fp16=False, flash_attn=False)
FACTS = Facts(device="cpu", bf16=True, flash_attn=False, liger=False, activations_fit=True, memory_reason="room")


def _chats(path, rows: int = 96):
    """Chats of log-normal lengths (3 to 200 words), so random batches would be mostly padding."""
    from alignkit.demo.tiny import WORDS

    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            words = " ".join(rng.choice(WORDS[10:]) for _ in range(min(200, int(rng.lognormvariate(3, 1)) + 3)))
            messages = [{"role": "user", "content": "say"}, {"role": "assistant", "content": words}]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def _built(tmp_path, model_dir, **training):
    from alignkit.train.factory import build_trainer

    recipe = METHODS["sft"].recipe.model_validate(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"datasets": [{"path": str(_chats(tmp_path / "chats.jsonl"))}]},
            "training": {"output_dir": str(tmp_path / "out"), **training},
        }
    )
    return build_trainer(recipe, CPU, output_dir=tmp_path / "out", facts=FACTS)


def test_grouped_batches_on_a_cpu_are_padded_to_a_multiple_of_16(tmp_path, tiny_model_dir):
    built = _built(tmp_path, tiny_model_dir)
    setting = next(s for s in built.settings if s.path == "training.train_sampling_strategy")
    assert setting.value == "group_by_length"
    assert setting.reason.endswith("batch lengths rounded up to a multiple of 16 on this CPU")
    lengths = [batch["input_ids"].shape[1] for batch in built.trainer.get_train_dataloader()]
    assert all(length % 16 == 0 for length in lengths) and len(set(lengths)) > 1


def test_a_multiple_in_the_recipe_wins(tmp_path, tiny_model_dir):
    built = _built(tmp_path, tiny_model_dir, extra={"pad_to_multiple_of": 8})
    setting = next(s for s in built.settings if s.path == "training.train_sampling_strategy")
    assert "rounded" not in setting.reason
    assert built.trainer.data_collator.pad_to_multiple_of == 8
    lengths = {batch["input_ids"].shape[1] for batch in built.trainer.get_train_dataloader()}
    assert all(length % 8 == 0 for length in lengths) and any(length % 16 for length in lengths)


def test_random_batches_are_not_padded_further(tmp_path, tiny_model_dir):
    built = _built(tmp_path, tiny_model_dir, train_sampling_strategy="random")
    assert built.trainer.data_collator.pad_to_multiple_of is None


def test_norms_hand_on_bf16_only_under_cpu_autocast_and_rotary_tables_stay_float32(small_llama):
    model = small_llama(2)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    plain = model(input_ids=ids).logits
    assert hand_on_in_compute_dtype(model) == 2 * 2 + 1  # two norms a layer and the final norm
    seen = {}
    for name, module in model.named_modules():
        if name in ("model.layers.0.input_layernorm", "model.norm", "model.rotary_emb"):
            # Registered after alignkit's hooks, so these see what the next modules read.
            module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    # Without autocast nothing changes (evaluation, generation and saving see the model as it is).
    torch.testing.assert_close(model(input_ids=ids).logits, plain, rtol=0, atol=0)
    assert seen["model.layers.0.input_layernorm"].dtype == seen["model.norm"].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
    assert seen["model.layers.0.input_layernorm"].dtype == seen["model.norm"].dtype == torch.bfloat16
    # Rotated in float32, as autocast leaves it: positions keep their precision (the demo's sums need it).
    assert [t.dtype for t in seen["model.rotary_emb"]] == [torch.float32, torch.float32]


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_step_under_autocast_matches_the_unhooked_step_to_bf16_precision(small_llama, kv_heads):
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(2))
    results = []
    for hooked in (False, True):
        model = small_llama(kv_heads)
        if hooked:
            hand_on_in_compute_dtype(model)
        reads = []
        projection = model.model.layers[0].self_attn.q_proj
        projection.register_forward_pre_hook(lambda m, args, reads=reads: reads.append(args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad, reads[0]))
    (plain_loss, plain_grad, plain_read), (loss, grad, read) = results
    assert (plain_read, read) == (torch.float32, torch.bfloat16)
    assert abs(loss - plain_loss) < 1e-2 * plain_loss
    assert torch.nn.functional.cosine_similarity(grad.flatten(), plain_grad.flatten(), dim=0) > 0.999


def _pairs(path, rows: int = 48):
    from alignkit.demo.tiny import WORDS

    rng = random.Random(1)

    def text() -> str:
        return " ".join(rng.choice(WORDS[10:]) for _ in range(min(120, int(rng.lognormvariate(2.5, 1)) + 2)))

    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            row = {
                "prompt": [{"role": "user", "content": text()}],
                "chosen": [{"role": "assistant", "content": text()}],
                "rejected": [{"role": "assistant", "content": text()}],
            }
            out.write(json.dumps(row) + "\n")
    return path


def test_dpo_batches_run_as_micro_batches_of_similar_length_that_make_the_same_steps(tmp_path, tiny_model_dir):
    from alignkit.train.factory import build_trainer, token_counts

    recipe = METHODS["dpo"].recipe.model_validate(
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"datasets": [{"path": str(_pairs(tmp_path / "pairs.jsonl"))}]},
            "training": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8},
        }
    )
    built = build_trainer(recipe, CPU, output_dir=tmp_path / "out", facts=FACTS)
    setting = next(s for s in built.settings if s.path == "training.train_sampling_strategy")
    assert setting.value == "split_by_length"
    args = built.trainer.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 4)
    lengths = list(METHODS["dpo"].batch_length(token_counts(built.trainer.train_dataset)))
    order = list(built.trainer._get_train_sampler())
    assert sorted(order) == list(range(48))
    # Each step's 8 pairs are a random draw (not grouped with pairs of like length across the data), served
    # longest first, so each micro-batch of 2 pads only to its own longer pair.
    steps = [order[i : i + 8] for i in range(0, 48, 8)]
    assert all([lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True) for step in steps)
    spans = [max(lengths[i] for i in step) - min(lengths[i] for i in step) for step in steps]
    assert statistics.mean(spans) > 0.5 * (max(lengths) - min(lengths))
    micro = [batch for batch in built.trainer.get_train_dataloader()]
    assert len(micro) == 24 and all(len(batch["input_ids"]) == 2 * 2 for batch in micro)  # chosen, rejected


def test_splitting_is_kept_only_where_random_batches_would_be_padding_enough():
    from alignkit.train.batching import splitting_verdict

    worth, reason = splitting_verdict([24 + n % 2 for n in range(512)], batch=16, seed=0)
    assert not worth and "only 2% padding" in reason
    rng = random.Random(0)
    worth, reason = splitting_verdict([int(rng.lognormvariate(5, 0.8)) + 5 for _ in range(512)], batch=8, seed=0)
    assert worth and reason.startswith("random batches of these rows would be") and "split" in reason


def test_dpo_pairs_of_one_length_keep_whole_random_batches(tmp_path, tiny_model_dir):
    from alignkit.train.factory import build_trainer

    path = tmp_path / "pairs.jsonl"
    row = {
        "prompt": [{"role": "user", "content": "one two"}],
        "chosen": [{"role": "assistant", "content": "three"}],
        "rejected": [{"role": "assistant", "content": "four"}],
    }
    path.write_text((json.dumps(row) + "\n") * 32, encoding="utf-8")
    recipe = METHODS["dpo"].recipe.model_validate(
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"datasets": [{"path": str(path)}]},
            "training": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8},
        }
    )
    built = build_trainer(recipe, CPU, output_dir=tmp_path / "out", facts=FACTS)
    setting = next(s for s in built.settings if s.path == "training.train_sampling_strategy")
    assert setting.value == "random" and "only 0% padding" in setting.reason
    assert (built.trainer.args.per_device_train_batch_size, built.trainer.args.gradient_accumulation_steps) == (8, 1)


def test_split_batches_take_the_same_steps_as_whole_ones(tmp_path, tiny_model_dir):
    """Three dpo steps of 8 pairs, run whole and run as four micro-batches of 2 sorted by length, from the same
    weights over the same rows in the same order: the same weights after (float32, to its rounding)."""
    from alignkit.train.factory import build_trainer

    pairs = _pairs(tmp_path / "pairs.jsonl")
    trained = []
    for strategy in ("split_by_length", "random"):
        out = tmp_path / strategy
        recipe = METHODS["dpo"].recipe.model_validate(
            {
                "model": {"name_or_path": str(tiny_model_dir)},
                "data": {"datasets": [{"path": str(pairs)}]},
                "training": {
                    "output_dir": str(out),
                    "per_device_train_batch_size": 8,
                    "max_steps": 3,
                    "learning_rate": 1e-3,
                    "mixed_precision": "no",
                    "save_strategy": "no",
                    "train_sampling_strategy": strategy,
                },
            }
        )
        built = build_trainer(recipe, CPU, output_dir=out, facts=FACTS)
        if strategy == "split_by_length":
            order = list(built.trainer._get_train_sampler())
        else:
            built.trainer._get_train_sampler = lambda dataset=None, order=order: order
        built.trainer.train()
        trained.append({k: v.detach().clone() for k, v in built.trainer.model.named_parameters()})
    split, whole = trained
    from transformers import AutoModelForCausalLM

    start = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert (whole[weight] - start[weight]).abs().max() > 1e-4  # three steps did move it
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-5)


def test_split_batches_are_the_trainers_own_random_batches_in_its_order():
    """With block_batches=1 the groups are the batches accelerate's seeded sampler (what transformers' Trainer
    iterates) draws for the same seed and epoch, in the same order, each sorted by length."""
    from accelerate.data_loader import SeedableRandomSampler

    from alignkit.train.batching import LengthGroupedBatches

    lengths = [random.Random(n).randint(5, 500) for n in range(100)]
    ours = LengthGroupedBatches(lengths, group=8, seed=43, block_batches=1)
    theirs = SeedableRandomSampler(range(100), data_seed=43)
    for epoch in (0, 1):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        drawn = list(theirs)
        expected = [sorted(drawn[i : i + 8], key=lengths.__getitem__, reverse=True) for i in range(0, 100, 8)]
        assert ours.batches() == expected
