"""Recipe schema rules, the shipped recipes, and the vocabularies kept in step with TRL."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from pydantic import ValidationError

from alignkit.library import registry
from alignkit.methods import METHODS
from alignkit.methods.dpo import DpoSection
from alignkit.recipe import vocab
from alignkit.recipe.resolve import resolve_recipe
from alignkit.recipe.sections import DataSection, DatasetSource, ModelSection, TrainingSection
from alignkit.stages import is_training

SftRecipe = METHODS["sft"].recipe

SHIPPED = [(name, method) for name, entry in registry.discover().items() for method in entry.methods]


def test_registry_discovers_the_folder():
    names = set(registry.discover())
    assert {"zephyr-7b-gemma", "tiny-demo"} <= names
    for name, entry in registry.discover().items():
        for method, path in entry.files.items():
            assert path == registry.configs_dir() / "recipes" / name.split(":")[0] / path.name
            assert path.name.startswith(method)


@pytest.mark.parametrize(("name", "method"), SHIPPED)
def test_every_shipped_recipe_validates(name, method):
    resolved = resolve_recipe(method, name)
    assert resolved.recipe.description, "each recipe says what it trains"
    assert resolved.recipe.training.output_dir == f"outputs/{name.replace(':', '-')}-{method}"
    if is_training(method):  # --qlora reaches training stages only; a sample recipe has no quantization
        assert resolve_recipe(method, name, qlora=True).recipe.quantization.load_in_4bit


@pytest.mark.parametrize(("name", "method"), SHIPPED)
def test_every_shipped_recipe_opens_with_a_comment(name, method):
    text = registry.discover()[name].files[method].read_text()
    assert text.startswith("# "), "a recipe file opens with what it trains and the command"
    assert f"alignkit {method} --recipe {name}" in text


def test_handbook_gemma_values():
    sft = resolve_recipe("sft", "zephyr-7b-gemma").recipe
    assert (sft.training.learning_rate, sft.training.num_train_epochs) == (2e-5, 3)
    assert (sft.training.per_device_train_batch_size, sft.training.gradient_accumulation_steps) == (4, 4)
    assert sft.sft.max_length == 2048
    assert [(d.path, d.split, d.role) for d in sft.data.datasets] == [
        ("HuggingFaceH4/deita-10k-v0-sft", "train_sft", "train"),
        ("HuggingFaceH4/deita-10k-v0-sft", "test_sft", "test"),
    ]
    dpo = resolve_recipe("dpo", "zephyr-7b-gemma").recipe
    assert (dpo.dpo.beta, dpo.training.learning_rate, dpo.training.num_train_epochs) == (0.05, 5e-7, 2)
    assert (dpo.dpo.max_length, dpo.dpo.max_prompt_length) == (1024, 512)
    assert (dpo.launch.profile, dpo.launch.gpus) == ("zero3", 8)


def test_role_is_inferred_from_the_split_name():
    assert DatasetSource(path="x", split="test_sft").role == "test"
    assert DatasetSource(path="x", split="test[:10%]").role == "test"
    assert DatasetSource(path="x", split="train_prefs").role == "train"
    assert DatasetSource(path="x", split="test_sft", role="both").role == "both"


def test_dtype_aliases():
    assert ModelSection(name_or_path="m", dtype="bf16").dtype == "bfloat16"
    assert ModelSection(name_or_path="m", dtype=None).dtype == "auto"
    with pytest.raises(ValidationError):
        ModelSection(name_or_path="m", dtype="int8")


def test_warmup_given_twice():
    with pytest.raises(ValidationError, match="give warmup_ratio or warmup_steps, not both"):
        TrainingSection(warmup_ratio=0.1, warmup_steps=10)


def test_dpo_rules():
    with pytest.raises(ValidationError, match=r"max_prompt_length \(1024\) must be below max_length \(1024\)"):
        DpoSection(max_length=1024, max_prompt_length=1024)
    with pytest.raises(ValidationError, match="loss_weights has 1 values for 2 loss types"):
        DpoSection(loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    assert DpoSection(loss_type=["sigmoid", "sft"], loss_weights=[0.8, 0.2]).loss_type == ["sigmoid", "sft"]
    with pytest.raises(ValidationError):
        DpoSection(loss_type="kto_pair")


def test_test_split_size_forms():
    data = {"datasets": [{"path": "p"}]}
    assert DataSection(**data, test_split_size=0.1).test_split_size == 0.1
    assert DataSection(**data, test_split_size=500).test_split_size == 500
    with pytest.raises(ValidationError, match="fraction below 1 or a whole number"):
        DataSection(**data, test_split_size=2.5)


def test_evaluation_needs_test_data():
    recipe = {"model": {"name_or_path": "m"}, "data": {"datasets": [{"path": "p"}]}}
    with pytest.raises(ValidationError, match="needs test data"):
        SftRecipe(**recipe, training={"eval_strategy": "epoch"})
    SftRecipe(
        **{**recipe, "data": {"datasets": [{"path": "p"}], "test_split_size": 0.1}}, training={"eval_strategy": "epoch"}
    )


def test_methods_share_one_vocabulary():
    for name, method in METHODS.items():
        assert name in method.recipe.model_fields, "the recipe section is named after the method"


def test_vocabularies_match_installed_libraries():
    from transformers import TrainingArguments
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames
    from trl import DPOConfig

    from alignkit.methods.dpo import DpoLoss

    assert set(typing.get_args(vocab.Optimizer)) == {o.value for o in OptimizerNames}
    assert set(typing.get_args(vocab.Scheduler)) == {s.value for s in SchedulerType}
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert fields(TrainingArguments) == vocab.TRAINING_ARGUMENTS_FIELDS
    for name, method in METHODS.items():
        assert fields(method.trl_config()) == method.trl_fields, name
    for loss in typing.get_args(DpoLoss):
        DPOConfig(output_dir="/tmp/alignkit-vocab-check", loss_type=[loss], report_to="none", bf16=False)
