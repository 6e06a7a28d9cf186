"""Starting the workers of a multi-process run through accelerate's Python API.

The parent writes the accelerate config (and DeepSpeed JSON) generated from the launch plan into
`OUTPUT_DIR/launch/node<machine rank>/`, then calls accelerate's own launch command in-process, which runs
torch's elastic agent: one worker per process, each `python -m alignkit.train.worker OUTPUT_DIR`. Worker
output reaches the console line by line, prefixed with the global rank (`[rank1] ...`), and is kept per rank
under `logs/`. When a worker dies the agent stops the others (SIGTERM, then SIGKILL after 30 s) and this
module raises one error naming that rank and its last error line, so a launch never hangs on a dead peer.
That error is the only account of the failure on the console: workers report theirs through their error
file (alignkit.launch.worker_errors), and the agent's own log lines go to `launcher.log` beside the logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from alignkit.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, Interrupted, Problem, RunError, UserError
from alignkit.launch.plan import LaunchPlan
from alignkit.launch.profiles import write_launch_files
from alignkit.launch.worker_errors import failed_at, message_lines
from alignkit.run_record import rank_log

WORKER_MODULE = "alignkit.train.worker"
LAUNCH_FOLDER = "launch"
"""The output folder's subfolder of launch files and worker logs, one folder per machine inside."""
_PREFIX_TEMPLATE = "[rank${rank}] "
_TORCH_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Failure)\b.*")


def launch_folder(output_dir: Path, plan: LaunchPlan) -> Path:
    """Where this machine's launch files and worker logs go (one folder per machine: nodes may share a disk)."""
    return Path(output_dir) / LAUNCH_FOLDER / f"node{plan.machine_rank}"


def launch_workers(
    output_dir: Path,
    plan: LaunchPlan,
    *,
    module: str | None = None,
    module_args: Sequence[str] | None = None,
) -> None:
    """Run this machine's share of the plan's workers and wait for them.

    Args:
        output_dir: the run's output directory, holding the frozen recipe; passed to every worker.
        plan: the launch plan (profile, counts, addresses).
        module: the module every worker runs with `python -m`; default: `$ALIGNKIT_WORKER_MODULE` when set
            (tests and profilers wrap the real worker this way), else `alignkit.train.worker`.
        module_args: the worker's arguments; default: the output directory.

    Raises:
        RunError: a worker failed (naming the first rank that did and its error) or the launcher could not
            start them.
        UserError: the first failing worker rejected the user's input (it exited with code 2).
    """
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    module = module or os.environ.get("ALIGNKIT_WORKER_MODULE") or WORKER_MODULE
    output_dir = Path(output_dir).resolve()
    folder = launch_folder(output_dir, plan)
    config_path = write_launch_files(plan, folder)
    logs = folder / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # only this launch's logs, so the failing rank's is unambiguous
    argv = [
        "--config_file",
        str(config_path),
        # Tee both streams: to the console, prefixed by rank, and to one file per rank under logs/.
        "--tee",
        "3",
        "--log_dir",
        str(logs),
        "--max_restarts",
        "0",
        "--module",
        module,
        *(module_args if module_args is not None else [str(output_dir)]),
    ]
    args = launch_command_parser().parse_args(argv)
    # The ranks' own logs grow across runs into the same folder; only what this launch adds speaks of it.
    earlier = {path.name: path.stat().st_size for path in output_dir.glob("alignkit*.log")}
    environment = _environment(TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE=_PREFIX_TEMPLATE, PYTHONUNBUFFERED="1")
    with environment, _agent_log(folder / "launcher.log"):
        try:
            launch_command(args)
        except ChildFailedError as err:
            raise _worker_error(err, logs, output_dir, plan, earlier) from None
        except SignalException as err:
            if err.sigval.name == "SIGINT":
                raise interrupted(output_dir) from None
            raise RunError(f"launch stopped by {err.sigval.name}; the workers were terminated") from None
        except (ValueError, ConnectionError, RuntimeError, ImportError) as err:
            raise RunError(f"could not start the workers ({plan.profile}, {plan.world_size} processes): {err}") from err


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the launcher and its workers, restoring the old values afterwards."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _agent_log(path: Path) -> Iterator[None]:
    """Send the elastic agent's log lines (which rank got which signal) to a file instead of the console."""
    logger = logging.getLogger("torch.distributed.elastic")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = (logger.handlers[:], logger.propagate)
    logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved
        handler.close()


def interrupted(output_dir: Path) -> Interrupted:
    """The error of a run stopped with Ctrl-C (exit 130): what was saved stays, so the same command resumes."""
    return Interrupted(f"interrupted; run the same command again to resume from the last checkpoint in {output_dir}")


def _worker_error(err, logs: Path, output_dir: Path, plan: LaunchPlan, earlier: dict[str, int]) -> RunError | UserError:
    """One error for a failed launch: the rank that failed first, its exit status, and its own error lines."""

    # The agent stops the survivors of a failure (SIGTERM); the root cause is a rank that exited with an error
    # of its own, else one killed by another signal (SIGABRT, SIGSEGV, the OOM killer's SIGKILL).
    def cause(item):
        rank, failure = item
        stopped = failure.exitcode < 0 and failure.signal_name() == "SIGTERM"
        return (failure.exitcode <= 0, stopped, failed_at(failure), rank)

    rank, failure = min(err.failures.items(), key=cause)
    if failure.exitcode == EXIT_INTERRUPTED or (failure.exitcode < 0 and failure.signal_name() == "SIGINT"):
        return interrupted(output_dir)
    log = _stderr_log(logs, failure.local_rank)
    own = output_dir / rank_log(rank)
    own_lines = _lines_of(own, skip=earlier.get(own.name, 0))
    lines = _error_lines(failure, log, own_lines)
    how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"signal {failure.signal_name()}"
    # The worker's own log holds its traceback; a worker that died before logging has only its stderr.
    full = own if message_lines(failure) or _error_in(own_lines) else log
    where = f"; full log: {full}" if full else ""
    if failure.exitcode == EXIT_USER_ERROR and lines:
        return UserError([Problem(source=f"rank {rank}", message=line.removeprefix("error: ")) for line in lines])
    summary = f"worker rank {rank} of {plan.world_size} failed ({how}){where}"
    return RunError("\n".join([summary, *lines]))


def _stderr_log(logs: Path, local_rank: int) -> Path | None:
    candidates = sorted(logs.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _error_lines(failure, log: Path | None, own_lines: list[str]) -> list[str]:
    """The worker's own account of its failure: the error file when it wrote one, else the error lines of its
    stderr or of its own log, else the last line of its stderr. (A rank that reported its error and then died
    of a signal at interpreter shutdown, a runtime thread aborting, leaves its error only in its own log.)"""
    reported = message_lines(failure)
    if reported:
        errors = [line for line in reported if line.startswith("error: ")]
        return errors[-10:] if errors else reported[-1:]
    stderr = _lines_of(log)
    return _error_in(stderr) or _error_in(own_lines) or stderr[-1:]


def _lines_of(path: Path | None, skip: int = 0) -> list[str]:
    """The file's non-blank lines from byte `skip` on (empty when it cannot be read)."""
    if path is None:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(skip)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # torch prefixes what a worker's uncaught exception logs with "[rankN]:"; the launcher names the rank itself.
    return [_TORCH_RANK_PREFIX.sub("", line.rstrip()) for line in text.splitlines() if line.strip()]


def _error_in(lines: list[str]) -> list[str]:
    """alignkit's own error lines, else the last exception line of a traceback; empty when there is neither."""
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-10:]
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return exceptions[-1:]
