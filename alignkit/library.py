"""Helpers around the shipped recipe library: copying a recipe out for editing, and expanding a scan.

`recipes cp` copies the files byte for byte (comments included), so a user starts from a known-good recipe
and sees why each value is what it is. A scan (`configs/recipes/<name>/scan.yaml`) is a grid of `--set`
overrides over one or more recipes; `expand_scan` turns it into the list of runs, each an ordinary
`alignkit <method> --recipe ... --set ... --output-dir ...` command, so nothing new is needed to run one.
Light: yaml and pydantic only.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alignkit import registry
from alignkit.errors import Problem, UserError
from alignkit.methods import known_method
from alignkit.recipe.yamlio import read_yaml_mapping

SCAN_FILE = "scan.yaml"


@dataclass(frozen=True)
class CopiedFile:
    """One recipe file written by `copy_recipe`."""

    method: str
    source: Path
    dest: Path

    @property
    def command(self) -> str:
        return f"alignkit {self.method} --recipe {shlex.quote(str(self.dest))}"


def copy_recipe(name: str, dest: str | Path, method: str | None = None) -> list[CopiedFile]:
    """Copy a registry recipe's files to `dest` for editing; nothing is overwritten.

    `dest` is a file (`*.yaml`) when one method is copied, else a folder that receives `<method>.yaml` per
    method (the registry's own layout, so the folder can become a recipe of its own).

    Raises:
        UserError: unknown recipe or method, a file destination for several methods, or an existing file.
    """
    entries = registry.discover()
    if name not in entries:
        close = registry.suggest(name, list(entries))
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UserError(
            Problem(
                source="alignkit recipes cp", message=f"unknown recipe {name!r}{hint} (see `alignkit recipes list`)"
            )
        )
    entry = entries[name]
    if method is not None and method not in entry.files:
        raise UserError(
            Problem(
                source="--method",
                message=f"recipe {name!r} has no {method} stage; it has {', '.join(entry.methods)}",
            )
        )
    methods = [method] if method else entry.methods
    target = Path(dest).expanduser()
    if target.suffix in (".yaml", ".yml"):
        if len(methods) > 1:
            raise UserError(
                Problem(
                    source=str(dest),
                    message=f"recipe {name!r} has {len(methods)} stages ({', '.join(methods)}); give --method to copy"
                    " one into a file, or a folder to copy them all",
                )
            )
        plan = [CopiedFile(methods[0], entry.files[methods[0]], target)]
    else:
        plan = [CopiedFile(m, entry.files[m], target / f"{m}.yaml") for m in methods]
    existing = [c.dest for c in plan if c.dest.exists()]
    if existing:
        raise UserError(
            [
                Problem(source=str(path), message="already exists; not overwriting it (remove it or pick another name)")
                for path in existing
            ]
        )
    for copied in plan:
        copied.dest.parent.mkdir(parents=True, exist_ok=True)
        copied.dest.write_bytes(copied.source.read_bytes())
    return plan


class ScanSpec(BaseModel):
    """A grid of overrides over some recipes: every combination of the grid's values is one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    recipes: list[str] = Field(min_length=1)
    grid: dict[str, list[Any]] = Field(min_length=1)
    """Dotted recipe path -> the values it takes; the first key varies slowest."""
    set: dict[str, str] = Field(default_factory=dict)
    """Further overrides per run, formatted with `{recipe}` and the grid's paths (`{dpo.beta}`)."""
    output_dir: str
    """Each run's output folder, formatted like `set` (`:` in a recipe name becomes `-`)."""

    _known_method = field_validator("method")(known_method)

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in value.items() if not values]
        if empty:
            raise ValueError(f"grid axes without values: {', '.join(empty)}")
        return value


@dataclass(frozen=True)
class ScanRun:
    """One point of a scan: a recipe and the overrides that make it this point."""

    method: str
    recipe: str
    overrides: tuple[str, ...]
    output_dir: str

    @property
    def command(self) -> str:
        sets = " ".join(f"--set {shlex.quote(o)}" for o in self.overrides)
        return f"alignkit {self.method} --recipe {self.recipe} {sets} --output-dir {shlex.quote(self.output_dir)}"


def scan_file(name: str) -> Path:
    """The scan.yaml of a recipe family (`pref-align-scan`, or any of its variants' names)."""
    return registry.configs_dir() / "recipes" / name.split(":", 1)[0] / SCAN_FILE


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


def expand_scan(spec: ScanSpec) -> list[ScanRun]:
    """Every run of a scan, recipe by recipe, in grid order."""
    runs = []
    keys = list(spec.grid)
    for recipe in spec.recipes:
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            fields = {"recipe": recipe.replace(":", "-"), **{k: _text(v) for k, v in zip(keys, values, strict=True)}}
            overrides = [f"{k}={fields[k]}" for k in keys]
            overrides += [f"{k}={_format(template, fields)}" for k, template in spec.set.items()]
            runs.append(
                ScanRun(spec.method, recipe, tuple(overrides), _format(spec.output_dir, fields)),
            )
    return runs


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
