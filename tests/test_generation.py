"""Generation backends of `alignkit sample` on the tiny local Llama: counts, order, seeding, greedy parity with
plain `model.generate`, stop strings, finish reasons, LoRA adapters, the backend choice, and the vLLM mapping
that can be checked without vLLM."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignkit.errors import UserError
from alignkit.sampling.generation import Completion, GenerationSettings, choose_backend, cut_at_stop, load_generator
from alignkit.sampling.vllm_backend import prompt_seed, sampling_kwargs, to_completion

QUESTIONS = [
    "what is 2 + 3?",
    "hello",
    "please add the numbers 41 and 17, you are a helpful tiny model",
    "what is the sum of 8 and 9?",
    "red blue green",
    "is the sun good?",
    "what is 99 + 1? answer please",
]
PROMPTS = [[{"role": "user", "content": text}] for text in QUESTIONS]


def _recipe(model_path: Path) -> SimpleNamespace:
    from alignkit.recipe.sections import ModelSection

    return SimpleNamespace(
        model=ModelSection(name_or_path=str(model_path), dtype="float32"),
        data=SimpleNamespace(chat_template=None),
        sample=SimpleNamespace(tensor_parallel_size=1, gpu_memory_utilization=0.9),
    )


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    loaded = load_generator(_recipe(tiny_model_dir), "transformers", device="cpu")
    yield loaded
    loaded.close()


def _sampled(**overrides) -> GenerationSettings:
    values = {"num_samples": 3, "max_new_tokens": 6, "temperature": 1.0, "batch_size": 3}
    return GenerationSettings(**{**values, **overrides})


def _plain_greedy(generator, messages, max_new_tokens: int) -> str:
    """What one prompt alone gives under plain `model.generate`, decoded up to its first eos."""
    import torch

    from alignkit.sampling.generation import encode_prompt

    ids = encode_prompt(generator.tokenizer, messages)
    with torch.inference_mode():
        out = generator.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=generator.eos_ids,
            pad_token_id=generator.pad_id,
        )
    new = out[0, len(ids) :].tolist()
    end = next((i for i, token in enumerate(new) if token in generator.eos_ids), len(new))
    return generator.tokenizer.decode(new[:end], skip_special_tokens=True)


def test_every_prompt_gets_num_samples_completions(generator):
    results = generator.generate(PROMPTS, _sampled(), seed=0)
    assert [len(group) for group in results] == [3] * len(PROMPTS)
    assert all(isinstance(c, Completion) and c.finish in ("eos", "stop", "length") for g in results for c in g)
    assert generator.generate([], _sampled(), seed=0) == []


def test_same_seed_same_completions_and_another_seed_differs(generator):
    first = generator.generate(PROMPTS, _sampled(), seed=7)
    assert generator.generate(PROMPTS, _sampled(), seed=7) == first
    assert generator.generate(PROMPTS, _sampled(), seed=8) != first


def test_greedy_matches_plain_generate_one_prompt_at_a_time(generator):
    """Left padding in batches sorted by length changes nothing, and results come back in the input order."""
    settings = GenerationSettings(num_samples=2, max_new_tokens=8, temperature=0, batch_size=3)
    results = generator.generate(PROMPTS, settings, seed=0)
    expected = [_plain_greedy(generator, messages, 8) for messages in PROMPTS]
    assert [group[0].text for group in results] == expected
    assert all(group[0] == group[1] for group in results)
    reversed_results = generator.generate(PROMPTS[::-1], settings, seed=0)
    assert [group[0].text for group in reversed_results] == expected[::-1]


def test_max_new_tokens_ends_with_length(generator):
    results = generator.generate(PROMPTS, _sampled(max_new_tokens=5, num_samples=4), seed=1)
    completions = [c for group in results for c in group]
    assert any(c.finish == "length" for c in completions)
    for c in completions:
        assert c.tokens == 5 if c.finish == "length" else 1 <= c.tokens <= 5


def test_a_stop_string_cuts_the_text_and_finishes_with_stop(generator):
    settings = GenerationSettings(num_samples=1, max_new_tokens=12, temperature=0)
    full = [group[0] for group in generator.generate(PROMPTS, settings, seed=0)]
    index, whole = next((i, c) for i, c in enumerate(full) if len(c.text) >= 4)
    stop = whole.text[2:4]
    [[cut]] = generator.generate([PROMPTS[index]], GenerationSettings(1, 12, 0, stop=(stop, "never seen")), seed=0)
    assert cut.finish == "stop"
    assert cut.text == whole.text[: whole.text.find(stop)]
    # The tokens needed to write the stop string: fewer than the full greedy run, and their text holds it.
    ids = _greedy_ids(generator, PROMPTS[index], 12)
    assert cut.tokens <= len(ids)
    assert stop in generator.tokenizer.decode(ids[: cut.tokens], skip_special_tokens=True)
    assert stop not in generator.tokenizer.decode(ids[: cut.tokens - 1], skip_special_tokens=True)


def test_stop_strings_stop_early_but_never_across_the_prompt(generator):
    """A "\n\n" stop is not completed by a first newline after the template's "assistant\n"."""
    import torch

    from alignkit.sampling.generation import _stop_string_criteria, encode_prompt

    tokenizer = generator.tokenizer
    prompt = encode_prompt(tokenizer, PROMPTS[0])
    assert tokenizer.decode(prompt).endswith("assistant\n")
    [criteria] = _stop_string_criteria(tokenizer, ("\n\n",), len(prompt))
    newline, yes = tokenizer.convert_tokens_to_ids(["\n", "yes"])
    rows = torch.tensor([[*prompt, newline, yes, yes], [*prompt, yes, newline, newline]])
    assert criteria(rows[:, : len(prompt) + 1], None).tolist() == [False, False]
    assert criteria(rows, None).tolist() == [False, True]


