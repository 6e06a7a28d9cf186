"""Automatic settings: what alignkit decides when a recipe leaves a speed setting unset, and why."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.hardware import Hardware
from alignkit.methods import METHODS
from alignkit.recipe.automatic import Facts, apply, decide
from alignkit.train.trl_config import build_trl_config

CPU = Facts(device="cpu", bf16=True, flash_attn=False, liger=False, activations_fit=True, memory_reason="1 of 8 GiB")
GPU = Facts(device="cuda", bf16=True, flash_attn=True, liger=True, activations_fit=False, memory_reason="90 of 80 GiB")


def recipe(method: str, **sections):
    base = {"model": {"name_or_path": "m"}, "data": {"datasets": [{"path": "d.jsonl"}]}, **sections}
    return METHODS[method].recipe.model_validate(base)


def decided(method: str, facts: Facts, **sections) -> dict:
    return {s.path: (s.value, s.automatic, s.reason) for s in decide(recipe(method, **sections), facts)}


def test_a_cpu_with_room_and_bf16_gets_grouped_batches_no_recomputation_and_bf16():
    settings = decided("sft", CPU)
    assert settings["training.train_sampling_strategy"][:2] == ("group_by_length", True)
    assert settings["training.gradient_checkpointing"][:2] == (False, True)
    assert "1 of 8 GiB" in settings["training.gradient_checkpointing"][2]
    assert settings["training.mixed_precision"][:2] == ("bf16", True)
    assert settings["training.use_liger_kernel"][:2] == (False, True)
    assert settings["training.drop_padding_mask"][:2] == (True, True)
    assert settings["sft.padding_free"][:2] == (False, True)
    assert all(reason for _, _, reason in settings.values())


def test_a_gpu_with_flash_attention_and_liger_gets_padding_free_batches_liger_and_recomputation():
    settings = decided("sft", GPU)
    assert settings["sft.padding_free"][:2] == (True, True)
    # Padding-free rows carry no padding: nothing to group, and flash-attention needs the mask itself.
    assert settings["training.train_sampling_strategy"][0] == "random"
    assert settings["training.drop_padding_mask"][0] is False
    assert settings["training.use_liger_kernel"][0] is True
    assert settings["training.gradient_checkpointing"][0] is True
    assert "90 of 80 GiB" in settings["training.gradient_checkpointing"][2]


def test_liger_is_the_answer_to_tight_memory_not_a_default_where_activations_fit():
    roomy = Facts(device="cuda", bf16=True, flash_attn=False, liger=True, activations_fit=True, memory_reason="9 of 80")
    value, automatic, reason = decided("sft", roomy)["training.use_liger_kernel"]
    assert (value, automatic) == (False, True) and "save memory but cost speed" in reason
    unknown = Facts(device="cuda", bf16=True, flash_attn=False, liger=True)
    assert decided("sft", unknown)["training.use_liger_kernel"][:2] == (True, True)
    chosen = decided("sft", roomy, training={"use_liger_kernel": True})["training.use_liger_kernel"]
    assert chosen[:2] == (True, False)


def test_no_memory_plan_keeps_recomputation_and_a_cpu_without_bf16_trains_in_float32():
    facts = Facts(device="cpu", bf16=False, flash_attn=False, liger=False)
    settings = decided("sft", facts)
    assert settings["training.gradient_checkpointing"][0] is True
    assert settings["training.mixed_precision"][0] == "no"


def test_recipe_values_win_and_are_listed_as_the_recipes():
    sections = {
        "training": {"gradient_checkpointing": True, "train_sampling_strategy": "random", "mixed_precision": "no"},
        "sft": {"packing": True},
    }
    settings = decided("sft", CPU, **sections)
    assert settings["training.gradient_checkpointing"][:2] == (True, False)
    assert settings["training.train_sampling_strategy"][:2] == ("random", False)
    assert settings["training.mixed_precision"][:2] == ("no", False)
    assert settings["sft.padding_free"][0] is False  # packed rows need no padding-free batches


def test_a_preference_method_caches_reference_log_probs_and_splits_random_batches_by_length():
    settings = decided("dpo", CPU)
    assert settings["dpo.precompute_ref_log_probs"][:2] == (True, True)
    value, automatic, reason = settings["training.train_sampling_strategy"]
    assert (value, automatic) == ("split_by_length", True) and "gradient is clipped" in reason
    # A GPU keeps random batches (splitting is measured on CPUs only); a batch of one has nothing to split.
    assert decided("dpo", GPU)["training.train_sampling_strategy"][0] == "random"
    one = decided("dpo", CPU, training={"per_device_train_batch_size": 1})["training.train_sampling_strategy"]
    assert one[0] == "random" and "nothing to split" in one[2]
    # A loss that sorts the whole batch's log-ratios (aot) would compare fewer pairs in a micro-batch.
    aot = decided("dpo", CPU, dpo={"loss_type": ["sigmoid", "aot"]})["training.train_sampling_strategy"]
    assert aot[0] == "random" and "compares rows across the batch" in aot[2]
    assert decided("dpo", CPU, dpo={"precompute_ref_log_probs": False})["dpo.precompute_ref_log_probs"][:2] == (
        False,
        False,
    )


def test_the_reference_pass_runs_one_pair_at_a_time_on_a_cpu_and_batches_on_a_gpu():
    assert decided("dpo", CPU)["dpo.precompute_ref_batch_size"][:2] == (1, True)
    assert decided("dpo", GPU)["dpo.precompute_ref_batch_size"][:2] == (None, True)
    chosen = decided("dpo", CPU, dpo={"precompute_ref_batch_size": 16})["dpo.precompute_ref_batch_size"]
    assert chosen[:2] == (16, False)
    applied = apply(recipe("dpo"), decide(recipe("dpo"), CPU))
    assert applied.section.precompute_ref_batch_size == 1
    assert applied.method.trl_settings(applied.section)["precompute_ref_batch_size"] == 1


def test_apply_writes_the_decisions_into_the_recipe_and_leaves_recipe_values():
    original = recipe("dpo", training={"mixed_precision": "no"})
    applied = apply(original, decide(original, CPU))
    assert applied.training.gradient_checkpointing is False
    assert applied.training.train_sampling_strategy == "split_by_length"
    assert applied.training.mixed_precision == "no"
    assert applied.section.precompute_ref_log_probs is True
    assert original.training.gradient_checkpointing is None  # the user's recipe is not changed


def test_the_trl_config_gets_the_decided_values():
    cpu = Hardware(device="cpu", bf16=True, fp16=False, flash_attn=False)
    built, _ = build_trl_config(recipe("sft", training={"learning_rate": 1e-5}), cpu, output_dir=Path("/tmp/automatic"))
    assert built.train_sampling_strategy == "random"  # alignkit groups (alignkit.train.batching)
    assert built.bf16 is True
    assert built.use_liger_kernel is False


def test_the_dry_run_shows_every_setting_with_its_reason(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        f"model:\n  name_or_path: m\ndata:\n  datasets:\n    - path: d\ntraining:\n  output_dir: {tmp_path / 'o'}\n"
        "  gradient_checkpointing: true\n"
    )
    result = CliRunner().invoke(app, ["sft", "--recipe", str(path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    settings = {s["path"]: s for s in json.loads(result.stdout)["settings"]}
    assert settings["training.gradient_checkpointing"] == {
        "path": "training.gradient_checkpointing",
        "value": True,
        "reason": "set in the recipe",
        "automatic": False,
    }
    assert settings["training.train_sampling_strategy"]["automatic"] is True
    human = CliRunner().invoke(app, ["sft", "--recipe", str(path), "--dry-run"], terminal_width=200)
    assert "speed settings" in human.stdout
    assert "train_sampling_strategy" in human.stdout


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from alignkit.demo.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()


def _batch(padding_side: str):
    import torch

    ids = torch.randint(5, 60, (3, 12))
    mask = torch.ones_like(ids)
    for row, pad in enumerate((0, 4, 7)):
        if pad:
            if padding_side == "right":
                mask[row, -pad:] = 0
            else:
                mask[row, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_leaving_out_the_padding_mask_changes_no_real_tokens_output(tiny_model, padding_side):
    import copy

    import torch

    from alignkit.train.padding_mask import drop_padding_mask

    ids, mask = _batch(padding_side)
    with torch.no_grad():
        reference = tiny_model(input_ids=ids, attention_mask=mask).logits
    hooked = copy.deepcopy(tiny_model)
    drop_padding_mask(hooked)
    seen = []
    hooked.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    with torch.no_grad():
        logits = hooked(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(logits[real], reference[real], atol=1e-5)
    # Right padding: the mask is left out; left padding: it is kept, since later tokens would see the pads.
    assert (seen[0] is None) == (padding_side == "right")


def test_length_grouped_batches_hold_similar_lengths_in_a_random_batch_order():
    from alignkit.train.batching import LengthGroupedBatches

    # Two kinds of rows whose length tells them apart, like sums with two and with three digits.
    lengths = [10 if n % 3 else 14 for n in range(3200)]
    sampler = LengthGroupedBatches(lengths, group=8, seed=0)
    batches = sampler.batches()
    served = [i for batch in batches for i in batch]
    assert sorted(served) == list(range(3200)) and list(sampler) == served
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert padding <= 4 * 8 * 14  # only a block's one mixed batch pads
    kinds = [lengths[batch[0]] for batch in batches]
    longest_run = max(len(list(run)) for _, run in itertools.groupby(kinds))
    assert longest_run < 15, "batches of one kind are interleaved, not served in long sorted runs"
    again = LengthGroupedBatches(lengths, group=8, seed=0)
    assert again.batches() == batches  # a resumed run skips exactly the batches it trained on
    again.set_epoch(1)
    assert again.batches() != batches


def test_grouping_is_kept_only_where_random_batches_would_be_mostly_padding():
    from alignkit.train.batching import grouping_verdict

    # The demo's sums: lengths 24 and 25, random batches are about 2% padding; grouping would only sort kinds.
    worth, reason = grouping_verdict([24 + n % 2 for n in range(4000)], group=64, seed=0)
    assert not worth and "only 2% padding" in reason
    # Chat data with log-normal lengths: random batches are mostly padding.
    import random

    rng = random.Random(0)
    lengths = [min(1024, int(rng.lognormvariate(5, 0.8))) for _ in range(1024)]
    worth, reason = grouping_verdict(lengths, group=8, seed=0)
    assert worth and "would be" in reason


def test_checkpointing_is_left_off_when_the_memory_plan_says_activations_fit(tmp_path, tiny_model_dir):
    path = tmp_path / "r.yaml"
    path.write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  datasets:\n    - path: d\n"
        f"training:\n  output_dir: {tmp_path / 'o'}\n"
    )
    result = CliRunner().invoke(app, ["sft", "--recipe", str(path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    setting = {s["path"]: s for s in document["settings"]}["training.gradient_checkpointing"]
    assert setting["value"] is False and setting["automatic"] is True
    assert setting["reason"].startswith("activations fit without recomputation (memory plan: ")
    assert document["launch"]["activation_checkpointing"] is False


def test_checkpointing_is_turned_on_when_the_activations_would_not_fit(tiny_model_dir):
    from alignkit.launch.memory import checkpointing_facts
    from alignkit.launch.plan import LaunchOptions, plan_launch

    tiny = recipe("sft", model={"name_or_path": str(tiny_model_dir)})
    plan = plan_launch(tiny, LaunchOptions())
    facts = checkpointing_facts(tiny, plan, device_bytes=1 << 20, label="a 1 MiB device")
    assert facts["activations_fit"] is False and "a 1 MiB device" in facts["memory_reason"]
    settings = decided("sft", Facts(device="cpu", bf16=True, flash_attn=False, liger=False, **facts))
    assert settings["training.gradient_checkpointing"][:2] == (True, True)


def test_kto_shows_the_order_its_trainer_requires():
    value, automatic, reason = decided("kto", CPU)["training.train_sampling_strategy"]
    assert (value, automatic) == ("sequential", True) and "KL term" in reason
    unpaired = decided("kto", CPU, kto={"loss_type": "apo_zero_unpaired"})["training.train_sampling_strategy"]
    assert unpaired[0] == "random"


def test_kto_computes_its_reference_log_probs_once_unless_the_recipe_says_otherwise():
    assert decided("kto", CPU)["kto.precompute_ref_log_probs"][:2] == (True, True)
    chosen = decided("kto", CPU, kto={"precompute_ref_log_probs": False})["kto.precompute_ref_log_probs"]
    assert chosen[:2] == (False, False)
