"""Finding a recipe by name, folder or path: the one place that refuses an unknown recipe name, with the closest
names.

Every command that takes a recipe name (`alignkit <method>`, `run`, `recipes show`, `recipes cp`) comes
through here, so a typo reads the same everywhere and exits 2. A registry name wins over a folder of the same
name in the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from alignkit.errors import Problem, UserError
from alignkit.library import registry
from alignkit.library.registry import RecipeEntry
from alignkit.stages import STAGE_KINDS


def refuse_unknown(name: str, *, source: str = "--recipe", names: list[str] | None = None, note: str = "") -> NoReturn:
    """Raise the UserError for a recipe name that is not in the library (`names`, default: the registry's).

    `note` adds a hint after the pointer to `alignkit recipes list` (what else the flag accepts).
    """
    close = registry.suggest(name, list(registry.discover()) if names is None else names)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    where = "see `alignkit recipes list`" + (f"; {note}" if note else "")
    raise UserError(Problem(source=source, message=f"unknown recipe {name!r}{hint} ({where})"))


def find(name: str, *, source: str = "--recipe") -> RecipeEntry:
    """The registry entry of `name`; an unknown name is refused (exit 2)."""
    entries = registry.discover()
    if name not in entries:
        refuse_unknown(name, source=source)
    return entries[name]


def recipe_folder(ref: str) -> Path | None:
    """The folder a recipe reference names (`my-zephyr/`, as `alignkit recipes cp` writes one), else None."""
    if ref in registry.discover():
        return None
    path = Path(ref).expanduser()
    return path if path.is_dir() else None


def find_entry(ref: str, *, source: str = "--recipe") -> RecipeEntry:
    """The entry of a registry name or of a recipe folder; an unknown name or a folder with no recipe is refused."""
    folder = recipe_folder(ref)
    if folder is None:
        return find(ref, source=source)
    entry = registry.folder_entry(folder)
    if not entry.files:
        expected = ", ".join(f"{m}.yaml" for m in STAGE_KINDS)
        raise UserError(
            Problem(
                source=ref,
                message=f"this folder holds no recipe (none of {expected}); copy one into it with"
                f" `alignkit recipes cp NAME {ref}`, or give a recipe file",
            )
        )
    return entry


def file_methods(path: Path) -> list[str]:
    """The methods a recipe file is for, from its name (`sft.yaml`, the handbook's `sft/config.yaml`) or,
    failing that, from its method sections; empty when it says nothing."""
    from alignkit.recipe.yamlio import read_yaml_mapping

    for named in (path.stem.partition(".")[0], path.parent.name):
        if named in STAGE_KINDS:
            return [named]
    return [m for m in STAGE_KINDS if m in read_yaml_mapping(path)]


def method_file(entry: RecipeEntry, method: str, *, source: str = "--recipe", fix: str = "") -> Path:
    """The file of one method of a recipe; a recipe without that stage is refused, naming the ones it has."""
    if method not in entry.files:
        raise UserError(
            Problem(
                source=source,
                message=f"recipe {entry.name!r} has no {method} stage; it has {', '.join(entry.methods)}{fix}",
            )
        )
    return entry.files[method]


def locate(ref: str, method: str) -> tuple[str, Path]:
    """Find a recipe by registry name or path; returns (name, file)."""
    entries = registry.discover()
    if ref in entries:
        entry = entries[ref]
        return ref, method_file(entry, method, fix=f" (run `alignkit {entry.methods[0]} --recipe {ref}`)")
    if recipe_folder(ref) is not None:
        entry = find_entry(ref)
        return entry.name, method_file(entry, method, source=ref)
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in ref:
        if not path.exists():
            raise UserError(Problem(source=ref, message="recipe file not found; check the path"))
        return registry.file_name(path), path
    refuse_unknown(ref, note="a path must end in .yaml")
