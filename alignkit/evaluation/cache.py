"""Finished measurements kept in the eval folder, so a rerun measures only what changed.

An entry is one part (harness, generate, judge, loss) of one model, keyed by everything its result depends
on: the model's fingerprint, the part's settings, the data it reads (file fingerprints), the seed and the
versions of alignkit and the engine. Entries are written whole (atomically) as each finishes, so a killed
run keeps what it finished. `overwrite` ignores the entries found, and replaces them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.files import atomic_write

CACHE_DIR = "cache"


@dataclass(frozen=True)
class ResultCache:
    folder: Path
    overwrite: bool = False

    def path(self, part: str, model: str, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.folder / CACHE_DIR / f"{part}-{model}-{digest}.json"

    def get(self, part: str, model: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The cached result, or None (missing, unreadable, or `overwrite`)."""
        path = self.path(part, model, key)
        if self.overwrite or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry.get("result") if entry.get("key") == json.loads(json.dumps(key, default=str)) else None

    def put(self, part: str, model: str, key: dict[str, Any], result: dict[str, Any]) -> None:
        path = self.path(part, model, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"key": key, "result": result}, indent=1, default=str) + "\n")


def file_fingerprints(paths: list[str]) -> list[Any]:
    """Size and modification time of each local file or folder's files (a Hub id stands for itself)."""
    found: list[Any] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_file():
            stat = path.stat()
            found.append([text, stat.st_size, stat.st_mtime_ns])
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            found.append([text, [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]])
        else:
            found.append([text])
    return found
