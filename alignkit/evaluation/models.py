"""The models of an evaluation: a check that each can load, and the fingerprint its cached results are keyed by.

A model is a local folder (a model, an alignkit run's output, a LoRA adapter) or a Hub id. Its fingerprint
changes whenever its weights or tokenizer change: for a folder, the names, sizes and modification times of
the files that define it (and, for an adapter, its base's); for a Hub id, the id and revision. Light: no
torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alignkit.adapters import adapter_base
from alignkit.errors import Problem

# What defines a model folder's behaviour; logs, checkpoints and cards do not.
_DEFINING = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken")
_SKIPPED_DIRS = ("checkpoint-", "runs", "logs", "eval", ".alignkit")


def model_problem(path: str, *, source: str, where: str) -> Problem | None:
    """Why the model at `path` cannot load (a folder with neither config.json nor adapter_config.json, or a
    path that looks local and does not exist), or None. Hub ids are left to the loader."""
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file() or (local / "adapter_config.json").is_file():
            return None
        return Problem(
            source=source,
            path=where,
            message=f"{path} holds no model (no config.json or adapter_config.json); give a model folder, an"
            " alignkit run's output, a LoRA adapter folder or a Hub id",
        )
    if local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1:
        return Problem(source=source, path=where, message=f"{path}: no such model folder")
    return None


def fingerprint(path: str, revision: str = "main") -> str:
    """A short hash that changes when the model at `path` changes (see the module docstring)."""
    local = Path(path).expanduser()
    if not local.is_dir():
        return _digest({"hub": path, "revision": revision})
    parts = {"files": _files(local)}
    base = adapter_base(str(local))
    if base is not None:
        parts["base"] = fingerprint(base)
    return _digest(parts)


def _files(folder: Path) -> list[tuple[str, int, int]]:
    found = []
    for item in sorted(folder.rglob("*")):
        relative = item.relative_to(folder)
        if any(part.startswith(_SKIPPED_DIRS) for part in relative.parts[:-1]):
            continue
        if item.is_file() and item.suffix in _DEFINING:
            stat = item.stat()
            found.append((relative.as_posix(), stat.st_size, stat.st_mtime_ns))
    return found


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
