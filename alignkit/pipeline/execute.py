"""`alignkit run --recipe NAME`: a family's stages (pipeline.yaml) or a scan's points (`NAME:scan`), in order.

Every stage or point is planned up front (recipe resolved and validated, launch plan computed) before
anything trains, so a bad override or launch flag in the last one fails in seconds, not after the first.
Those whose output_dir holds a finished run are skipped; the first unfinished one resumes (from its last
checkpoint when it has one, as `alignkit <method>` does) and the rest follow. `--overwrite` retrains them
all. A finished stage that starts from a stage about to run again would be stale, and one whose frozen
recipe differs from what this run gives it (a changed `--set`) would be skipped unchanged: both are refused
up front rather than silently kept. Each one goes through alignkit.launch.start.start_training, the same path as the
method commands: protected output dir, frozen recipe, in-process or spawned workers. Light: no torch until
something trains.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import Problem, RunError, UserError
from alignkit.launch.plan import LaunchOptions, LaunchPlan, plan_launch
from alignkit.pipeline.scan import is_scan, plan_scan
from alignkit.pipeline.spec import PlannedStage, describe, load_pipeline, plan_pipeline
from alignkit.recipe.mirrors import unused_notices
from alignkit.run_record import changes_since, is_finished
from alignkit.stages import is_training, start_stage


@dataclass(frozen=True)
class PipelineRun:
    """A planned pipeline or scan: its stages (a scan's points), their launch plans, and which ones train."""

    name: str
    description: str
    stages: list[PlannedStage]
    launches: list[LaunchPlan | None]
    """Per stage: its launch plan (None for a stage that trains nothing, such as sample)."""
    runs: list[bool]
    """Per stage: whether it trains (unfinished, or --overwrite)."""
    notices: list[str]
    kind: str = "pipeline"
    """`pipeline` (stages, each may start from an earlier one) or `scan` (independent points of a grid)."""

    @property
    def unit(self) -> str:
        return "point" if self.kind == "scan" else "stage"


def plan_run(
    name: str,
    options: LaunchOptions,
    *,
    qlora: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    output_root: str | Path | None = None,
    mirrors: dict[str, str] | None = None,
    overwrite: bool = False,
) -> PipelineRun:
    """Resolve every stage (or scan point) and its launch plan, and decide which ones train.

    Raises:
        UserError: no pipeline or scan, a bad override or launch flag anywhere, or a finished stage that
            would be left stale behind one that trains again.
    """
    if is_scan(name):
        scan, stages = plan_scan(name, qlora=qlora, overrides=overrides, output_root=output_root, mirrors=mirrors)
        kind, description = "scan", scan.description
    else:
        description = load_pipeline(name).description
        stages = plan_pipeline(name, qlora=qlora, overrides=overrides, output_root=output_root, mirrors=mirrors)
        kind = "pipeline"
    launches = [plan_launch(s.resolved.recipe, options) if is_training(s.method) else None for s in stages]
    runs = [overwrite or not stage.finished for stage in stages]
    _refuse_changed(stages, runs, "point" if kind == "scan" else "stage")
    _refuse_stale(stages, runs)
    if kind == "scan":
        # Every point of one recipe says the same (a --qlora change, a mirror): once per recipe is enough.
        notices = list(dict.fromkeys(f"{s.recipe_name}: {n}" for s in stages for n in s.resolved.notices))
    else:
        notices = [f"{stage.name}: {notice}" for stage in stages for notice in stage.resolved.notices]
    if mirrors:
        notices += unused_notices(mirrors, set().union(*(stage.resolved.mirrored for stage in stages)))
    return PipelineRun(name, description, stages, launches, runs, notices, kind)


def _refuse_changed(stages: list[PlannedStage], runs: list[bool], unit: str) -> None:
    """A finished stage would be skipped; refuse when its frozen recipe differs from what this run asks for."""
    problems = []
    for stage, trains in zip(stages, runs, strict=True):
        changed = None if trains else changes_since(stage.output_dir, stage.resolved.recipe)
        if changed:
            problems.append(
                Problem(
                    source=str(stage.output_dir),
                    message=f"{unit} {stage.name} is finished, but with other settings than this run gives it"
                    f" (changed: {', '.join(changed)}), so it would be skipped unchanged; pass --overwrite to"
                    f" retrain every {unit}, remove {stage.output_dir} to retrain it, or rerun without the change",
                )
            )
    if problems:
        raise UserError(problems)


def _refuse_stale(stages: list[PlannedStage], runs: list[bool]) -> None:
    by_name = {stage.name: index for index, stage in enumerate(stages)}
    problems = []
    for index, stage in enumerate(stages):
        if runs[index]:
            continue
        source = _rerun_source(stage, stages, runs, by_name)
        if source is not None:
            problems.append(
                Problem(
                    source=str(stage.output_dir),
                    message=f"stage {stage.name} is finished, but it {_reads(stage, source)} stage {source}, which"
                    f" has not finished and trains now, so {stage.name} would be stale; pass --overwrite to retrain"
                    f" every stage, or remove {stage.output_dir} to retrain it after {source}",
                )
            )
    if problems:
        raise UserError(problems)


def _reads(stage: PlannedStage, source: str) -> str:
    return "starts from" if source == stage.from_stage else "builds on"


def _rerun_source(stage: PlannedStage, stages: list[PlannedStage], runs: list[bool], by_name) -> str | None:
    """The first stage `stage` reads from, directly or through finished stages, that runs again; else None."""
    pending, seen = list(stage.sources), set()
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if runs[by_name[name]]:
            return name
        pending += list(stages[by_name[name]].sources)
    return None


def document(planned: PipelineRun) -> dict[str, Any]:
    """The JSON document of `alignkit run --dry-run --json`."""
    if planned.kind == "scan":
        entries = [
            {
                "point": int(s.name),
                "method": s.method,
                "recipe": s.recipe_name,
                "settings": list(s.settings),
                "output_dir": str(s.output_dir),
                "command": s.command,
                "finished": s.finished,
            }
            for s in planned.stages
        ]
    else:
        entries = describe(planned.stages)
    for entry, launch, runs in zip(entries, planned.launches, planned.runs, strict=True):
        entry["runs"] = runs
        entry["launch"] = launch.as_dict() if launch is not None else None
    upcoming = _next(planned)
    return {
        planned.kind: planned.name,
        "description": planned.description,
        "next": int(upcoming) if planned.kind == "scan" and upcoming else upcoming,
        f"{planned.unit}s": entries,
        "notices": planned.notices,
    }


def _next(planned: PipelineRun) -> str | None:
    return next((stage.name for stage, runs in zip(planned.stages, planned.runs, strict=True) if runs), None)


def print_plan(planned: PipelineRun, *, as_json: bool, echo) -> None:
    """Print the stage (or point) table, or the JSON document, of a dry run."""
    if as_json:
        echo(json.dumps(document(planned), indent=2))
        return
    from rich.table import Table

    from alignkit.terminal import output_console

    console = output_console()
    title = f"{planned.kind} {planned.name}" + (f": {planned.description}" if planned.description else "")
    table = Table(title=title, title_justify="left")
    scan = planned.kind == "scan"
    columns = ("recipe", "settings") if scan else ("method", "recipe", "model")
    for column in (planned.unit, *columns, "output dir", "launch", "status"):
        table.add_column(column, overflow="fold")
    for stage, launch, runs in zip(planned.stages, planned.launches, planned.runs, strict=True):
        if scan:
            cells = (stage.recipe_name, " ".join(stage.settings))
        else:
            model = f"{stage.from_stage} output" if stage.from_stage else stage.model
            cells = (stage.method, stage.recipe_name, model)
        verb = "train" if is_training(stage.method) else "run"
        status = (f"{verb} again (--overwrite)" if stage.finished else verb) if runs else "finished, skipped"
        launched = f"{launch.profile}, {launch.world_size} process(es)" if launch is not None else "-"
        table.add_row(stage.name, *cells, str(stage.output_dir), launched, status)
    console.print(table)
    upcoming = _next(planned)
    if upcoming is None:
        console.print(f"[green]dry run: every {planned.unit} is finished; nothing to train.[/green]")
        return
    console.print(f"[green]dry run: every {planned.unit} valid; next: {upcoming}.[/green]")
    if scan:
        trained = sum(planned.runs)
        console.print(f"{trained} of {len(planned.stages)} points train, one after another; point {upcoming} alone:")
        console.print(planned.stages[int(upcoming) - 1].command, markup=False, highlight=False, soft_wrap=True)


def execute(planned: PipelineRun, options: LaunchOptions, *, overwrite: bool, argv: list[str], echo) -> None:
    """Train the stages (or points) that need it, in order, each through alignkit.launch.start.start_training.

    Raises:
        UserError, RunError: from one run; the ones before it stay finished, so a rerun resumes there.
    """
    total = len(planned.stages)
    for stage, launch, runs in zip(planned.stages, planned.launches, planned.runs, strict=True):
        label = f"{planned.unit} {stage.name}" + (f"/{total}" if planned.kind == "scan" else "")
        if not runs:
            echo(f"{label}: finished, skipped")
            continue
        start = f", from stage {stage.from_stage}" if stage.from_stage else ""
        reads = [s for s in stage.sources if s != stage.from_stage]
        start += f", reading stage {', '.join(reads)}" if reads else ""
        settings = f", {' '.join(stage.settings)}" if stage.settings else ""
        echo(f"{label}: {stage.method} with recipe {stage.recipe_name}{start}{settings} -> {stage.output_dir}")
        # A scan point's run file records its own command, the one that reproduces this point alone.
        command = shlex.split(stage.command) if stage.command else argv
        start_stage(stage.resolved, launch, options, overwrite=overwrite, argv=command, echo=echo)
        # A later stage loads this output: make sure the run really finished (machine 0 writes the flag).
        if options.machine_rank == 0 and not is_finished(stage.output_dir):
            raise RunError(f"{label} ended without marking {stage.output_dir} finished; rerun to resume")
    echo(f"{planned.kind} {planned.name}: all {total} {planned.unit}s finished")
