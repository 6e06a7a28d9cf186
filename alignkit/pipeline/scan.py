"""Scans (`configs/recipes/<name>/scan.yaml`): a grid of `--set` overrides over one or more recipes.

Every combination of the grid's values is one point of the scan, an ordinary
`alignkit <method> --recipe ... --set ... --output-dir ...` run. A scan over several methods (DPO and KTO
over the same betas) lists one arm per method under `arms:`; a scan of one method may give its arm's keys at
the top level. `alignkit run --recipe <name>:scan` plans
every point up front (resolved, validated, finished or not) as a pipeline plans its stages, and trains the
unfinished points one after another through the same path (alignkit.pipeline.execute). Light: no torch.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignkit.errors import Problem, UserError
from alignkit.library import registry
from alignkit.library.lookup import refuse_unknown
from alignkit.methods import known_method
from alignkit.pipeline.spec import PlannedStage, _applies, family
from alignkit.recipe.resolve import resolve_recipe
from alignkit.recipe.yamlio import read_yaml_mapping
from alignkit.run_record import is_finished

SCAN_FILE = "scan.yaml"
SCAN_SUFFIX = ":scan"
"""`alignkit run --recipe <family>:scan` runs the family's scan.yaml."""


class ScanArm(BaseModel):
    """A grid of overrides over some recipes of one method: every combination of the grid's values is one point."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    recipes: list[str] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(min_length=1)
    """Dotted recipe path -> the values it takes; the first key varies slowest."""
    set: dict[str, str] = Field(default_factory=dict)
    """Further overrides per point, formatted with `{recipe}` and the grid's paths (`{dpo.beta}`)."""
    output_dir: str
    """Each point's output folder, formatted like `set` (`:` in a recipe name becomes `-`)."""

    _known_method = field_validator("method")(known_method)

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in value.items() if not values]
        if empty:
            raise ValueError(f"grid axes without values: {', '.join(empty)}")
        return value


class ScanSpec(BaseModel):
    """A scan: its arms (one per method), run one after another in the order given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    arms: list[ScanArm] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_arm_at_the_top(cls, data: Any) -> Any:
        if isinstance(data, dict) and "arms" not in data:
            return {
                "description": data.get("description", ""),
                "arms": [{k: v for k, v in data.items() if k != "description"}],
            }
        return data


@dataclass(frozen=True)
class ScanPoint:
    """One point of a scan: a recipe and the overrides that make it this point."""

    method: str
    recipe: str
    overrides: tuple[str, ...]
    output_dir: str
    qlora: bool = False
    varied: int = 0
    """How many of `overrides`, from the start, are the grid's values (the rest: its `set`, then `--set`)."""

    @property
    def command(self) -> str:
        qlora = " --qlora" if self.qlora else ""
        sets = " ".join(f"--set {shlex.quote(o)}" for o in self.overrides)
        return (
            f"alignkit {self.method} --recipe {self.recipe}{qlora} {sets} --output-dir {shlex.quote(self.output_dir)}"
        )


def is_scan(name: str) -> bool:
    """Whether a `--recipe` name asks for a family's scan (`pref-align-scan:scan`)."""
    return name.endswith(SCAN_SUFFIX)


def scan_file(name: str) -> Path:
    """The scan.yaml of a recipe family (`pref-align-scan`, or any of its variants' names)."""
    return registry.configs_dir() / "recipes" / family(name) / SCAN_FILE


def scan_names() -> list[str]:
    """Every shipped scan, as `alignkit run --recipe` takes it."""
    families = sorted({family(name) for name in registry.discover()})
    return [f + SCAN_SUFFIX for f in families if scan_file(f).is_file()]


def load_scan(path: Path) -> ScanSpec:
    """Read and validate a scan file.

    Raises:
        UserError: a missing file or one that does not follow the scan format.
    """
    if not path.is_file():
        raise UserError(Problem(source=str(path), message="no scan file here"))
    try:
        return ScanSpec.model_validate(read_yaml_mapping(path))
    except ValidationError as err:
        raise UserError(
            [Problem(source=str(path), path=".".join(str(p) for p in e["loc"]), message=e["msg"]) for e in err.errors()]
        ) from None


