"""Starting one training run of a validated recipe: protect the output directory, freeze the recipe into it,
train (in this process, or across the plan's processes).

A finished run is never overwritten unless asked (`--overwrite`, or the recipe's
`training.overwrite_output_dir`); an unfinished run of the same recipe is resumed from its last checkpoint;
an unfinished run of a different recipe is refused with the fields that differ. One process trains
in-process; several are started through the launch module, each reading the frozen recipe.
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
from alignkit.files import atomic_write
from alignkit.launch.plan import LaunchOptions, LaunchPlan
from alignkit.launch.profiles import trainer_kwargs
from alignkit.recipe.resolve import ResolvedRecipe
from alignkit.recipe.yamlio import dump_yaml
from alignkit.run_record import RECIPE_FILE, RunRecord, read_info, redact, says_finished


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            changed += _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]


def prepare_output_dir(resolved: ResolvedRecipe, *, overwrite: bool) -> str:
    """Decide what to do with the output directory: "new", "resume" or "replace" (raises when it must not run)."""
    out = resolved.output_dir
    info = read_info(out)
    if info is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
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
        changed = _changed_fields(previous, resolved.recipe.model_dump(mode="json"))
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


def freeze(resolved: ResolvedRecipe, plan: LaunchPlan, argv: list[str], *, previous: dict | None) -> RunRecord:
    """Write the resolved recipe and run metadata into the output directory."""
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
        "plan": plan.as_dict(),
        # What the profile needs on the trainer's side, so the workers never consult the launch profiles.
        "trainer_kwargs": trainer_kwargs(plan),
        "started_at": (previous or {}).get("started_at", now),
        "finished": False,
    }
    if previous is not None:
        info["resumed_at"] = now
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
    action = prepare_output_dir(resolved, overwrite=overwrite)
    previous = read_info(out) if action == "resume" else None
    if action == "replace":
        echo(f"note: replacing the run in {out} (--overwrite)")
        shutil.rmtree(out)
    created = action in ("new", "replace")
    freeze(resolved, plan, list(argv or sys.argv), previous=previous)
    try:
        if plan.world_size == 1 and plan.profile in ("none", "ddp"):
            return _train_in_process(out, echo=echo)
        from alignkit.launch.spawn import launch_workers

        launch_workers(out, plan)
        return None
    except UserError:
        if created and not any(p.name.startswith("checkpoint-") for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)  # bad input found late: leave nothing half written
        raise


def _train_in_process(out: Path, *, echo) -> dict[str, Any]:
    from alignkit.train.worker import setup_logging, train

    log_path = setup_logging(out)
    try:
        return train(out, echo=echo)
    except AlignkitError:
        raise
    except KeyboardInterrupt:
        raise RunError(f"interrupted; run the same command again to resume from the last checkpoint in {out}") from None
    except Exception as err:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
        if os.environ.get("ALIGNKIT_DEBUG") == "1":
            raise
        summary = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RunError(f"training failed: {type(err).__name__}: {summary}\nfull log: {log_path}") from None
