"""The recipe `alignkit eval --model PATH ... --tasks NAME|FILE.yaml ...` stands for, validated like a file.

The flags become an eval recipe with the models (named after their folders) and an lm-eval harness part;
`--set` refines it as it refines a file (`--set eval.harness.limit=50`). Its output folder, unless given, is
named after the models and tasks, so each one-off comparison keeps its own scorecard and cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from alignkit.errors import UserError
from alignkit.evaluation.recipe import EvalRecipe
from alignkit.recipe.overrides import apply_overrides, parse_overrides
from alignkit.recipe.problems import problems_from_validation
from alignkit.recipe.resolve import ResolvedRecipe

SOURCE = "command line"


def oneoff_recipe(models: list[str], tasks: list[str], *, overrides, output_dir: str | None) -> ResolvedRecipe:
    """The eval recipe of the flags; a UserError (exit 2) naming the flag for a bad one."""
    if not models:
        raise UserError(
            "give the models to evaluate with --model (repeat it), or a recipe with --recipe", source="--model"
        )
    if not tasks:
        raise UserError("give the lm-eval tasks with --tasks (a name or a task YAML file; repeat it)", source="--tasks")
    entries = [{"name": _name(path, index, models), "path": path} for index, path in enumerate(models)]
    raw = {"eval": {"models": entries, "harness": {"tasks": list(tasks)}}, "training": {"output_dir": output_dir}}
    parsed = parse_overrides(list(overrides or ()))
    raw = apply_overrides(raw, parsed)
    if not raw["training"].get("output_dir"):
        digest = hashlib.sha256(json.dumps([models, tasks]).encode()).hexdigest()[:8]
        raw["training"]["output_dir"] = f"outputs/eval-{digest}"
    try:
        recipe = EvalRecipe.model_validate(raw)
    except ValidationError as err:
        origins = {f"eval.models.{i}.path": "--model" for i in range(len(models))} | {"eval.harness.tasks": "--tasks"}
        problems = problems_from_validation(
            err, EvalRecipe, source=SOURCE, method="eval", overrides={o.path: o.text for o in parsed}, origins=origins
        )
        raise UserError(problems) from None
    return ResolvedRecipe(name="eval", source=Path(SOURCE), recipe=recipe)


def _name(path: str, index: int, models: list[str]) -> str:
    """The folder's name; a second model of the same name is told apart by its position."""
    stem = Path(path.rstrip("/")).name or f"model{index + 1}"
    names = [Path(p.rstrip("/")).name for p in models]
    return stem if names.count(stem) == 1 else f"{stem}-{index + 1}"
