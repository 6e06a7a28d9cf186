"""Flat Alignment Handbook / TRL configs: the shared corpus dry-runs, and conversions keep their meaning."""

from __future__ import annotations

import json

import pytest
from conftest import shared_dir

from alignkit.errors import UserError
from alignkit.recipe.resolve import resolve_recipe

SHARED = shared_dir()
CORPUS = (
    sorted(
        p for p in (SHARED / "reference" / "handbook-recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts
    )
    if SHARED
    else []
)


def test_corpus_is_present():
    if SHARED is None:
        pytest.skip("../shared is not beside this checkout")
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: "/".join(p.parts[-4:]))
def test_every_handbook_recipe_dry_runs(cli, path):
    method = path.parent.name
    result = cli(method, "--recipe", path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["recipe"]["model"]["name_or_path"]
    assert doc["recipe"]["data"]["datasets"]
    assert doc["notices"][0].endswith("converted it to an alignkit recipe:")


def _convert(write_recipe, method: str, text: str):
    return resolve_recipe(method, str(write_recipe(text, "flat.yaml")))


def test_old_mixer_semantics(write_recipe):
    resolved = _convert(
        write_recipe,
        "sft",
        "model_name_or_path: m\ndataset_mixer:\n  a/one: 0.5\n  a/two: 1.0\n"
        "dataset_splits: [train_sft, test_sft]\nmax_seq_length: 512\npreprocessing_num_workers: 4\n",
    )
    got = [(d.path, d.split, d.weight, d.role) for d in resolved.recipe.data.datasets]
    assert got == [
        ("a/one", "train_sft", 0.5, "train"),
        ("a/one", "test_sft", 1.0, "test"),
        ("a/two", "train_sft", 1.0, "train"),
        ("a/two", "test_sft", 1.0, "test"),
    ]
    assert resolved.recipe.sft.max_length == 512
    assert resolved.recipe.data.num_proc == 4
    assert "  renamed max_seq_length -> sft.max_length (TRL 0.20 renamed it max_length)" in resolved.notices


def test_old_mixer_with_configs_and_bad_split(write_recipe):
    resolved = _convert(
        write_recipe,
        "cpt",
        "model_name_or_path: gpt2\ndataset_mixer: {nl/mc4: 1.0}\ndataset_splits: [train]\ndataset_configs: [tiny]\n",
    )
    assert [(d.name, d.split) for d in resolved.recipe.data.datasets] == [("tiny", "train")]
    with pytest.raises(UserError, match="split 'validation' names neither train nor test"):
        _convert(write_recipe, "sft", "model_name_or_path: m\ndataset_mixer: {a: 1}\ndataset_splits: [validation]\n")
    with pytest.raises(UserError, match="fraction must be a number >= 0"):
        _convert(write_recipe, "sft", "model_name_or_path: m\ndataset_mixer: {a: -1}\n")


def test_new_mixture_pools_and_resplits(write_recipe):
    resolved = _convert(
        write_recipe,
        "dpo",
        "model_name_or_path: m\ndataset_mixture:\n  datasets:\n"
        "    - {id: a/prefs, config: default, split: train, columns: [chosen, rejected], weight: 0.5}\n"
        "    - {id: a/prefs, split: test, columns: [chosen, rejected]}\n"
        "  test_split_size: 500\n  seed: 0\nbeta: 0.05\nmax_length: 1024\nmax_prompt_length: 512\n",
    )
    data = resolved.recipe.data
    assert [(d.split, d.weight, d.role, d.columns) for d in data.datasets] == [
        ("train", 0.5, "train", ["chosen", "rejected"]),
        ("test", 1.0, "train", ["chosen", "rejected"]),
    ]
    assert data.test_split_size == 500
    assert resolved.recipe.dpo.beta == 0.05


def test_dataset_name_form(write_recipe):
    resolved = _convert(
        write_recipe,
        "sft",
        "model_name_or_path: m\ndataset_name: HuggingFaceTB/smoltalk\ndataset_config: all\neval_strategy: epoch\n",
    )
    assert [(d.path, d.name, d.split, d.role) for d in resolved.recipe.data.datasets] == [
        ("HuggingFaceTB/smoltalk", "all", "train", "train"),
        ("HuggingFaceTB/smoltalk", "all", "test", "test"),
    ]


def test_renamed_and_dropped_keys(write_recipe):
    resolved = _convert(
        write_recipe,
        "sft",
        "model_name_or_path: m\ndataset_name: d\nuse_flash_attention_2: true\nevaluation_strategy: 'no'\n"
        "hub_model_revision: v1\nbf16: true\ndo_eval: true\ngroup_by_length: true\n"
        "dataset_kwargs: {add_special_tokens: false}\naverage_tokens_across_devices: true\n",
    )
    recipe = resolved.recipe
    assert recipe.model.attn_implementation == "flash_attention_2"
    assert recipe.hub.revision == "v1"
    assert recipe.training.mixed_precision == "bf16"
    assert recipe.training.train_sampling_strategy == "group_by_length"
    assert recipe.training.extra == {"average_tokens_across_devices": True}
    notices = "\n".join(resolved.notices)
    assert "dropped do_eval (training.eval_strategy decides whether to evaluate)" in notices
    assert "dropped dataset_kwargs" in notices
    assert "passed average_tokens_across_devices through to TRL" in notices


def test_unknown_flat_key_is_an_error(write_recipe):
    with pytest.raises(UserError) as info:
        _convert(write_recipe, "sft", "model_name_or_path: m\ndataset_name: d\nlearning_rat: 1e-5\n")
    (problem,) = info.value.problems
    assert problem.path == "learning_rat"
    assert "did you mean learning_rate?" in problem.message


def test_flat_errors_name_the_flat_key(write_recipe):
    with pytest.raises(UserError) as info:
        _convert(write_recipe, "sft", "model_name_or_path: m\ndataset_name: d\nlearning_rate: -1\n")
    assert str(info.value.problems[0]).endswith(
        "learning_rate (alignkit: training.learning_rate): input should be greater than 0 (given: -1)"
    )


def test_qlora_flat_config(write_recipe):
    resolved = _convert(
        write_recipe,
        "sft",
        "model_name_or_path: m\ndataset_name: d\nuse_peft: true\nload_in_4bit: true\nlora_r: 16\nlora_alpha: 16\n"
        "lora_target_modules: [q_proj, v_proj]\n",
    )
    assert resolved.recipe.peft.r == 16
    assert resolved.recipe.peft.target_modules == ["q_proj", "v_proj"]
    assert resolved.recipe.quantization.load_in_4bit
    assert resolved.recipe.quantization.bnb_4bit_use_double_quant is False  # the handbook's default


def test_a_config_for_another_method_is_refused(write_recipe):
    text = "model_name_or_path: m\ndataset_name: d\nbeta: 0.01\nmax_prompt_length: 512\nmax_length: 1024\n"
    with pytest.raises(UserError) as info:
        _convert(write_recipe, "sft", text)
    assert [p.path for p in info.value.problems] == ["beta", "max_prompt_length"]
    assert "a dpo, orpo or simpo setting in a sft config; run `alignkit dpo --recipe" in info.value.problems[0].message
    assert _convert(write_recipe, "dpo", text).recipe.dpo.beta == 0.01


CPO_SIMPO = """\
model_name_or_path: some/model
dataset_name: trl-lib/ultrafeedback_binarized
loss_type: simpo
beta: 2.5
simpo_gamma: 1.375
cpo_alpha: 0.0
max_length: 2048
max_prompt_length: 1800
bf16: true
"""


def test_a_trl_cpo_simpo_config_converts_into_the_simpo_section(write_recipe):
    resolved = _convert(write_recipe, "simpo", CPO_SIMPO)
    section = resolved.recipe.simpo
    assert (section.beta, section.simpo_gamma, section.cpo_alpha) == (2.5, 1.375, 0.0)
    assert (section.max_length, section.max_prompt_length) == (2048, 1800)
    assert "  renamed simpo_gamma -> simpo.simpo_gamma" in resolved.notices
    assert resolved.recipe.training.extra == {}


def test_a_simpo_config_given_to_sft_names_simpo_first(write_recipe):
    with pytest.raises(UserError) as err:
        _convert(write_recipe, "sft", CPO_SIMPO)
    by_key = {p.path: p.message for p in err.value.problems}
    assert by_key["simpo_gamma"].startswith("a simpo setting in a sft config; run `alignkit simpo --recipe ")
    assert by_key["beta"].startswith("a simpo, dpo or orpo setting in a sft config; run `alignkit simpo --recipe ")
