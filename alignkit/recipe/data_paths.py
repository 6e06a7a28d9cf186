"""Local data paths made absolute, so a recipe means the same files from any directory.

A relative `data.datasets[*].path` or `data.decontaminate` entry in a recipe file is taken from the file's
folder, as a mirror file's targets are, so a recipe can travel with its data beside it. When the file's
folder has no such path but the current directory does, the current directory's is taken (recipes written
before this rule, such as one copied from the offline demo, keep working). A library recipe's relative paths
are the current directory's: the library holds no data. A `--set` path is the current directory's, like any
path typed in a shell. The result is absolute, so the frozen recipe (`alignkit_recipe.yaml`) and the model
card's "Reproduce" command work from anywhere.

A dataset path that exists in none of those folders and does not look like a file (`org/name`) is a Hub id
and stays as written. Fields of the wrong type are left alone: validation reports them. Light: no datasets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alignkit.data.sources import looks_local


def absolute_data_paths(raw: dict[str, Any], bases: list[Path]) -> dict[str, Any]:
    """`raw` (a recipe not yet validated) with its relative local data paths made absolute against `bases`.

    The first base that holds a path wins; a local-looking path found in none is taken from the first base.
    """
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    data = dict(data)
    sources = data.get("datasets")
    if isinstance(sources, list):
        data["datasets"] = [
            {**source, "path": _absolute(source["path"], bases, hub_ids=True)}
            if isinstance(source, dict) and isinstance(source.get("path"), str)
            else source
            for source in sources
        ]
    benchmarks = data.get("decontaminate")
    if isinstance(benchmarks, list):
        data["decontaminate"] = [_absolute(b, bases, hub_ids=False) if isinstance(b, str) else b for b in benchmarks]
    return {**raw, "data": data}


def _absolute(path: str, bases: list[Path], *, hub_ids: bool) -> str:
    if not path.strip():
        return path  # validation refuses an empty path with its own message
    try:
        given = Path(path).expanduser()
    except RuntimeError:  # `~someone` with no such user: the data layer says the path is not found
        return path
    if given.is_absolute():
        return str(given)
    # normpath, not resolve: a symlinked data folder keeps the name the user gave it.
    candidates = [os.path.normpath(base.absolute() / given) for base in bases]
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is not None:
        return found
    if hub_ids and not looks_local(path):
        return path
    return candidates[0]