def _greedy_ids(generator, messages, max_new_tokens: int) -> list[int]:
    import torch

    from alignkit.sampling.generation import encode_prompt

    ids = encode_prompt(generator.tokenizer, messages)
    with torch.inference_mode():
        out = generator.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
        )
    return out[0, len(ids) :].tolist()


def test_a_generation_config_eos_id_ends_with_eos(tiny_model_dir):
    """An end-of-turn token listed in the generation config stops a completion as the tokenizer's eos does."""
    from alignkit.sampling.generation import TransformersGenerator

    base = load_generator(_recipe(tiny_model_dir), "transformers", device="cpu")
    ids = _greedy_ids(base, PROMPTS[0], 4)
    base.model.generation_config.eos_token_id = [base.tokenizer.eos_token_id, ids[1]]
    ended = TransformersGenerator(base.model, base.tokenizer)
    [[completion]] = ended.generate(PROMPTS[:1], GenerationSettings(1, 4, 0), seed=0)
    assert completion == Completion(
        text=base.tokenizer.decode(ids[:1], skip_special_tokens=True), tokens=2, finish="eos"
    )


def test_a_lora_adapter_generates_like_the_merged_model(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", init_lora_weights=False)
    adapted = get_peft_model(base, config)
    adapted.save_pretrained(tmp_path / "adapter")  # no tokenizer files: the base's tokenizer is used
    merged = adapted.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "merged" / name).write_bytes((tiny_model_dir / name).read_bytes())
    settings = GenerationSettings(num_samples=2, max_new_tokens=6, temperature=1.0, batch_size=4)
    texts = {}
    for name in ("adapter", "merged"):
        loaded = load_generator(_recipe(tmp_path / name), "transformers", device="cpu")
        texts[name] = [[c.text for c in group] for group in loaded.generate(PROMPTS, settings, seed=3)]
        loaded.close()
    assert texts["adapter"] == texts["merged"]
    plain = load_generator(_recipe(tiny_model_dir), "transformers", device="cpu")
    assert [[c.text for c in group] for group in plain.generate(PROMPTS, settings, seed=3)] != texts["adapter"]


def test_auto_picks_transformers_and_says_why(monkeypatch):
    import torch

    _no_vllm_no_cuda(monkeypatch, torch)
    assert choose_backend("auto") == (
        "transformers",
        "vllm is not installed and there is no CUDA device (torch.cuda.is_available() is false)",
    )
    assert choose_backend("transformers") == ("transformers", "sample.backend is transformers")


