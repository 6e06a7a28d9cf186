"""Replacing a run with `--overwrite` without losing it to a bad input: the old run is moved aside, not deleted.

Its files go into `OUT.replaced-<time>` beside the output folder. The new run's main process deletes that
folder once training has begun (every input has then been read and accepted); when the new run fails before
that, the launcher puts the old files back. The output folder itself stays, with its lock.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from alignkit.errors import Problem, UserError
from alignkit.launch.lock import LOCK_FILE

REPLACING = "replacing"
"""The run file's key naming the folder the replaced run waits in, until the new run's training begins."""


def move_aside(out: Path) -> Path:
    """Move the run in `out` (all but the lock) into a new folder beside it and return that folder."""
    real = out.resolve()
    aside = real.with_name(f"{real.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        aside.mkdir()
    except OSError as err:
        raise UserError(
            Problem(source=str(out), message=f"cannot move the old run aside into {aside}: {err.strerror or err}")
        ) from None
    moved = []
    try:
        for entry in _entries(real):
            entry.rename(aside / entry.name)
            moved.append(entry.name)
    except OSError as err:
        for name in moved:
            (aside / name).rename(real / name)
        aside.rmdir()
        raise UserError(
            Problem(source=str(out), message=f"cannot move the old run aside into {aside}: {err.strerror or err}")
        ) from None
    return aside


def put_back(out: Path, aside: Path) -> None:
    """Undo `move_aside`: drop what the new run wrote and return the old run's files."""
    real = out.resolve()
    for entry in _entries(real):
        _remove(entry)
    for entry in list(aside.iterdir()):
        entry.rename(real / entry.name)
    aside.rmdir()


def drop_replaced(aside: str | Path | None) -> bool:
    """Delete the old run kept aside, once the new one trains; True when there was one."""
    if not aside or not Path(aside).is_dir():
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _entries(folder: Path) -> list[Path]:
    return [entry for entry in folder.iterdir() if entry.name != LOCK_FILE]


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
