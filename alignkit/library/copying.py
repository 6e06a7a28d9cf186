"""`alignkit recipes cp`: copying a shipped recipe out of the library to edit it.

The files are copied byte for byte (comments included), so a user starts from a known-good recipe and sees
why each value is what it is. A whole recipe copied into a folder takes its family's pipeline.yaml along (and
the files of the stages it pins), so `alignkit run --recipe DIR` runs the copy's stages. Nothing is ever
overwritten. Light: yaml and pydantic only.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import Problem, UserError
from alignkit.library.lookup import find, method_file

SOURCE = "alignkit recipes cp"


@dataclass(frozen=True)
class CopiedFile:
    """One recipe file written by `copy_recipe`."""

    method: str | None
    """The method the file trains; None for a pipeline.yaml."""
    source: Path
    dest: Path

    @property
    def command(self) -> str:
        if self.method is None:
            # The trailing slash keeps a folder named like a library recipe from being taken for it.
            return f"alignkit run --recipe {shlex.quote(str(self.dest.parent) + '/')}"
        return f"alignkit {self.method} --recipe {shlex.quote(str(self.dest))}"


def copy_recipe(name: str, dest: str | Path, method: str | None = None) -> list[CopiedFile]:
    """Copy a registry recipe's files to `dest` for editing; nothing is overwritten.

    `dest` is a file (`*.yaml`) when one method is copied, else a folder that receives `<method>.yaml` per
    method (the registry's own layout, so the folder can become a recipe of its own).

    Raises:
        UserError: unknown recipe or method, a file destination for several methods, or an existing file.
    """
    entry = find(name, source=SOURCE)
    if method is not None:
        method_file(entry, method, source="--method")
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
        if method is None:
            plan += _pipeline_files(name, target, plan)
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


def _pipeline_files(name: str, target: Path, plan: list[CopiedFile]) -> list[CopiedFile]:
    """The family's pipeline.yaml and the stage files it needs beyond `plan`; none when a stage's file would
    take the place of another one already copied (a variant whose pipeline pins the base recipe)."""
    from alignkit.pipeline.spec import PIPELINE_FILE, family, has_pipeline, load_pipeline, pipeline_file, stage_recipe

    if not has_pipeline(name):
        return []
    planned = {c.dest: c.source for c in plan}
    extra = []
    for stage in load_pipeline(name).flat:
        recipe = stage_recipe(stage, name)
        if family(recipe) != family(name):
            continue  # a stage pinned to another family keeps running the library's recipe
        variant = recipe.partition(":")[2] if stage.recipe is not None else ""
        dest = target / (f"{stage.method}.{variant}.yaml" if variant else f"{stage.method}.yaml")
        source = method_file(find(recipe, source=SOURCE), stage.method, source=SOURCE)
        if planned.get(dest, source) != source:
            return []
        if dest not in planned:
            planned[dest] = source
            extra.append(CopiedFile(stage.method, source, dest))
    return [*extra, CopiedFile(None, pipeline_file(name), target / PIPELINE_FILE)]
