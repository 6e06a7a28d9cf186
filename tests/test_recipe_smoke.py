"""Smoke test of every shipped recipe and variant: the real recipe, a tiny model and local data, two steps.

Each recipe is resolved by name and trained through the CLI with a mirror file (the same `--mirror` users
have) that swaps only its models and tokenizers for the tiny local Llama and every dataset for a local
`save_to_disk` stand-in with the same columns and split names. The recipe's own optimizer, scheduler, loss
type, chat template, loss masking, packing and LoRA/QLoRA settings are kept; only sizes are shrunk
(SMOKE_SETS) and what cannot run on a CPU is switched off (CPU_SWITCHES, each with its reason). The frozen
recipe of every run is compared with the shipped one to prove nothing else changed.

Then `alignkit run --recipe zephyr-7b-beta` trains sft and dpo end to end (dpo from the sft output), and a
second run skips both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignkit.library import registry
from alignkit.methods import METHODS
from alignkit.recipe.resolve import resolve_recipe
from alignkit.stages import is_training

pytestmark = pytest.mark.slow

SMOKE_SETS = {
    # Sizes only: a few seconds per recipe on a CPU. The values the recipe trains with stay its own.
    "training.max_steps": 2,
    "training.per_device_train_batch_size": 2,
    "training.per_device_eval_batch_size": 2,
    "logging.logging_steps": 1,
    # Preprocessing workers: the recipes' 8-48 processes for 16 rows would cost more than the training.
    "data.num_proc": 1,
}


def _lengths(method: str) -> dict[str, int]:
    """Short rows for every method: max_length 64 (and prompts of 32 tokens where the method cuts prompts); an
    online method generates groups of 2 completions of 8 tokens (2 per device holds a whole group) and keeps
    its max_length, which drops prompts rather than cutting them."""
    fields = METHODS[method].section.model_fields
    if "num_generations" in fields:
        return {f"{method}.num_generations": 2, f"{method}.max_completion_length": 8}
    lengths = {f"{method}.max_length": 64} if "max_length" in fields else {}
    if "max_prompt_length" in fields:
        lengths[f"{method}.max_prompt_length"] = 32
    return lengths


# SmolLM3's template writes a ~450-token system preamble (metadata, reasoning instructions) into every
# conversation; at 64 tokens no assistant turn would be left to train on.
LONG_TEMPLATE = {("smollm3", "sft"): {"sft.max_length": 512}}
# Recipe settings a CPU cannot run, switched off for the smoke run only: field -> (smoke value, why).
# Applied only to recipes that use them; the run's frozen recipe shows what was switched.
CPU_SWITCHES: dict[str, tuple[Any, str]] = {
    "training.use_liger_kernel": (
        False,
        "Liger kernels are Triton kernels for CUDA GPUs; without liger-kernel the trainer stops with"
        " `ImportError: You have set use_liger_kernel to True but liger-kernel >= 0.3.0 is not available`"
        " (smollm3:mid, smollm3 sft and apo)",
    ),
}
LAUNCH_SWITCH = "--launch none: ZeRO-3, FSDP and DDP profiles are for GPUs; one CPU process trains in-process"
# Not switched, because they run on a CPU as they are: attn_implementation auto (SDPA without CUDA), bf16
# (autocast where the CPU has it, float32 otherwise, decided by the engine), 4-bit NF4 QLoRA, and the bnb
# optimizers paged_adamw_32bit (bitsandbytes falls back to unpaged on a CPU) and adamw_bnb_8bit.

# The data every recipe names, as local stand-ins: (dataset id, configuration) -> row shape. Columns follow
# the Hub datasets (UltraFeedback-style chosen/rejected conversations, `messages` chats, `text` for cpt).
SHAPES = {
    ("HuggingFaceH4/ultrachat_200k", None): "ultrachat",
    ("HuggingFaceH4/deita-10k-v0-sft", None): "ultrachat",
    ("BramVanroy/ultrachat_200k_dutch", None): "ultrachat",
    ("HuggingFaceH4/ultrafeedback_binarized", None): "ultrafeedback",
    ("BramVanroy/ultra_feedback_dutch", None): "ultrafeedback",
    ("HuggingFaceH4/orca_dpo_pairs", None): "ultrafeedback",
    ("HuggingFaceH4/cai-conversation-harmless", None): "cai",
    ("HuggingFaceH4/grok-conversation-harmless", None): "cai",
    ("argilla/dpo-mix-7k", None): "dpo-mix",
    ("argilla/distilabel-capybara-dpo-7k-binarized", None): "capybara",
    ("HuggingFaceH4/airoboros-3.2", None): "messages",
    ("HuggingFaceH4/Code-Feedback", None): "messages",
    ("HuggingFaceH4/orca-math-word-problems-200k", None): "messages",
    ("HuggingFaceH4/SystemChat", None): "messages",
    ("HuggingFaceH4/capybara", None): "messages",
    ("HuggingFaceTB/Magpie-Pro-300K-Filtered-H4", None): "messages",
    ("HuggingFaceTB/self-oss-instruct-sc2-H4", None): "messages",
    ("HuggingFaceTB/OpenHermes-2.5-H4", None): "messages",
    ("HuggingFaceTB/everyday-conversations-llama3.1-2k", None): "messages",
    ("HuggingFaceTB/instruct-data-basics-smollm-H4", None): "messages",
    ("HuggingFaceTB/smoltalk", "all"): "messages",
    ("HuggingFaceTB/smol-smoltalk", None): "messages",
    ("HuggingFaceTB/smoltalk2", "Mid"): "messages",
    ("HuggingFaceTB/smoltalk2", "SFT"): "smoltalk2-sft",
    ("HuggingFaceTB/smoltalk2", "Preference"): "smoltalk2-preference",
    ("yhavinga/mc4_nl_cleaned", "tiny"): "mc4",
    ("open-r1/OpenR1-Math-220k", None): "openr1-math",
}

QA = [
    ("what is 2 + 3?", "5", "7"),
    ("what is 4 + 4?", "8", "9"),
    ("hello", "hello world", "no"),
    ("what is the sum of one and two?", "three", "five"),
    ("please add 10 and 20", "30", "12"),
    ("good day", "yes good day", "bad day"),
    ("what is 7 + 1?", "8", "6"),
    ("red or blue?", "blue", "green"),
]


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _row(shape: str, index: int) -> dict[str, Any]:
    question, good, bad = QA[index % len(QA)]
    chosen, rejected = _chat(question, good), _chat(question, bad)
    if shape == "messages":
        return {"messages": chosen, "source": "smoke"}
    if shape == "ultrachat":
        return {"prompt": question, "prompt_id": str(index), "messages": chosen}
    if shape == "ultrafeedback":
        return {
            "prompt": question,
            "prompt_id": str(index),
            "chosen": chosen,
            "rejected": rejected,
            "messages": chosen,
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        }
    if shape == "cai":
        return {
            "init_prompt": question,
            "init_response": bad,
            "critic_prompt": "what is wrong?",
            "critic_response": "the answer",
            "revision_prompt": "please add",
            "revision_response": good,
            "prompt": question,
            "messages": chosen,
            "chosen": chosen,
            "rejected": rejected,
        }
    if shape == "dpo-mix":
        return {"dataset": "smoke", "chosen": chosen, "rejected": rejected, "chosen_rating": 5, "rejected_rating": 1}
    if shape == "capybara":
        return {
            "source": "smoke",
            "conversation": [{"input": question, "output": good}],
            "original_response": good,
            "generation_model": ["tiny"],
            "chosen": chosen,
            "chosen_rating": 5,
            "rejected": rejected,
            "rejected_rating": 1,
        }
    kwargs = {"enable_thinking": False, "python_tools": None, "xml_tools": None}
    if shape == "smoltalk2-sft":
        return {"messages": chosen, "chat_template_kwargs": kwargs}
    if shape == "smoltalk2-preference":
        return {"prompt": question, "chosen": good, "rejected": bad, "chat_template_kwargs": kwargs}
    if shape == "openr1-math":  # a problem with its worked solution, answer and an R1 chat to learn from
        solution = f"so the answer is $\\boxed{{{index}}}$"
        return {"problem": question, "solution": solution, "answer": str(index), "messages": chosen, "uuid": str(index)}
    if shape == "mc4":
        return {"text": f"{question} {good}. the sun and the rain.", "timestamp": "2020", "url": "x"}
    raise AssertionError(f"no rows for shape {shape!r}")


def _shipped() -> list[tuple[str, str]]:
    entries = registry.discover()
    # Training stages only: a sample stage trains nothing (its recipes' dry runs are in test_recipe_library).
    return sorted(
        (name, m) for name, entry in entries.items() for m in entry.methods if name != "tiny-demo" and is_training(m)
    )


SHIPPED = _shipped()


def _split_name(split: str) -> str:
    return split.split("[", 1)[0]


def build_mirrors(root: Path, model_dir: Path) -> Path:
    """Stand-ins for every model, tokenizer and dataset the library names, and the mirror file naming them."""
    from datasets import Dataset, DatasetDict

    models: set[str] = set()
    splits: dict[str, dict[str, str]] = {}  # dataset id -> split name -> shape
    for name, method in SHIPPED:
        recipe = resolve_recipe(method, name, mirrors={}).recipe
        models.add(recipe.model.name_or_path)
        if recipe.model.tokenizer_name_or_path:
            models.add(recipe.model.tokenizer_name_or_path)
        for source in recipe.data.datasets:
            shape = SHAPES[source.path, source.name]  # a KeyError names a dataset that needs a stand-in here
            splits.setdefault(source.path, {})[_split_name(source.split)] = shape
    mirrors = {model: str(model_dir) for model in sorted(models)}
    for number, (dataset_id, shapes) in enumerate(sorted(splits.items())):
        folder = root / f"dataset-{number}"
        DatasetDict(
            {split: Dataset.from_list([_row(shape, i) for i in range(16)]) for split, shape in shapes.items()}
        ).save_to_disk(str(folder))
        mirrors[dataset_id] = folder.name  # relative: resolved against the mirror file's folder
    path = root / "mirrors.yaml"
    path.write_text(yaml.safe_dump(mirrors, sort_keys=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def smoke_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama, 64 wide: bitsandbytes packs 4-bit weights for CPU inference in blocks of 64 input
    features, so the QLoRA recipes' evaluation fails on conftest's 32-wide model (a tiny-model artefact)."""
    from alignkit.demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-64") / "model", hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="module")
