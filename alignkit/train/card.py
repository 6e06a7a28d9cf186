"""The model card (`README.md`) a finished run leaves in its output directory."""

from __future__ import annotations

import shlex
from importlib import metadata
from typing import Any

from alignkit.recipe.schema import RecipeBase

_VERSIONED = ("alignkit", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


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
    lines = [
        *_hub_header(recipe, base_model),
        "",
        f"# {name}",
        "",
        f"{recipe.description or 'A model'} trained with [alignkit](https://github.com/alignkit/alignkit) by "
        f"{recipe.method.title} of `{base_model}`.",
        "",
        *_data_table(recipe),
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in _training_rows(recipe, world_size)],
        "",
        *_results(metrics),
        *_reproduce(recipe, command),
        "## Framework versions",
        "",
        *[f"- {package}: {_version(package)}" for package in _VERSIONED],
        "",
    ]
    return "\n".join(lines)


def _hub_header(recipe: RecipeBase, base_model: str) -> list[str]:
    datasets = sorted({source.path for source in recipe.data.datasets})
    header = [
        "---",
        f"base_model: {base_model}",
        f"library_name: {'peft' if recipe.peft is not None else 'transformers'}",
        "tags:",
        "- alignkit",
        f"- {recipe.method.name}",
        "- trl",
    ]
    if datasets:
        header += ["datasets:", *[f"- {d}" for d in datasets]]
    return [*header, "---"]


def _data_table(recipe: RecipeBase) -> list[str]:
    return [
        "## Data",
        "",
        "| source | split | weight | used for |",
        "|---|---|---|---|",
        *[
            f"| `{s.path}`{f' ({s.name})' if s.name else ''} | {s.split} | {s.weight:g} | {s.role} |"
            for s in recipe.data.datasets
        ],
        "",
    ]


def _training_rows(recipe: RecipeBase, world_size: int) -> list[tuple[str, str]]:
    training = recipe.training
    effective = training.per_device_train_batch_size * training.gradient_accumulation_steps * world_size
    steps = f", max {training.max_steps} steps" if training.max_steps > 0 else ""
    rows = [
        ("method", recipe.method.title),
        ("learning rate", f"{training.learning_rate:g} ({training.lr_scheduler_type})"),
        ("epochs", f"{training.num_train_epochs:g}{steps}"),
        (
            "batch",
            f"{training.per_device_train_batch_size} per device x {training.gradient_accumulation_steps}"
            f" accumulation x {world_size} processes = {effective}",
        ),
        ("optimizer", training.optim),
        ("precision", f"weights {recipe.model.dtype}, autocast {training.mixed_precision}"),
        ("seed", str(training.seed)),
        *recipe.method.card_rows(recipe.section),
    ]
    if recipe.peft is not None:
        peft = recipe.peft
        targets = peft.target_modules if isinstance(peft.target_modules, str) else ", ".join(peft.target_modules)
        rows.append(("LoRA", f"r={peft.r} alpha={peft.alpha:g} dropout={peft.dropout:g} on {targets}"))
    if recipe.quantization is not None and recipe.quantization.load_in_4bit:
        rows.append(("quantisation", f"4-bit {recipe.quantization.bnb_4bit_quant_type} (QLoRA)"))
    return rows


def _results(metrics: dict[str, Any]) -> list[str]:
    shown = {k: v for k, v in sorted(metrics.items()) if isinstance(v, int | float)}
    if not shown:
        return ["## Results", "", "No metrics were recorded.", ""]
    return ["## Results", "", "| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in shown.items()], ""]


def _reproduce(recipe: RecipeBase, command: list[str]) -> list[str]:
    return [
        "## Reproduce",
        "",
        "The resolved recipe is saved beside this card as `alignkit_recipe.yaml`:",
        "",
        "```console",
        f"$ alignkit {recipe.method.name} --recipe alignkit_recipe.yaml",
        "```",
        "",
        "The original command was:",
        "",
        "```console",
        f"$ {shlex.join(command)}",
        "```",
        "",
    ]
