"""The recipe registry, discovered from `configs/recipes/<name>/<stage>.yaml` (no hand-kept list); a stage is a
training method or `sample` (alignkit.stages).

A variant of a recipe lives beside it as `<method>.<variant>.yaml` and is named `<name>:<variant>`
(`zephyr-7b-beta:qlora`). Listing reads only each file's few metadata keys, so it stays fast. A folder of the
user's laid out the same way (what `alignkit recipes cp NAME DIR/` writes) is a recipe too, named after the
folder (`folder_entry`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from alignkit.stages import STAGE_KINDS

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SIZE = re.compile(r"(?<![\w.])(\d+x)?\d+(\.\d+)?[bm](?![a-z])", re.IGNORECASE)


def configs_dir() -> Path:
    """The folder holding recipes and launch profiles (inside the wheel, or at the top of a checkout)."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "configs"
    if packaged.is_dir():
        return packaged
    return package.parent / "configs"


@dataclass(frozen=True)
class RecipeEntry:
    """One named recipe (or variant) and the method files it has."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    description: str = ""
    base_model: str = ""
    gpus: int = 1
    nodes: int = 1
    profile: str = "none"

    @property
    def methods(self) -> list[str]:
        return [m for m in STAGE_KINDS if m in self.files]

    @property
    def size(self) -> str:
        match = _SIZE.search(self.base_model.rsplit("/", 1)[-1]) or _SIZE.search(self.name)
        if not match:
            return "-"
        size = match.group(0)
        return size[:-1] + size[-1].upper()  # 8x22B, 1.7B, 360M


@cache
def discover(root: Path | None = None) -> dict[str, RecipeEntry]:
    """Every recipe under `root/recipes`, by name, sorted."""
    recipes_root = (root or configs_dir()) / "recipes"
    found: dict[str, dict[str, Path]] = {}
    if recipes_root.is_dir():
        for path in sorted(recipes_root.glob("*/*.yaml")):
            method, _, variant = path.stem.partition(".")
            if method not in STAGE_KINDS:
                continue
            name = path.parent.name + (f":{variant}" if variant else "")
            found.setdefault(name, {})[method] = path
    return {name: _entry(name, files) for name, files in sorted(found.items())}


def folder_name(folder: Path) -> str:
    """The recipe name of a folder: its own name (`my-zephyr/` -> `my-zephyr`)."""
    return folder.expanduser().resolve().name or str(folder)


def folder_entry(folder: Path) -> RecipeEntry:
    """A recipe folder outside the library: its `<method>.yaml` files (no variants), named after the folder."""
    # Only the files: their contents are the user's, read and checked when a stage is resolved.
    files = {m: folder / f"{m}.yaml" for m in STAGE_KINDS if (folder / f"{m}.yaml").is_file()}
    return RecipeEntry(name=folder_name(folder), files=files)


def file_name(path: Path) -> str:
    """The recipe name of a file: its stem, or for a library-style `<method>[.<variant>].yaml` its folder's name
    (`my-zephyr/sft.yaml` -> `my-zephyr`, so its run is not called `sft-sft`)."""
    method, _, variant = path.stem.partition(".")
    if method not in STAGE_KINDS:
        return path.stem
    return folder_name(path.parent) + (f":{variant}" if variant else "")


def _entry(name: str, files: dict[str, Path]) -> RecipeEntry:
    first = files[next(m for m in STAGE_KINDS if m in files)]
    try:
        data = yaml.load(first.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError:
        data = {}
    model = data.get("model") or {}
    launch = data.get("launch") or {}
    return RecipeEntry(
        name=name,
        files=files,
        description=str(data.get("description", "")),
        base_model=str(model.get("name_or_path", "")),
        gpus=int(launch.get("gpus", 1)),
        nodes=int(launch.get("nodes", 1)),
        profile=str(launch.get("profile", "none")),
    )


def suggest(name: str, names: list[str]) -> list[str]:
    """Registry names closest to a mistyped one."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    # A near-certain match (a letter or two off) is the answer; the library's many similar names
    # (zephyr-7b-beta, zephyr-7b-beta:qlora, zephyr-7b-gemma) would only add noise after it.
    if close and difflib.SequenceMatcher(None, name, close[0]).ratio() >= 0.9:
        return close[:1]
    return close
