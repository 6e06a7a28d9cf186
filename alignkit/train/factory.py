"""The one trainer factory: a validated recipe in, a ready TRL trainer out, the same way for every method.

The order matters and is fixed: the TRL config first (its checks fail before anything heavy loads), then
the tokenizer and its chat template, the data (a bad row or a missing column fails before any weights load),
the model, and finally the trainer. Which TRL config and
trainer classes, and what the method's section adds to them, the recipe's method says
(`alignkit/methods/`); nothing here depends on which method it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.hardware import Hardware
from alignkit.launch.preflight import check_extra
from alignkit.recipe.automatic import Facts, Setting, apply, decide
from alignkit.recipe.schema import RecipeBase
from alignkit.train.batching import (
    CPU_LENGTH_MULTIPLE,
    group_by_length,
    grouping_verdict,
    round_batch_lengths,
    split_by_length,
    splitting_verdict,
)
from alignkit.train.compute_dtype import hand_on_in_compute_dtype
from alignkit.train.modeling import LoadedModel, load_model, match_adapter_dtype
from alignkit.train.padding_mask import drop_padding_mask
from alignkit.train.trl_config import build_trl_config

SPLIT_SAMPLE = 2000
"""Rows tokenized to decide whether splitting batches pays (a sample: the prepared rows are text)."""


@dataclass
class BuiltTrainer:
    """A trainer and what was made on the way to it."""

    trainer: Any
    tokenizer: Any
    loaded: LoadedModel
    data: Any
    """The data layer's PreparedData (train/test datasets and their report)."""
    recipe: RecipeBase
    """The recipe with its automatic settings decided (what the run really used)."""
    settings: list[Setting] = field(default_factory=list)
    """Every automatic setting and its reason."""
    notices: list[str] = field(default_factory=list)


def build_trainer(
    recipe: RecipeBase,
    hardware: Hardware,
    *,
    output_dir: Path,
    trainer_kwargs: dict[str, Any] | None = None,
    callbacks: list | None = None,
    facts: Facts | None = None,
) -> BuiltTrainer:
    """Build the TRL trainer of the recipe's method."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from alignkit.data.prepare import prepare_data
    from alignkit.data.tokenizer import training_tokenizer
    from alignkit.train.guard import DivergenceGuard

    method = recipe.method
    check_extra(recipe)
    settings = decide(recipe, facts or Facts.of(hardware))
    recipe = apply(recipe, settings)
    config, notices = build_trl_config(
        recipe,
        hardware,
        output_dir=output_dir,
        extra_kwargs=trainer_kwargs,
    )
    tokenizer, new_tokens = training_tokenizer(recipe)
    data = prepare_data(recipe, tokenizer)
    if recipe.training.train_sampling_strategy == "split_by_length":
        settings = _split_by_length(config, recipe, settings, data.train, tokenizer)
    loaded = load_model(recipe, hardware, tokenizer, new_tokens=new_tokens)
    if recipe.training.drop_padding_mask:
        drop_padding_mask(loaded.model)
    notices += loaded.notices
    if getattr(config, "dataset_num_proc", None):
        # TRL maps the prepared rows once more; worker processes cost more than they save on small data.
        workers = min(config.dataset_num_proc, len(data.train) // 5000)
        config.dataset_num_proc = workers if workers > 1 else None
    common = {
        "args": config,
        "train_dataset": data.train,
        "eval_dataset": data.test if recipe.training.eval_strategy != "no" else None,
        "processing_class": tokenizer,
        "peft_config": loaded.peft_config,
        # Every run stops at a NaN or infinite loss rather than saving (and marking finished) a broken model.
        "callbacks": [DivergenceGuard(), *(callbacks or [])],
    }
    # What the method adds to its trainer's constructor (grpo: the reward functions), built only now.
    trainer = method.trainer()(model=loaded.model, **common, **method.trainer_arguments(recipe.section))
    sampling = next(s.value for s in settings if s.path == "training.train_sampling_strategy")
    if sampling == "group_by_length":
        settings = _group_by_length(trainer, method, config, settings, hardware.device)
    elif sampling == "split_by_length":
        _sorted_within_batches(trainer, method, config, recipe.training.per_device_train_batch_size, hardware.device)
    if hardware.device == "cpu" and config.bf16:
        hand_on_in_compute_dtype(trainer.model)
    match_adapter_dtype(trainer.model, recipe)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; ProgressCallback reports instead
    return BuiltTrainer(
        trainer=trainer,
        tokenizer=tokenizer,
        loaded=loaded,
        data=data,
        recipe=recipe,
        settings=settings,
        notices=notices,
    )


def token_counts(dataset) -> dict[str, Any]:
    """Every list column's per-row length (a numpy array per column), read from the Arrow data in the
    dataset's row order without decoding a row: seconds for millions of rows, where a loop over rows takes
    minutes."""
    import pyarrow
    import pyarrow.compute

    schema = dataset.features.arrow_schema
    kinds = (pyarrow.types.is_list, pyarrow.types.is_large_list)
    listed = [field.name for field in schema if any(kind(field.type) for kind in kinds)]
    table = dataset.select_columns(listed).with_format("arrow")[:]
    return {
        name: pyarrow.compute.fill_null(pyarrow.compute.list_value_length(table.column(name)), 0).to_numpy()
        for name in listed
    }


def _group_by_length(trainer, method, config, settings: list[Setting], device: str) -> list[Setting]:
    """Install alignkit's length-grouped sampler; an automatic choice is first checked against the data. On a
    CPU the grouped batches' lengths are also rounded up (`CPU_LENGTH_MULTIPLE`), unless the recipe set one."""
    measure = method.batch_length or (lambda counts: counts["input_ids"])
    lengths = [int(length) for length in measure(token_counts(trainer.train_dataset))]
    group = config.per_device_train_batch_size * config.world_size
    path = "training.train_sampling_strategy"
    chosen = next(s for s in settings if s.path == path)
    if chosen.automatic:
        worth, reason = grouping_verdict(lengths, group, config.seed)
        settings = [
            Setting(path, "group_by_length" if worth else "random", reason) if s is chosen else s for s in settings
        ]
        if not worth:
            return settings
    group_by_length(trainer, lengths, group, config.seed)
    if device == "cpu" and round_batch_lengths(trainer, CPU_LENGTH_MULTIPLE):
        settings = [_rounded(s) if s.path == path and s.automatic else s for s in settings]
    return settings


