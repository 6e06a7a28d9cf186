"""The kinds of stage a recipe file can be for: each training method (`alignkit.methods.METHODS`), the steps
that train nothing but make data for the next stage (`sample`: generate, score, select), and `eval`, which
measures models side by side.

The registry finds `<kind>.yaml` files, the resolver validates them with the kind's recipe model, a run
directory's record is read back with it, and pipelines chain any of them (`start_stage`). Light: recipe
models and runners are imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.methods import METHODS
from alignkit.scoring.specs import scorer_extras

SAMPLE = "sample"
EVAL = "eval"


@dataclass(frozen=True)
class DataStage:
    """A stage kind that makes data rather than a model."""

    recipe: str
    """`module:attribute` of its recipe model."""
    start: str
    """`module:function` that runs a resolved recipe: (resolved, *, overwrite, argv, echo, num_processes)."""
    output: str | None
    """The file in its output folder that later stages train on; None for a stage that makes no data."""
    preview: str = ""
    """`module:function` that previews its data for `alignkit data`: (recipe_ref, overrides, show, as_json)."""
    gpus: str = ""
    """The recipe field saying how many GPUs its one process uses (empty: one)."""
    extras: Callable[[Any], tuple[str, ...]] = lambda recipe: ()
    """alignkit's optional extras a recipe of this kind needs on a fresh machine."""
    one_model: bool = True
    """Whether its recipe has one `model` a pipeline's `from:` sets (eval names its models in its own list)."""
    models: Callable[[Any], str] = lambda recipe: recipe.model.name_or_path
    """The model(s) a recipe of this kind reads, as a plan table shows them."""


_DATA_STAGES = {
    SAMPLE: DataStage(
        "alignkit.sampling.recipe:SampleRecipe",
        "alignkit.sampling.run:start_sample",
        "selected.jsonl",
        preview="alignkit.sampling.preview:report_prompts",
        gpus="sample.tensor_parallel_size",
        # vLLM only when the recipe names that backend: auto falls back to transformers where it is missing.
        extras=lambda recipe: ("vllm",) * (recipe.sample.backend == "vllm") + scorer_extras(recipe.sample.scorers),
    ),
    EVAL: DataStage(
        "alignkit.evaluation.recipe:EvalRecipe",
        "alignkit.evaluation.run:start_eval",
        None,
        preview="alignkit.evaluation.preview:report_eval_data",
        extras=lambda recipe: recipe.eval.extras,
        one_model=False,
        models=lambda recipe: ", ".join(model.name for model in recipe.eval.models),
    ),
}

STAGE_KINDS: tuple[str, ...] = (*METHODS, *_DATA_STAGES)


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def is_training(kind: str) -> bool:
    """Whether `kind` trains a model (a method of `METHODS`) rather than making data."""
    return kind in METHODS


def recipe_model(kind: str) -> type:
    """The pydantic recipe model of a stage kind; an unknown kind raises KeyError."""
    if kind in METHODS:
        return METHODS[kind].recipe
    return _load(_DATA_STAGES[kind].recipe)


def data_output(kind: str, output_dir: Path | str = "") -> Path | None:
    """The training rows a data-making stage leaves in `output_dir`; None for a stage that makes none."""
    stage = _DATA_STAGES.get(kind)
    return None if stage is None or stage.output is None else Path(output_dir) / stage.output


def models_read(kind: str, recipe: Any) -> str:
    """The model(s) a stage of `kind` reads, for a plan table."""
    stage = _DATA_STAGES.get(kind)
    return recipe.model.name_or_path if stage is None else stage.models(recipe)


def takes_model(kind: str) -> bool:
    """Whether a stage of `kind` starts from one model (`model.name_or_path`), which `from:` sets."""
    stage = _DATA_STAGES.get(kind)
    return stage is None or stage.one_model


def process_gpus(kind: str, recipe: Any) -> tuple[str, int] | None:
    """For a stage that runs as one process (a data-making stage): the recipe field saying how many GPUs that
    process uses, and its value in `recipe`. None for a training method, which starts one process per GPU
    through its launch plan."""
    stage = _DATA_STAGES.get(kind)
    if stage is None:
        return None
    if not stage.gpus:
        return "", 1
    value = recipe
    for part in stage.gpus.split("."):
        value = getattr(value, part)
    return stage.gpus, int(value)


def run_extras(kind: str, recipe: Any) -> tuple[str, ...]:
    """alignkit's optional extras that running `recipe` needs on a fresh machine (a dstack task installs
    them)."""
    stage = _DATA_STAGES.get(kind)
    return recipe.method.extras(recipe.section) if stage is None else stage.extras(recipe)


def preview_data(kind: str, recipe_ref: str, overrides: tuple[str, ...], show: int, as_json: bool) -> None:
    """`alignkit data KIND`: what a training method will train on, or what a data-making stage will read."""
    if is_training(kind):
        from alignkit.data.show import report_data

        report_data(kind, recipe_ref, overrides, show, as_json)
        return
    _load(_DATA_STAGES[kind].preview)(recipe_ref, overrides, show, as_json)


def known_stage(name: str) -> str:
    """`name` when it is a stage kind; a ValueError naming the choices otherwise."""
    if name not in STAGE_KINDS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(STAGE_KINDS)}")
    return name


def start_stage(resolved, plan, options, *, overwrite: bool, argv: list[str], echo) -> None:
    """Run one resolved stage of any kind into its output folder (a training stage as `plan` launches it)."""
    if is_training(resolved.method):
        from alignkit.launch.start import start_training

        start_training(resolved, plan, options, overwrite=overwrite, argv=argv, echo=echo)
        return
    start = _load(_DATA_STAGES[resolved.method].start)
    start(resolved, overwrite=overwrite, argv=argv, echo=echo, num_processes=options.num_processes or 1)
