"""The recipe maps onto TRL's configs one-to-one, and TRL-side problems are refused before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.errors import UserError
from alignkit.hardware import Hardware
from alignkit.launch.preflight import check_extra
from alignkit.methods import METHODS
from alignkit.train.trl_config import build_trl_config

CPU = Hardware(device="cpu", bf16=False, fp16=False, flash_attn=False)
CPU_BF16 = Hardware(device="cpu", bf16=True, fp16=False, flash_attn=False)


def recipe(method: str, **sections):
    base = {"model": {"name_or_path": "m"}, "data": {"datasets": [{"path": "d.jsonl"}]}, **sections}
    training = base.setdefault("training", {})
    training.setdefault("learning_rate", METHODS[method].default_learning_rate)
    return METHODS[method].recipe.model_validate(base)


def config(method: str, hardware: Hardware = CPU, **sections):
    built, notices = build_trl_config(recipe(method, **sections), hardware, output_dir=Path("/tmp/x"))
    return built, notices


@pytest.mark.parametrize("optim", ["rmsprop", "paged_adamw_32bit", "adamw_bnb_8bit", "adamw_torch", "adafactor"])
def test_optimizers_map_one_to_one(optim):
    built, _ = config("sft", training={"optim": optim})
    assert built.optim == optim


def test_schedulers_with_kwargs():
    built, _ = config(
        "sft",
        training={"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
    )
    assert built.lr_scheduler_type == "cosine_with_min_lr"
    assert built.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    built, _ = config("orpo", training={"lr_scheduler_type": "inverse_sqrt", "warmup_steps": 100})
    assert built.lr_scheduler_type == "inverse_sqrt"
    assert built.warmup_steps == 100


def test_warmup_ratio_becomes_a_fractional_warmup_steps():
    built, _ = config("sft", training={"warmup_ratio": 0.1})
    assert built.warmup_steps == 0.1


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "apo_zero", "hinge"])
def test_dpo_loss_types(loss):
    built, _ = config("dpo", dpo={"loss_type": loss, "beta": 0.05, "max_length": 512, "max_prompt_length": 128})
    assert built.loss_type == [loss]
    assert built.beta == 0.05
    assert built.max_length == 512


def test_dpo_mixed_losses_with_weights():
    built, _ = config("dpo", dpo={"loss_type": ["sigmoid", "sft"], "loss_weights": [0.8, 0.2]})
    assert built.loss_type == ["sigmoid", "sft"]
    assert built.loss_weights == [0.8, 0.2]


def test_orpo_completion_length_leaves_room_for_the_prompt():
    built, _ = config("orpo", orpo={"beta": 0.05, "max_length": 2048, "max_prompt_length": 1792})
    assert (built.beta, built.max_length, built.max_completion_length) == (0.05, 2048, 256)


def test_cpt_packs_raw_text():
    built, _ = config("cpt", cpt={"max_length": 256})
    assert (built.dataset_text_field, built.packing, built.max_length) == ("text", True, 256)
    assert built.completion_only_loss is False


def test_precision_follows_the_hardware():
    built, notices = config("sft", training={"mixed_precision": "bf16"})
    assert (built.bf16, built.use_cpu) == (False, True)
    assert notices == ["mixed_precision bf16 is not supported on this cpu; training in float32"]
    built, notices = config("sft", CPU_BF16, training={"mixed_precision": "bf16"})
    assert built.bf16 is True and notices == []
    built, notices = config("sft", CPU_BF16, training={"mixed_precision": "fp16"})
    assert built.fp16 is False and "fp16 is not supported" in notices[0]


def test_extra_passes_through_and_is_checked():
    built, _ = config("sft", training={"extra": {"adam_beta2": 0.95, "neftune_noise_alpha": 5}})
    assert built.adam_beta2 == 0.95
    assert built.neftune_noise_alpha == 5
    with pytest.raises(UserError) as info:
        check_extra(recipe("dpo", training={"extra": {"packing": True, "learning_rate": 1.0, "beta": 0.5}}))
    assert [str(p) for p in info.value.problems] == [
        "recipe: training.extra.packing: not a field of TRL's dpo config",
        "recipe: training.extra.learning_rate: alignkit sets this from the recipe; use the recipe's own field instead",
        "recipe: training.extra.beta: a field of the recipe's dpo section: set dpo.beta instead",
    ]


def test_liger_needs_liger_kernel(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="liger-kernel is not installed"):
        check_extra(recipe("sft", training={"use_liger_kernel": True}))


def test_trl_refusals_become_user_errors():
    training = {"eval_strategy": "epoch", "save_strategy": "steps", "extra": {"load_best_model_at_end": True}}
    data = {"datasets": [{"path": "d.jsonl"}, {"path": "t.jsonl", "role": "test"}]}
    with pytest.raises(UserError, match=r"TRL refused the sft settings: .*strategy"):
        config("sft", training=training, data=data)