def _split_by_length(config, recipe, settings: list[Setting], rows, tokenizer) -> list[Setting]:
    """Turn the config's batches into micro-batches accumulated into the same steps, where the launch allows it
    (under DeepSpeed, FSDP or several processes the micro-batch size is also the launcher's) and, for an
    automatic choice, where random batches of the data would be padding enough to pay for the extra calls."""
    path = "training.train_sampling_strategy"
    chosen = next(s for s in settings if s.path == path)

    def instead(reason: str) -> list[Setting]:
        return [Setting(path, "random", reason, chosen.automatic) if s is chosen else s for s in settings]

    if config.deepspeed or config.fsdp or config.world_size > 1:
        return instead("batches are not split under DeepSpeed, FSDP or several processes; random batches instead")
    batch = recipe.training.per_device_train_batch_size
    if chosen.automatic and recipe.method.text_lengths is not None:
        sample = rows.shuffle(seed=config.seed).select(range(min(len(rows), SPLIT_SAMPLE)))
        worth, reason = splitting_verdict(recipe.method.text_lengths(sample, tokenizer), batch, config.seed)
        if not worth:
            return instead(reason)
        settings = [Setting(path, chosen.value, f"{chosen.reason}; {reason}") if s is chosen else s for s in settings]
    split_by_length(config, batch)
    return settings


def _sorted_within_batches(trainer, method, config, batch: int, device: str) -> None:
    """Serve random batches of `batch` rows with each batch's rows sorted by length, so that the micro-batches
    the config now takes from them hold rows of similar length."""
    measure = method.batch_length or (lambda counts: counts["input_ids"])
    lengths = [int(length) for length in measure(token_counts(trainer.train_dataset))]
    group_by_length(trainer, lengths, batch, config.seed, block_batches=1)
    if device == "cpu":
        round_batch_lengths(trainer, CPU_LENGTH_MULTIPLE)


def _rounded(setting: Setting) -> Setting:
    reason = f"{setting.reason}; batch lengths rounded up to a multiple of {CPU_LENGTH_MULTIPLE} on this CPU"
    return Setting(setting.path, setting.value, reason)
