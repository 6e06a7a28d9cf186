"""From `--recipe NAME|PATH` plus flags to one validated recipe.

The order is fixed and documented: read the file (native, or a flat handbook/TRL config converted with a
notice per changed key), replace mirrored Hub ids by their local stand-ins (`--mirror`, or the file
ALIGNKIT_MIRRORS names; see alignkit.recipe.mirrors), make the file's local data paths absolute
(alignkit.recipe.data_paths), apply `--qlora`, then every `--set` (so an explicit override beats the mirrors
and the QLoRA defaults), then `--output-dir`, then validate once. Nothing here
touches the disk beyond reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alignkit.errors import Problem, UserError
from alignkit.library import registry
from alignkit.library.lookup import locate
from alignkit.methods import METHODS
from alignkit.recipe import handbook
from alignkit.recipe.data_paths import absolute_data_paths
from alignkit.recipe.mirrors import apply_mirrors, mirrors_from_env
from alignkit.recipe.overrides import Override, apply_overrides, parse_overrides
from alignkit.recipe.problems import problems_from_validation
from alignkit.recipe.qlora import apply_qlora
from alignkit.recipe.schema import RecipeBase
from alignkit.recipe.secrets import find_secrets
from alignkit.recipe.yamlio import read_yaml_mapping
from alignkit.stages import STAGE_KINDS, is_training, recipe_model


@dataclass(frozen=True)
class ResolvedRecipe:
    """A validated recipe and where it came from (the recipe carries its method)."""

    name: str
    """Registry name, or the file's stem for a recipe given by path."""
    source: Path
    recipe: RecipeBase
    notices: list[str] = field(default_factory=list)
    mirrored: frozenset[str] = frozenset()
    """The mirror entries that matched a field of the file (callers report the unused ones)."""

    @property
    def method(self) -> str:
        """The name of the recipe's method (the subcommand that runs it)."""
        return self.recipe.stage

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.training.output_dir or "")


def resolve_recipe(
    method: str,
    ref: str,
    *,
    qlora: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    output_dir: str | None = None,
    mirrors: dict[str, str] | None = None,
) -> ResolvedRecipe:
    """Resolve and validate a recipe for `method` (any stage kind: a training method, or sample).

    `mirrors` maps Hub ids to local paths (alignkit.recipe.mirrors); None reads ALIGNKIT_MIRRORS, {} applies
    none.

    Raises:
        UserError: listing every problem found in the file, the flags and the overrides.
    """
    name, path = locate(ref, method)
    source = str(path)
    raw = file_raw = read_yaml_mapping(path)
    notices: list[str] = []
    origins: dict[str, str] = {}
    if handbook.is_flat(raw) and is_training(method):
        converted = handbook.convert_flat(raw, METHODS[method], source)
        raw, origins = converted.recipe, converted.origins
        notices = [f"{source} is a flat handbook/TRL config; converted it to an alignkit recipe:"]
        notices += [f"  {line}" for line in converted.notices]
    else:
        _refuse_other_method(raw, method, source)
    if mirrors is None:
        mirrors = mirrors_from_env() or {}
    raw, applied = apply_mirrors(raw, mirrors)
    raw = absolute_data_paths(raw, [Path.cwd()] if ref in registry.discover() else [path.parent, Path.cwd()])
    if qlora and is_training(method):  # a pipeline's --qlora reaches its training stages only
        raw, qlora_notices = apply_qlora(raw, METHODS[method])
        notices += qlora_notices
    parsed = parse_overrides(list(overrides))
    _refuse_secrets(file_raw, source, parsed, output_dir)
    # A field that --set replaces anyway (a pipeline's `from` wiring) did not use its mirror.
    applied = [a for a in applied if not any(a.field == o.path or a.field.startswith(f"{o.path}.") for o in parsed)]
    notices += [a.notice for a in applied]
    raw = absolute_data_paths(apply_overrides(raw, parsed), [Path.cwd()])
    set_by = {o.path: o.text for o in parsed}
    if output_dir is not None:
        raw = apply_overrides(raw, parse_overrides([f"training.output_dir={output_dir}"]))
        set_by["training.output_dir"] = f"--output-dir {output_dir}"
    raw = _fill_defaults(raw, method, name)
    model = recipe_model(method)
    try:
        recipe = model.model_validate(raw)
    except ValidationError as err:
        problems = problems_from_validation(err, model, source=source, method=method, overrides=set_by, origins=origins)
        raise UserError(problems) from None
    return ResolvedRecipe(
        name=name,
        source=path,
        recipe=recipe,
        notices=notices,
        mirrored=frozenset(a.key for a in applied),
    )


def _refuse_secrets(raw: dict[str, Any], source: str, overrides: list[Override], output_dir: str | None) -> None:
    """Refuse a recipe or an override holding a token (alignkit.recipe.secrets), naming the variable to set."""
    problems = [found.problem(source) for found in find_secrets(raw)]
    for override in overrides:
        # The override's text holds the secret: the message names its path only.
        where = f"--set {override.path}=..."
        problems += [found.problem(where) for found in find_secrets(override.value, override.path)]
    if output_dir is not None:
        problems += [found.problem("--output-dir") for found in find_secrets(output_dir, "training.output_dir")]
    if problems:
        raise UserError(problems)


def _refuse_other_method(raw: dict[str, Any], method: str, source: str) -> None:
    others = [key for key in STAGE_KINDS if key in raw and key != method]
    if others and method not in raw:
        raise UserError(
            Problem(
                source=source,
                message=f"this is a {others[0]} recipe (it has a {others[0]} section); run"
                f" `alignkit {others[0]} --recipe {source}` or add a {method} section",
            )
        )


def _fill_defaults(raw: dict[str, Any], method: str, name: str) -> dict[str, Any]:
    """Defaults that depend on the method or the recipe's name, written in so the frozen recipe is explicit."""
    training = raw.get("training")
    if training is None:
        training = {}
    if not isinstance(training, dict):
        return raw  # validation reports the wrong type
    training = dict(training)
    if training.get("learning_rate") is None and is_training(method):
        training["learning_rate"] = METHODS[method].default_learning_rate
    if not training.get("output_dir"):
        safe_name = name.replace(":", "-")
        training["output_dir"] = f"outputs/{safe_name}-{method}"
    return {**raw, "training": training}