def load_named_scan(name: str) -> ScanSpec:
    """The scan of `--recipe <family>:scan`.

    Raises:
        UserError: an unknown family, or a family without a scan.
    """
    path = scan_file(name)
    if path.is_file():
        return load_scan(path)
    base = family(name)
    if base not in registry.discover():
        refuse_unknown(name, names=scan_names())
    shipped = ", ".join(scan_names()) or "none"
    raise UserError(
        Problem(
            source="--recipe",
            message=f"recipe {base!r} has no scan ({SCAN_FILE}); the scans are: {shipped}",
        )
    )


def expand_scan(spec: ScanSpec) -> list[ScanPoint]:
    """Every point of a scan, arm by arm, then recipe by recipe, in grid order."""
    points = []
    for arm in spec.arms:
        keys = list(arm.grid)
        for recipe in arm.recipes:
            for values in itertools.product(*(arm.grid[k] for k in keys)):
                fields = {
                    "recipe": recipe.replace(":", "-"),
                    **{k: _text(v) for k, v in zip(keys, values, strict=True)},
                }
                overrides = [f"{k}={fields[k]}" for k in keys]
                overrides += [f"{k}={_format(template, fields)}" for k, template in arm.set.items()]
                output_dir = _format(arm.output_dir, fields)
                points.append(ScanPoint(arm.method, recipe, tuple(overrides), output_dir, varied=len(keys)))
    return points


def plan_scan(
    name: str,
    *,
    qlora: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    output_root: str | Path | None = None,
    mirrors: dict[str, str] | None = None,
) -> tuple[ScanSpec, list[PlannedStage]]:
    """Resolve every point of `name`'s scan (`<family>:scan`) and mark the finished ones.

    `overrides` reach every point, after the point's own; `output_root` puts each point in
    `output_root/<the name of its folder>` instead of the scan's output_dir. `mirrors` as for resolve_recipe.

    Raises:
        UserError: no such scan, an override of a grid axis or of a stage, two points sharing a folder, or
            any point's recipe problems.
    """
    spec = load_named_scan(name)
    _refuse_overrides(spec, overrides)
    planned: list[PlannedStage] = []
    for index, point in enumerate(expand_scan(spec), start=1):
        out = str(Path(output_root) / Path(point.output_dir).name) if output_root is not None else point.output_dir
        # A method's section in --set (`dpo.max_length=512`) reaches only that method's points.
        sets = (*point.overrides, *(o for o in overrides if _applies(o, point.method)))
        point = ScanPoint(point.method, point.recipe, sets, out, qlora, point.varied)
        resolved = resolve_recipe(
            point.method, point.recipe, qlora=qlora, overrides=point.overrides, output_dir=out, mirrors=mirrors
        )
        planned.append(
            PlannedStage(
                name=str(index),
                method=point.method,
                recipe_name=point.recipe,
                resolved=resolved,
                from_stage=None,
                finished=is_finished(out),
                settings=point.overrides[: point.varied],
                command=point.command,
            )
        )
    _refuse_shared_folders(planned)
    return spec, planned


def _refuse_overrides(spec: ScanSpec, overrides: list[str] | tuple[str, ...]) -> None:
    problems = []
    for text in overrides:
        key = text.partition("=")[0].strip()
        if ":" in key:
            message = "a scan has no stages; give PATH=VALUE, which reaches every point"
        elif arm := next((arm for arm in spec.arms if key in arm.grid), None):
            values = ", ".join(_text(v) for v in arm.grid[key])
            message = (
                f"the scan varies {key} ({values}); to train one value, run"
                f" `alignkit {arm.method} --recipe {arm.recipes[0]} --set {text}`"
            )
        else:
            continue
        problems.append(Problem(source=f"--set {text}", message=message))
    if problems:
        raise UserError(problems)


def _refuse_shared_folders(planned: list[PlannedStage]) -> None:
    # A point would find the other's finished run in its folder and be skipped without training.
    seen: dict[Path, str] = {}
    for stage in planned:
        other = seen.setdefault(stage.output_dir, stage.name)
        if other != stage.name:
            raise UserError(
                Problem(
                    source="--output-dir",
                    message=f"points {other} and {stage.name} would both write to {stage.output_dir}; give the"
                    " scan's points distinct folder names",
                )
            )


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _format(template: str, fields: dict[str, str]) -> str:
    # str.format would read `{dpo.beta}` as an attribute lookup; the grid's keys are dotted paths.
    out = template
    for key, value in fields.items():
        out = out.replace("{" + key + "}", value)
    if "{" in out:
        raise UserError(Problem(source=SCAN_FILE, message=f"unknown placeholder in {template!r}"))
    return out