def mirror_file(tmp_path_factory, smoke_model_dir) -> Path:
    return build_mirrors(tmp_path_factory.mktemp("mirrors"), smoke_model_dir)


def _smoke_args(name: str, method: str) -> tuple[list[str], dict[str, str]]:
    """The --set arguments of a smoke run, and the CPU switches applied with their reasons."""
    recipe = resolve_recipe(method, name, mirrors={}).recipe.model_dump(mode="json")
    sets = {**SMOKE_SETS, **_lengths(method), **LONG_TEMPLATE.get((name, method), {})}
    switched = {}
    for path, (value, why) in CPU_SWITCHES.items():
        section, key = path.split(".")
        if recipe[section][key] != value:
            sets[path] = value
            switched[path] = why
    args = []
    for path, value in sets.items():
        args += ["--set", f"{path}={json.dumps(value) if isinstance(value, bool) else value}"]
    return args, switched


def _frozen(out: Path) -> dict:
    return yaml.safe_load((out / "alignkit_recipe.yaml").read_text(encoding="utf-8"))


def _without(document: dict, paths) -> dict:
    document = json.loads(json.dumps(document))
    for path in paths:
        section, key = path.split(".")
        document[section].pop(key, None)
    return document


@pytest.mark.parametrize(("name", "method"), SHIPPED, ids=[f"{n}-{m}" for n, m in SHIPPED])
def test_recipe_smoke_trains_on_the_cpu(cli, mirror_file, smoke_model_dir, tmp_path, name, method):
    out = tmp_path / "run"
    args, switched = _smoke_args(name, method)
    result = cli(method, "--recipe", name, "--mirror", mirror_file, "--launch", "none", "--output-dir", out, *args)
    assert result.exit_code == 0, f"{name} {method} (CPU switches: {switched or 'none'}; {LAUNCH_SWITCH})\n" + (
        result.output
    )
    info = json.loads((out / "alignkit_run.json").read_text())
    assert info["finished"] is True and info["method"] == method and info["name"] == name
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert all(entry["loss"] == entry["loss"] for entry in state["log_history"] if "loss" in entry), "loss is NaN"

    shipped = resolve_recipe(method, name, mirrors={}).recipe.model_dump(mode="json")
    frozen = _frozen(out)
    # The mirrors swapped exactly the models and datasets, to local paths.
    assert frozen["model"]["name_or_path"] == str(smoke_model_dir)
    if shipped["model"]["tokenizer_name_or_path"]:
        assert frozen["model"]["tokenizer_name_or_path"] == str(smoke_model_dir)
    assert [Path(d["path"]).parent for d in frozen["data"]["datasets"]] == [mirror_file.parent] * len(
        shipped["data"]["datasets"]
    )
    assert [(d["name"], d["split"], d["weight"], d["role"]) for d in frozen["data"]["datasets"]] == [
        (d["name"], d["split"], d["weight"], d["role"]) for d in shipped["data"]["datasets"]
    ]
    # Everything else is the recipe's own, but for the sizes and the listed CPU switches.
    changed = {*SMOKE_SETS, *_lengths(method), *switched, "training.output_dir"}
    changed |= {"model.name_or_path", "model.tokenizer_name_or_path", "model.revision"}
    mine, theirs = _without(frozen, changed), _without(shipped, changed)
    mine["data"].pop("datasets"), theirs["data"].pop("datasets")
    assert mine == theirs
    for path in switched:
        section, key = path.split(".")
        assert frozen[section][key] == CPU_SWITCHES[path][0]
    if shipped.get("peft"):
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"]) == (shipped["peft"]["r"], shipped["peft"]["alpha"])
    else:
        assert (out / "model.safetensors").is_file()


