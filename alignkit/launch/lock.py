"""The lock that keeps two runs out of one output directory: `OUT/.alignkit.lock`, created atomically.

The lock file records the process id and host of the run holding it. A second run started into the same
folder is refused (exit 2) with both; a lock left behind by a process that is gone (same host, no such
process; or an earlier incarnation of the same Slurm job, requeued onto another node) is taken over with a
notice. Only the launcher takes it (machine rank 0): the workers it starts train under its lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from alignkit.errors import Problem, UserError

LOCK_FILE = ".alignkit.lock"
_BEING_WRITTEN_SECONDS = 10
"""A lock file not yet holding its record is taken for one being written this long, then for a dead one."""


def _not_a_folder(out: Path) -> Problem:
    return Problem(source=str(out), message="is a file, not a folder; choose another --output-dir")


def make_output_folder(out: Path) -> bool:
    """Create the output folder and its parents; False when it was there already.

    Raises:
        UserError: the folder cannot exist there (a file in its place or above it, no permission, a
            read-only or virtual file system), naming the path.
    """
    if out.is_dir():
        return False
    if out.is_symlink() and not out.exists():
        message = f"is a symbolic link to {os.readlink(out)}, which does not exist; choose another --output-dir"
        raise UserError(Problem(source=str(out), message=message))
    if out.exists():
        raise UserError(_not_a_folder(out))
    blocker = next((parent for parent in out.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(
            Problem(source=str(out), message=f"cannot be a folder: {blocker} is a file; choose another --output-dir")
        )
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        if out.is_dir():
            return False  # made by another process meanwhile: the launcher of another machine, on a shared disk
        raise UserError(_not_a_folder(out)) from None
    except OSError as err:
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
        raise UserError(
            Problem(
                source=str(out),
                message=f"cannot create this folder: {err.strerror or err}{where}; choose another --output-dir",
            )
        ) from None
    return True


@contextlib.contextmanager
def output_lock(out: Path, *, take: bool = True, echo=print) -> Iterator[None]:
    """Hold the lock of `out` (created if missing) for the duration; `take=False` only creates the folder."""
    created = make_output_folder(out)
    path = out / LOCK_FILE
    mine = _acquire(path, echo) if take else None
    try:
        yield
    finally:
        if mine is not None:
            _release(path, mine)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when the run left nothing in the folder it made


def _record() -> dict:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return record


def _acquire(path: Path, echo) -> dict:
    mine = _record()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path)
            if _held(path, holder, mine):
                raise UserError(_refusal(path, holder)) from None
            if holder is not None:
                echo(
                    f"note: {path.parent}: taking over the lock of process {holder.get('pid')} on"
                    f" {holder.get('host')}, which is gone"
                )
            path.unlink(missing_ok=True)
            continue
        except OSError as err:
            raise UserError(
                Problem(source=str(path.parent), message=f"cannot write in this folder: {err.strerror or err}")
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(mine, handle)
        return mine
    raise UserError(_refusal(path, _read(path)))


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _held(path: Path, holder: dict | None, mine: dict) -> bool:
    """Whether the lock's holder may still be running (anything we cannot rule out counts as running)."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime < _BEING_WRITTEN_SECONDS
        except FileNotFoundError:
            return False
    if mine.get("slurm_job") and holder.get("slurm_job") == mine["slurm_job"]:
        return False  # this job, requeued: its earlier incarnation was stopped
    if holder.get("host") != mine["host"] or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refusal(path: Path, holder: dict | None) -> Problem:
    who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
    since = f", started {holder['started_at']}" if holder and holder.get("started_at") else ""
    return Problem(
        source=str(path.parent),
        message=f"another alignkit run ({who}{since}) is training into this folder; wait for it to end or choose"
        f" another --output-dir (if that process is gone, delete {path})",
    )


def _release(path: Path, mine: dict) -> None:
    if _read(path) == mine:
        path.unlink(missing_ok=True)
