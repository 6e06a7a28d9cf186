"""The model card (`README.md`) a finished run leaves in its output directory."""

from __future__ import annotations

import shlex
from importlib import metadata
from typing import Any

from alignkit.recipe.schema import RecipeBase


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def render_card(
    recipe: RecipeBase,
    *,
    name: str,
    base_model: str,
    metrics: dict[str, Any],
    command: list[str],
    world_size: int,
) -> str:
    """Markdown with a YAML header the Hub understands."""
    method = recipe.method
    datasets = sorted({source.path for source in recipe.data.datasets})
    is_adapter = recipe.peft is not None
    header = [
        "---",
        f"base_model: {base_model}",
        f"library_name: {'peft' if is_adapter else 'transformers'}",
        "tags:",
        "- alignkit",
        f"- {method.name}",
        "- trl",
    ]
    if datasets:
        header += ["datasets:", *[f"- {d}" for d in datasets]]
    header.append("---")
    training = recipe.training
    effective = training.per_device_train_batch_size * training.gradient_accumulation_steps * world_size
    rows = [
        ("method", method.title),
        ("learning rate", f"{training.learning_rate:g} ({training.lr_scheduler_type})"),
        (
            "epochs",
            f"{training.num_train_epochs:g}" + (f", max {training.max_steps} steps" if training.max_steps > 0 else ""),
        ),
        (
            "batch",
            f"{training.per_device_train_batch_size} per device x {training.gradient_accumulation_steps}"
            f" accumulation x {world_size} processes = {effective}",
        ),
        ("optimizer", training.optim),
        ("precision", f"weights {recipe.model.dtype}, autocast {training.mixed_precision}"),
        ("seed", str(training.seed)),
    ]
    rows += method.card_rows(recipe.section)
    if recipe.peft is not None:
        peft = recipe.peft
        targets = peft.target_modules if isinstance(peft.target_modules, str) else ", ".join(peft.target_modules)
        rows.append(("LoRA", f"r={peft.r} alpha={peft.alpha:g} dropout={peft.dropout:g} on {targets}"))
    if recipe.quantization is not None and recipe.quantization.load_in_4bit:
        rows.append(("quantisation", f"4-bit {recipe.quantization.bnb_4bit_quant_type} (QLoRA)"))
    lines = [
        *header,
        "",
        f"# {name}",
        "",
        f"{recipe.description or 'A model'} trained with [alignkit](https://github.com/alignkit/alignkit) by "
        f"{method.title} of `{base_model}`.",
        "",
        "## Data",
        "",
        "| source | split | weight | used for |",
        "|---|---|---|---|",
        *[
            f"| `{s.path}`{f' ({s.name})' if s.name else ''} | {s.split} | {s.weight:g} | {s.role} |"
            for s in recipe.data.datasets
        ],
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in rows],
        "",
        "## Results",
        "",
    ]
    shown = {k: v for k, v in sorted(metrics.items()) if isinstance(v, int | float)}
    if shown:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in shown.items()], ""]
    else:
        lines += ["No metrics were recorded.", ""]
    lines += [
        "## Reproduce",
        "",
        "The resolved recipe is saved beside this card as `alignkit_recipe.yaml`:",
        "",
        "```console",
        f"$ alignkit {method.name} --recipe alignkit_recipe.yaml",
        "```",
        "",
        "The original command was:",
        "",
        "```console",
        f"$ {shlex.join(command)}",
        "```",
        "",
        "## Framework versions",
        "",
        *[
            f"- {package}: {_version(package)}"
            for package in ("alignkit", "torch", "transformers", "trl", "peft", "accelerate", "datasets")
        ],
        "",
    ]
    return "\n".join(lines)