def test_cpu_switches_name_recipes_that_use_them():
    """Every switch is needed by some shipped recipe (a switch nobody needs is deleted, not kept)."""
    used = {path for name, method in SHIPPED for path in _smoke_args(name, method)[1]}
    assert used == set(CPU_SWITCHES)


def test_zephyr_pipeline_runs_sft_then_dpo_and_a_rerun_skips_both(cli, mirror_file, smoke_model_dir, tmp_path):
    root = tmp_path / "zephyr"
    sets = []
    for path, value in {**SMOKE_SETS, **_lengths("sft")}.items():
        sets += ["--set", f"sft:{path}={value}"]
    for path, value in {**SMOKE_SETS, **_lengths("dpo")}.items():
        sets += ["--set", f"dpo:{path}={value}"]
    args = ["run", "--recipe", "zephyr-7b-beta", "--mirror", mirror_file, "--launch", "none", "-o", root, *sets]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert f"stage sft: sft with recipe zephyr-7b-beta -> {root / 'sft'}" in lines
    assert f"stage dpo: dpo with recipe zephyr-7b-beta, from stage sft -> {root / 'dpo'}" in lines
    assert lines[-1] == "pipeline zephyr-7b-beta: all 2 stages finished"
    for stage in ("sft", "dpo"):
        info = json.loads((root / stage / "alignkit_run.json").read_text())
        assert (info["finished"], info["method"], info["name"]) == (True, stage, "zephyr-7b-beta")
    dpo = _frozen(root / "dpo")
    assert dpo["model"]["name_or_path"] == str(root / "sft"), "dpo starts from the sft output"
    assert dpo["dpo"]["beta"] == 0.01 and dpo["training"]["learning_rate"] == 5e-7
    assert _frozen(root / "sft")["model"]["name_or_path"] == str(smoke_model_dir)
    stamps = {stage: (root / stage / "alignkit_run.json").stat().st_mtime_ns for stage in ("sft", "dpo")}

    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [
        "stage sft: finished, skipped",
        "stage dpo: finished, skipped",
        "pipeline zephyr-7b-beta: all 2 stages finished",
    ]
    assert {stage: (root / stage / "alignkit_run.json").stat().st_mtime_ns for stage in stamps} == stamps
