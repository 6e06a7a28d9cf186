"""Writing files that other processes may be reading: the one atomic write every run and launch file uses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def partial_prefix(name: str) -> str:
    """How the temporary file of an atomic write of `name` begins, before it takes that name."""
    return f".{name}."


def atomic_write(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits beside the target: os.replace is atomic only within one file system.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_prefix(path.name))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
