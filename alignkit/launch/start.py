"""Starting one training run of a validated recipe: protect the output directory, freeze the recipe into it,
train (in this process, or across the plan's processes).

A finished run is never overwritten unless asked (`--overwrite`, or the recipe's
`training.overwrite_output_dir`), and even then it is only moved aside until the new run trains
(alignkit.launch.replacing); an unfinished run of the same recipe is resumed from its last complete
checkpoint; an unfinished run of a different recipe is refused with the fields that differ. The folder is
locked while a run trains in it (alignkit.launch.lock). One process trains in-process; several are started
through the launch module, each reading the frozen recipe.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from alignkit import __version__
from alignkit.errors import AlignkitError, Problem, RunError, UserError
from alignkit.files import atomic_write, partial_prefix
from alignkit.launch.lock import LOCK_FILE, output_lock
from alignkit.launch.plan import LaunchOptions, LaunchPlan
from alignkit.launch.preflight import preflight
from alignkit.launch.profiles import trainer_kwargs
from alignkit.launch.replacing import REPLACING, drop_replaced, move_aside, put_back
from alignkit.launch.spawn import LAUNCH_FOLDER
from alignkit.recipe.resolve import ResolvedRecipe
from alignkit.recipe.secrets import redact
from alignkit.recipe.yamlio import dump_yaml
from alignkit.run_record import RECIPE_FILE, RUN_FILE, RunRecord, changed_fields, checkpoints, read_info, says_finished
from alignkit.train.checkpoints import MARKS_CHECKPOINTS


def _alignkit_start(name: str) -> bool:
    """Whether `name` is what a run writes before its run record: the lock, the frozen recipe (and its
    temporary file), the launch folder. On several machines sharing one output folder, each freezes the same
    recipe there; one that has begun must not make the folder look foreign to another's check."""
    return name in (LOCK_FILE, RECIPE_FILE, LAUNCH_FOLDER) or name.startswith(
        (partial_prefix(RECIPE_FILE), partial_prefix(RUN_FILE))
    )


def prepare_output_dir(resolved: ResolvedRecipe, *, overwrite: bool) -> str:
    """Decide what to do with the output directory: "new", "resume" or "replace" (raises when it must not run)."""
    out = resolved.output_dir
    info = read_info(out)
    if info is None:
        if out.exists() and (not out.is_dir() or any(not _alignkit_start(p.name) for p in out.iterdir())):
            raise UserError(
                Problem(
                    source=str(out),
                    message="exists and holds no alignkit run; alignkit writes only into new or its own run folders:"
                    " choose another --output-dir",
                )
            )
        return "new"
    allowed = overwrite or resolved.recipe.training.overwrite_output_dir
    if says_finished(info):
        if allowed:
            return "replace"
        raise UserError(
            Problem(
                source=str(out),
                message=f"holds a finished {info.get('method', '')} run ({info.get('finished_at', 'finished')}); its"
                " files are left untouched. Pass --overwrite to replace it, or choose another --output-dir",
            )
        )
    if overwrite:
        return "replace"
    if info.get("method") != resolved.method:
        raise UserError(
            Problem(
                source=str(out),
                message=f"holds an unfinished {info.get('method')} run; pass --overwrite to start a {resolved.method}"
                " run there, or choose another --output-dir",
            )
        )
    try:
        previous = RunRecord.load(out).recipe.model_dump(mode="json")
    except (AlignkitError, OSError, ValueError):
        previous = None
    if previous is not None:
        changed = changed_fields(previous, resolved.recipe.model_dump(mode="json"))
        if changed:
            raise UserError(
                Problem(
                    source=str(out),
                    message=f"holds an unfinished run of a different recipe (changed: {', '.join(changed)}); rerun"
                    " with the same settings to resume it, pass --overwrite to start over, or choose another"
                    " --output-dir",
                )
            )
    return "resume"


