"""The recipe mapped one-to-one onto the TRL config of its method (the method supplies its own section's part).

Built before anything is loaded, so TRL's and transformers' own checks refuse a bad combination before
weights or data are read. Hardware-dependent defaults are decided here: bf16 autocast where the device has
it (CPUs with AVX512-BF16 included), nothing where it does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.errors import Problem, UserError
from alignkit.hardware import Hardware, usable_precision
from alignkit.recipe.automatic import Facts, apply, decide
from alignkit.recipe.schema import RecipeBase


def precision_flags(recipe: RecipeBase, hardware: Hardware) -> tuple[dict[str, Any], list[str]]:
    """bf16/fp16/use_cpu for the requested mixed precision on this hardware, and notices for fallbacks."""
    wanted = recipe.training.mixed_precision
    used = usable_precision(wanted, hardware.device, bf16=hardware.bf16, fp16=hardware.fp16)
    flags: dict[str, Any] = {"bf16": used == "bf16", "fp16": used == "fp16", "use_cpu": hardware.device == "cpu"}
    notices = []
    if used != wanted:
        notices.append(f"mixed_precision {wanted} is not supported on this {hardware.device}; training in float32")
    return flags, notices


def build_trl_config(
    recipe: RecipeBase,
    hardware: Hardware,
    *,
    output_dir: Path,
    extra_kwargs: dict[str, Any] | None = None,
):
    """The TRL config of the recipe's method, and notices about hardware fallbacks.

    Args:
        recipe: the validated recipe.
        hardware: the device facts.
        output_dir: where checkpoints go.
        extra_kwargs: launch-profile kwargs (DeepSpeed/FSDP), merged last.
    """
    method = recipe.method
    recipe = apply(recipe, decide(recipe, Facts.of(hardware)))  # a no-op for a recipe already decided
    precision, notices = precision_flags(recipe, hardware)
    kwargs = {"output_dir": str(output_dir), **_training_kwargs(recipe), **precision, **_logging_kwargs(recipe)}
    kwargs |= method.trl_settings(recipe.section)
    kwargs |= dict(recipe.training.extra)
    kwargs |= extra_kwargs or {}
    try:
        return method.trl_config()(**kwargs), notices
    except (ValueError, TypeError) as err:
        raise UserError(Problem(source="recipe", message=f"TRL refused the {method.name} settings: {err}")) from None


def _training_kwargs(recipe: RecipeBase) -> dict[str, Any]:
    """The `training` section (and data.num_proc) as TrainingArguments keywords."""
    training = recipe.training
    return {
        "num_train_epochs": training.num_train_epochs,
        "max_steps": training.max_steps,
        "per_device_train_batch_size": training.per_device_train_batch_size,
        "per_device_eval_batch_size": training.per_device_eval_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "learning_rate": training.learning_rate,
        "lr_scheduler_type": training.lr_scheduler_type,
        "lr_scheduler_kwargs": dict(training.lr_scheduler_kwargs),
        # transformers reads a warmup_steps below 1 as a fraction of the total steps.
        "warmup_steps": training.warmup_ratio if training.warmup_ratio else training.warmup_steps,
        "optim": training.optim,
        "weight_decay": training.weight_decay,
        "max_grad_norm": training.max_grad_norm,
        "seed": training.seed,
        "data_seed": training.seed,
        "gradient_checkpointing": None,
        "activation_checkpointing": training.gradient_checkpointing,
        "activation_checkpointing_kwargs": dict(training.gradient_checkpointing_kwargs),
        # alignkit's own sampler groups or splits by length (alignkit.train.batching); transformers' would also
        # group evaluation batches, which need no order and whose rows may lack the `input_ids` it reads.
        "train_sampling_strategy": (
            "random"
            if training.train_sampling_strategy in ("group_by_length", "split_by_length")
            else training.train_sampling_strategy
        ),
        "eval_strategy": training.eval_strategy,
        "eval_steps": training.eval_steps,
        "save_strategy": training.save_strategy,
        "save_steps": training.save_steps,
        "save_total_limit": training.save_total_limit,
        "use_liger_kernel": training.use_liger_kernel,
        "ddp_timeout": training.ddp_timeout,
        # Trainers that map the rows once more take workers for it; one that only reads them has no such field.
        **({"dataset_num_proc": recipe.data.num_proc} if "dataset_num_proc" in recipe.method.trl_fields else {}),
    }


def _logging_kwargs(recipe: RecipeBase) -> dict[str, Any]:
    """The `logging` and `hub` sections as TrainingArguments keywords."""
    logging, hub = recipe.logging, recipe.hub
    return {
        "report_to": [r for r in logging.report_to if r != "none"] or "none",
        "logging_steps": logging.logging_steps,
        "logging_first_step": True,
        "run_name": logging.run_name,
        "log_level": logging.log_level,
        "disable_tqdm": True,  # alignkit draws its own progress display
        "include_num_input_tokens_seen": True,
        "push_to_hub": False,  # alignkit pushes once the run is finished and its card written
        "hub_model_id": hub.hub_model_id,
        "hub_private_repo": hub.private,
        "hub_revision": hub.revision,
    }
