"""The record a run keeps in its output directory: the contract shared by the launcher and every worker.

A run directory holds the frozen recipe (`alignkit_recipe.yaml`, re-runnable as it is), the run's metadata
(`alignkit_run.json`: method, name, launch plan, command, and `finished` once everything is saved),
`checkpoint-N/` folders while training, and the final files. Light: no torch here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.files import atomic_write
from alignkit.recipe.schema import RecipeBase

RECIPE_FILE = "alignkit_recipe.yaml"
RUN_FILE = "alignkit_run.json"
LOG_FILE = "alignkit.log"


def rank_log(rank: int) -> str:
    """The log file of a training process: `alignkit.log` for rank 0, `alignkit.rankN.log` for the others."""
    return LOG_FILE if rank == 0 else f"alignkit.rank{rank}.log"


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


@dataclass
class RunRecord:
    """A run directory's frozen recipe and metadata."""

    output_dir: Path
    name: str
    recipe: RecipeBase
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.recipe.method.name

    @property
    def finished(self) -> bool:
        return says_finished(self.info)

    def mark_finished(self, metrics: dict[str, Any]) -> None:
        self.info.update(finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), metrics=metrics)
        self.save_info()

    def save_info(self) -> None:
        atomic_write(self.output_dir / RUN_FILE, json.dumps(self.info, indent=2, default=str) + "\n")

    @classmethod
    def load(cls, output_dir: Path) -> RunRecord:
        """Read a run directory written by `freeze` (validating the recipe again)."""
        from alignkit.recipe.yamlio import read_yaml_mapping
        from alignkit.stages import recipe_model

        info = json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8"))
        raw = read_yaml_mapping(output_dir / RECIPE_FILE)
        recipe = recipe_model(info["method"]).model_validate(raw)
        return cls(output_dir=output_dir, name=info.get("name", output_dir.name), recipe=recipe, info=info)


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths whose values differ between two nested mappings (a recipe dumped as JSON, then and now)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]


def changes_since(output_dir: Path, recipe: RecipeBase) -> list[str] | None:
    """The fields in which `recipe` differs from the one frozen in `output_dir`; None when none can be read."""
    from alignkit.errors import AlignkitError

    try:
        frozen = RunRecord.load(output_dir).recipe
    except (AlignkitError, OSError, ValueError, KeyError):
        return None
    return changed_fields(frozen.model_dump(mode="json"), recipe.model_dump(mode="json"))


def read_info(output_dir: Path) -> dict[str, Any] | None:
    """The run metadata in `output_dir`, or None when it holds no alignkit run."""
    path = output_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def says_finished(info: dict[str, Any] | None) -> bool:
    """The one "run finished" rule: the run file says `"finished": true` (a real true, nothing truthy)."""
    return info is not None and info.get("finished") is True


def is_finished(output_dir: str | Path) -> bool:
    """Whether `output_dir` holds a finished run; missing, unreadable or half-written run files are not."""
    return says_finished(read_info(Path(output_dir)))