def test_auto_on_a_cuda_machine_without_vllm(monkeypatch):
    import torch

    _no_vllm_no_cuda(monkeypatch, torch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_backend("auto") == ("transformers", "vllm is not installed")


def test_asking_for_vllm_where_it_cannot_run_is_a_user_error(monkeypatch):
    import torch

    _no_vllm_no_cuda(monkeypatch, torch)
    with pytest.raises(UserError) as caught:
        choose_backend("vllm")
    assert str(caught.value) == (
        "recipe: sample.backend: vllm cannot run here: vllm is not installed and there is no CUDA device"
        " (torch.cuda.is_available() is false); install it with `pip install 'alignkit[vllm]'` on a CUDA"
        " machine, or set sample.backend: transformers"
    )


def _no_vllm_no_cuda(monkeypatch, torch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cut_at_stop_takes_the_earliest_stop_string():
    assert cut_at_stop("a, b. c", (".", ",")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
    assert cut_at_stop(" 12\n", ()) == (" 12\n", False)


def test_vllm_sampling_parameters():
    sampled = sampling_kwargs(_sampled(top_p=0.9, stop=("\n\n",)), seed=5, stop_token_ids=[5, 7])
    assert sampled == {
        "n": 3,
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": -1,
        "max_tokens": 6,
        "stop": ["\n\n"],
        "stop_token_ids": [5, 7],
        "seed": 5,
    }
    greedy = sampling_kwargs(GenerationSettings(4, 10, 0, top_k=20), seed=0, stop_token_ids=[])
    assert (greedy["n"], greedy["temperature"], greedy["top_k"]) == (1, 0, 20)
    seeds = {prompt_seed(seed, index) for seed in range(3) for index in range(1000)}
    assert len(seeds) == 3000


def test_vllm_outputs_become_completions():
    def output(text, finish_reason, stop_reason=None, tokens=3):
        return SimpleNamespace(
            text=text, token_ids=list(range(tokens)), finish_reason=finish_reason, stop_reason=stop_reason
        )

    stop = ("\n\n",)
    assert to_completion(output(" 12", "stop"), stop) == Completion(" 12", 3, "eos")
    assert to_completion(output(" 12", "stop", stop_reason=5), stop) == Completion(" 12", 3, "eos")
    assert to_completion(output(" 12", "stop", stop_reason="\n\n"), stop) == Completion(" 12", 3, "stop")
    assert to_completion(output(" 12 13", "length", tokens=4), stop) == Completion(" 12 13", 4, "length")


def test_vllm_generator_sends_token_ids_and_repeats_greedy(generator, monkeypatch, tmp_path):
    """The glue around `LLM.generate`, with a stand-in engine: one request per prompt, seeds, order, greedy."""
    from alignkit.sampling.generation import encode_prompt
    from alignkit.sampling.vllm_backend import VllmGenerator

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kwargs: kwargs))
    calls = []

    def fake_generate(requests, sampling_params, use_tqdm):
        calls.append((requests, sampling_params))
        return [
            SimpleNamespace(
                outputs=[
                    SimpleNamespace(text=f"p{i}s{k}", token_ids=[1], finish_reason="length", stop_reason=None)
                    for k in range(params["n"])
                ]
            )
            for i, params in enumerate(sampling_params)
        ]

    engine = VllmGenerator(SimpleNamespace(generate=fake_generate), generator.tokenizer, [5], tmp_path)
    sampled = engine.generate(PROMPTS[:2], _sampled(), seed=4)
    assert [[c.text for c in group] for group in sampled] == [["p0s0", "p0s1", "p0s2"], ["p1s0", "p1s1", "p1s2"]]
    requests, params = calls[0]
    assert requests == [{"prompt_token_ids": encode_prompt(generator.tokenizer, m)} for m in PROMPTS[:2]]
    assert [p["seed"] for p in params] == [prompt_seed(4, 0), prompt_seed(4, 1)]
    greedy = engine.generate(PROMPTS[:1], GenerationSettings(3, 6, 0), seed=4)
    assert [c.text for c in greedy[0]] == ["p0s0"] * 3


def test_importing_the_generation_types_loads_no_heavy_module():
    script = (
        "import sys\nimport alignkit.sampling.generation\n"
        "print(sorted({'torch', 'transformers', 'peft', 'vllm'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