def freeze(
    resolved: ResolvedRecipe, plan: LaunchPlan, argv: list[str], *, previous: dict | None, replacing: Path | None = None
) -> RunRecord:
    """Write the resolved recipe and run metadata (with the launch plan) into the output directory."""
    launch = {
        "plan": plan.as_dict(),
        # What the profile needs on the trainer's side, so the workers never consult the launch profiles.
        "trainer_kwargs": trainer_kwargs(plan),
        # A run begun before checkpoints were marked keeps judging its unmarked ones by their files.
        MARKS_CHECKPOINTS: previous is None or previous.get(MARKS_CHECKPOINTS) is True,
    }
    return freeze_run(resolved, argv, previous=previous, replacing=replacing, extra=launch)


def freeze_run(
    resolved: ResolvedRecipe,
    argv: list[str],
    *,
    previous: dict | None,
    replacing: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> RunRecord:
    """Write the resolved recipe and the run file of any stage into its output directory (`extra`: what the
    stage kind adds to the run file)."""
    out = resolved.output_dir
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Resolved by alignkit {__version__} for `alignkit {resolved.method}` from {resolved.source}.\n"
        f"# Re-run it with: alignkit {resolved.method} --recipe {out / RECIPE_FILE}\n"
    )
    atomic_write(out / RECIPE_FILE, header + dump_yaml(resolved.recipe.model_dump(mode="json")))
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = {
        "method": resolved.method,
        "name": resolved.name,
        "source": str(resolved.source),
        "command": [redact(part) for part in argv],
        "alignkit_version": __version__,
        **(extra or {}),
        "started_at": (previous or {}).get("started_at", now),
        "finished": False,
    }
    if previous is not None:
        info["resumed_at"] = now
    if replacing is not None:
        info[REPLACING] = str(replacing)
    run = RunRecord(output_dir=out, name=resolved.name, recipe=resolved.recipe, info=info)
    run.save_info()
    return run


def start_training(
    resolved: ResolvedRecipe,
    plan: LaunchPlan,
    options: LaunchOptions,
    *,
    overwrite: bool = False,
    argv: list[str] | None = None,
    echo=print,
) -> dict[str, Any] | None:
    """Train `resolved` as `plan` says. Returns the final metrics for an in-process run."""
    out = resolved.output_dir
    # Refused before locking (a foreign folder gets no lock file), with the dry run's checks and messages.
    for notice in preflight(resolved, overwrite=overwrite):
        echo(f"note: {notice}")
    with output_lock(out, take=plan.machine_rank == 0, echo=echo):
        action = prepare_output_dir(resolved, overwrite=overwrite)  # again, now that no other run can change it
        previous = read_info(out) if action == "resume" else None
        aside = move_aside(out) if action == "replace" else None
        if aside is not None:
            echo(f"note: replacing the run in {out} (--overwrite); it waits in {aside} until the new run trains")
        try:
            freeze(resolved, plan, list(argv or sys.argv), previous=previous, replacing=aside)
            metrics = _train(out, plan, echo=echo)
        except BaseException as err:
            if aside is not None and aside.is_dir():
                put_back(out, aside)  # failed before training began: the old run is back as it was
                echo(f"note: the new run did not start training; the old run is back in {out}")
            elif action == "new" and isinstance(err, UserError) and not checkpoints(out):
                shutil.rmtree(out, ignore_errors=True)  # bad input found late: leave nothing half written
            raise
        drop_replaced(aside)  # the main process deleted it as training began; this covers a run of no steps
        return metrics


def _train(out: Path, plan: LaunchPlan, *, echo) -> dict[str, Any] | None:
    if plan.world_size == 1 and plan.profile in ("none", "ddp"):
        return _train_in_process(out, echo=echo)
    from alignkit.launch.spawn import launch_workers

    launch_workers(out, plan)
    return None


def _train_in_process(out: Path, *, echo) -> dict[str, Any]:
    from alignkit.launch.spawn import interrupted
    from alignkit.train.worker import setup_logging, train

    log_path = setup_logging(out)
    try:
        return train(out, echo=echo)
    except AlignkitError:
        raise
    except KeyboardInterrupt:
        raise interrupted(out) from None
    except Exception as err:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
        if os.environ.get("ALIGNKIT_DEBUG") == "1":
            raise
        summary = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RunError(f"training failed: {type(err).__name__}: {summary}\nfull log: {log_path}") from None
