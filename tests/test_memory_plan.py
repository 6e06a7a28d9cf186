"""The memory plan: parameter counts from config.json, what sharding, QLoRA and checkpointing save, what fits,
and the `alignkit plan` command (exit codes, JSON keys) and its section of `--dry-run`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import chat_file

from alignkit.errors import UserError
from alignkit.launch.device_memory import parse_size
from alignkit.launch.memory import activations_fit, memory_plan
from alignkit.launch.model_shape import read_shape
from alignkit.launch.plan import LaunchOptions, plan_launch
from alignkit.methods import METHODS
from alignkit.recipe.resolve import resolve_recipe

GiB = 1 << 30
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}
# Methods chosen by what they are, never by name: one that trains on single sequences, one on pairs, and one
# that can hold a frozen reference model.
SINGLE = next(name for name, method in METHODS.items() if method.sequences_per_row == 1)
PAIRS = next(name for name, method in METHODS.items() if method.sequences_per_row == 2)
REFERENCE = next(
    name
    for name, method in METHODS.items()
    if "precompute_ref_log_probs" in method.section.model_fields
    and method.reference_model(method.section(precompute_ref_log_probs=False))
)


def _stage(name: str) -> str:
    """The first method a shipped recipe has."""
    from alignkit.library import registry

    return registry.discover()[name].methods[0]


def _model(tmp_path: Path, config: dict, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _recipe(
    tmp_path: Path, config: dict, method: str = SINGLE, extra: str = "", qlora: bool = False, section: str = ""
):
    """The recipe `tmp_path/recipe.yaml` (rewritten on each call) for a model of `config`."""
    folder = _model(tmp_path, config)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {{name_or_path: {folder}}}\ndata: {{datasets: [{{path: {chat_file(tmp_path, 'd.jsonl')}}}]}}\n"
        f"{method}: {{max_length: 2048{section}}}\ntraining: {{per_device_train_batch_size: 4}}\n{extra}",
        encoding="utf-8",
    )
    return resolve_recipe(method, str(path), qlora=qlora).recipe


def _launch(recipe, launch: str = "none", processes: int = 1):
    """The launch plan on a CPU in float32, whatever machine runs the tests."""
    launch_plan = plan_launch(recipe, LaunchOptions(launch=launch, num_processes=processes))
    return dataclasses.replace(launch_plan, device="cpu", mixed_precision="no")


def _plan(recipe, launch: str = "none", processes: int = 1, device_bytes: int | None = None):
    return memory_plan(recipe, _launch(recipe, launch, processes), device_bytes)


def test_parameter_counts_match_the_published_sizes(tmp_path):
    assert read_shape(str(_model(tmp_path, LLAMA_32_1B, "llama"))).parameters() == 1_235_814_400
    assert read_shape(str(_model(tmp_path, MISTRAL_7B, "mistral"))).parameters() == 7_241_732_096


def test_a_lora_adapter_folder_is_planned_from_its_base_model(tmp_path):
    base = _model(tmp_path, LLAMA_32_1B, "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}), encoding="utf-8")
    assert read_shape(str(adapter)).parameters() == 1_235_814_400


def test_a_hub_id_with_no_local_config_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError) as error:
        read_shape("mistralai/Mistral-7B-v0.1")
    message = str(error.value)
    assert message.startswith("recipe: model.name_or_path: no local config.json for 'mistralai/Mistral-7B-v0.1'")
    assert "hf download mistralai/Mistral-7B-v0.1 config.json" in message


def test_a_hub_id_in_the_local_hugging_face_cache_is_read(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--mistralai--Mistral-7B-v0.1" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(MISTRAL_7B), encoding="utf-8")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert read_shape("mistralai/Mistral-7B-v0.1").parameters() == 7_241_732_096


def test_full_fine_tuning_counts_weights_gradients_and_two_adamw_states(tmp_path):
    plan = _plan(_recipe(tmp_path, MISTRAL_7B))
    params = 7_241_732_096
    assert plan.parameters == plan.trainable_parameters == params
    assert plan.weights == 4 * params
    assert plan.gradients == 4 * params
    assert plan.optimizer_states == 8 * params


def test_zero3_divides_weights_gradients_and_optimizer_states_by_the_processes(tmp_path):
    recipe = _recipe(tmp_path, MISTRAL_7B)
    one, eight = _plan(recipe, "zero3", 1), _plan(recipe, "zero3", 8)
    for part in ("weights", "gradients", "optimizer_states"):
        assert getattr(eight, part) == pytest.approx(getattr(one, part) / 8, rel=1e-6)
    assert eight.activations == one.activations


def test_zero2_shards_gradients_and_optimizer_states_but_not_weights(tmp_path):
    recipe = _recipe(tmp_path, MISTRAL_7B)
    one, eight = _plan(recipe, "zero2", 1), _plan(recipe, "zero2", 8)
    assert eight.weights == one.weights
    assert eight.optimizer_states == pytest.approx(one.optimizer_states / 8, rel=1e-6)


def test_qlora_trains_a_small_fraction_on_a_much_smaller_base(tmp_path):
    full = _plan(_recipe(tmp_path, MISTRAL_7B))
    qlora = _plan(_recipe(tmp_path, MISTRAL_7B, qlora=True))
    assert qlora.trainable_parameters < 0.01 * qlora.parameters
    assert qlora.weights < full.weights / 3
    assert qlora.optimizer_states < full.optimizer_states / 50


def test_checkpointing_keeps_far_fewer_activations(tmp_path):
    plan = _plan(_recipe(tmp_path, LLAMA_32_1B))
    assert plan.activations_checkpointed < plan.activations / 4
    assert plan.total_checkpointed == plan.total - plan.activations + plan.activations_checkpointed


def _sampled(recipe, strategy: str):
    return recipe.model_copy(
        update={"training": recipe.training.model_copy(update={"train_sampling_strategy": strategy})}
    )


def test_pairs_double_the_sequences_of_a_micro_batch(tmp_path):
    single = _plan(_recipe(tmp_path, LLAMA_32_1B))
    pairs = _plan(_sampled(_recipe(tmp_path, LLAMA_32_1B, method=PAIRS), "random"))
    assert pairs.sequences_per_micro_batch == 2 * single.sequences_per_micro_batch == 8
    assert pairs.activations == 2 * single.activations


def test_batches_split_by_length_count_the_micro_batch(tmp_path):
    """A recipe that asks for split_by_length runs its batch of 4 pairs as micro-batches of 2: the plan counts 4
    sequences, not 8. Left to alignkit, dpo splits only data that pays for it, so the plan keeps whole batches
    (its worst case); a sharding profile never splits."""
    split = _plan(_sampled(_recipe(tmp_path, LLAMA_32_1B, method="dpo"), "split_by_length"))
    assert split.sequences_per_micro_batch == 4
    automatic = _plan(_recipe(tmp_path, LLAMA_32_1B, method="dpo"))
    assert automatic.sequences_per_micro_batch == 8 and automatic.activations == 2 * split.activations
    # Beside its whole batches, the automatic plan gives what the run needs if the data makes it split.
    assert automatic.total_if_split == split.planned_total < automatic.planned_total
    assert automatic.as_dict()["total_if_split"] == split.planned_total
    assert any(note.startswith("if the run splits each batch into micro-batches of 2") for note in automatic.notes)
    assert split.total_if_split is None
    assert _plan(_sampled(_recipe(tmp_path, LLAMA_32_1B, method="dpo"), "random")).total_if_split is None
    sharded = _plan(_recipe(tmp_path, LLAMA_32_1B, method="dpo"), launch="zero2", processes=2)
    assert sharded.total_if_split is None and sharded.sequences_per_micro_batch == 8


def test_a_reference_model_is_counted_unless_lora_or_precomputed_log_probs_replace_it(tmp_path):
    held = _recipe(tmp_path, LLAMA_32_1B, REFERENCE, section=", precompute_ref_log_probs: false")
    assert _plan(held).reference_weights == _plan(held).weights
    lora = _recipe(tmp_path, LLAMA_32_1B, REFERENCE, extra="peft: {}\n", section=", precompute_ref_log_probs: false")
    assert _plan(lora).reference_weights == 0


def test_what_fits_checkpointing_and_the_largest_micro_batch(tmp_path):
    recipe = _recipe(tmp_path, LLAMA_32_1B)
    roomy = _plan(recipe, device_bytes=1000 * GiB)
    assert (roomy.fits, roomy.needs_checkpointing, roomy.checkpointing) == (True, False, False)
    assert roomy.max_micro_batch > 4
    tight = _plan(recipe, device_bytes=(roomy.total_checkpointed + roomy.total) // 2)
    assert (tight.fits, tight.needs_checkpointing, tight.checkpointing) == (True, True, True)
    assert "checkpointing" not in tight.suggestion  # it is already decided: on
    small = _plan(recipe, device_bytes=8 * GiB)
    assert small.fits is False and small.max_micro_batch_checkpointed == 0
    assert "--qlora" in " ".join(small.suggestions)


def test_activations_fit_answers_the_automatic_checkpointing(tmp_path):
    recipe = _recipe(tmp_path, LLAMA_32_1B)
    launch_plan = _launch(recipe)
    total = memory_plan(recipe, launch_plan).total
    assert activations_fit(recipe, launch_plan, total) is True
    assert activations_fit(recipe, launch_plan, total - 1) is False
    assert activations_fit(recipe, launch_plan, None) is None


@pytest.mark.parametrize(
    "text,expected", [("80GB", 80 * GiB), ("24GiB", 24 * GiB), ("512MiB", 512 << 20), ("1.5T", 1.5 * 1024 * GiB)]
)
def test_memory_sizes_are_read_in_binary_units(text, expected):
    assert parse_size(text) == int(expected)


def test_plan_json_has_the_parts_and_the_verdict(tmp_path, cli):
    _recipe(tmp_path, LLAMA_32_1B)
    result = cli("plan", "--recipe", tmp_path / "recipe.yaml", "--gpu-memory", "80GB", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    plan = document["memory_plan"]
    for key in ("weights", "gradients", "optimizer_states", "activations", "activations_checkpointed", "total"):
        assert plan[key] > 0
    assert plan["total_checkpointed"] < plan["total"]
    assert plan["device_bytes"] == 80 * GiB
    assert {"fits", "needs_checkpointing", "max_micro_batch", "suggestion"} <= set(plan)
    assert document["method"] == SINGLE and document["launch"]["device"] == "cuda"


def test_plan_text_says_whether_it_fits(tmp_path, cli):
    _recipe(tmp_path, LLAMA_32_1B)
    result = cli("plan", SINGLE, "--recipe", tmp_path / "recipe.yaml", "--gpu-memory", "8GB")
    assert result.exit_code == 0, result.output
    assert "does not fit in 8.00 GiB (--gpu-memory 8GB)" in result.stdout
    assert "suggestion: train a 4-bit base with LoRA adapters: --qlora" in result.stdout


@pytest.mark.parametrize("bad", ["80", "eighty", "80XB", "-4GB", "0GB"])
def test_plan_refuses_a_bad_gpu_memory(tmp_path, cli, bad):
    _recipe(tmp_path, LLAMA_32_1B)
    result = cli("plan", "--recipe", tmp_path / "recipe.yaml", "--gpu-memory", bad)
    assert result.exit_code == 2
    assert f"error: --gpu-memory: {bad!r} is not a memory size; give a number and a unit" in result.output


def test_plan_of_a_hub_model_with_no_local_config_exits_2(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = cli("plan", _stage("zephyr-7b-beta"), "--recipe", "zephyr-7b-beta", "--gpu-memory", "80GB")
    assert result.exit_code == 2
    assert "no local config.json for 'mistralai/Mistral-7B-v0.1'" in result.output


def test_plan_without_a_method_needs_a_recipe_with_one_stage(cli):
    result = cli("plan", "--recipe", "zephyr-7b-beta")
    assert result.exit_code == 2
    assert "error: alignkit plan: give the method, e.g. `alignkit plan" in result.output


def test_dry_run_shows_the_memory_plan(tmp_path, cli):
    _recipe(tmp_path, LLAMA_32_1B)
    result = cli(SINGLE, "--recipe", tmp_path / "recipe.yaml", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["memory_plan"]["parameters"] == 1_235_814_400
    text = cli(SINGLE, "--recipe", tmp_path / "recipe.yaml", "--dry-run")
    assert "memory plan" in text.stdout and "model: 1.24B parameters" in text.stdout


def test_dry_run_of_a_hub_model_says_why_there_is_no_plan(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = cli(_stage("zephyr-7b-beta"), "--recipe", "zephyr-7b-beta", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert "no local config.json" in json.loads(result.stdout)["memory_plan"]["unavailable"]
