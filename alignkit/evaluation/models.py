"""The fingerprint an evaluated model's cached results are keyed by (alignkit.evaluation.harness checks that
each model can load).

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

# What defines a model folder's behaviour; logs, checkpoints and cards do not.
_DEFINING = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken")
_SKIPPED_DIRS = ("checkpoint-", "runs", "logs", "eval", ".alignkit")


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
