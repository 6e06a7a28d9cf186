"""`alignkit run --recipe NAME`: a recipe family's stages in order, each trained like `alignkit <method>`.

Every stage is planned up front (recipe resolved and validated, launch plan computed) before anything
trains, so a bad override or launch flag in the last stage fails in seconds, not after the first stage.
Stages whose output_dir holds a finished run are skipped; the first unfinished one resumes (from its last
checkpoint when it has one, as `alignkit <method>` does) and the rest follow. `--overwrite` retrains every
stage. A finished stage that starts from a stage about to run again would be stale, so that is refused up
front rather than silently kept. Each stage goes through alignkit.launch.run.run, the same path as the
method commands: protected output dir, frozen recipe, in-process or spawned workers. Light: no torch until
a stage trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import Problem, RunError, UserError
from alignkit.launch.plan import LaunchOptions, LaunchPlan, plan_launch
from alignkit.pipeline import PlannedStage, describe, is_finished, load_pipeline, plan_pipeline
from alignkit.recipe.mirrors import unused_notices


@dataclass(frozen=True)
class PipelineRun:
    """A planned pipeline: its stages, each stage's launch plan, and which stages will train."""

    name: str
    description: str
    stages: list[PlannedStage]
    launches: list[LaunchPlan]
    runs: list[bool]
    """Per stage: whether it trains (unfinished, or --overwrite)."""
    notices: list[str]


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
    """Resolve every stage and its launch plan, and decide which stages train.

    Raises:
        UserError: no pipeline, a bad override or launch flag in any stage, or a finished stage that would
            be left stale behind one that trains again.
    """
    spec = load_pipeline(name)
    stages = plan_pipeline(name, qlora=qlora, overrides=overrides, output_root=output_root, mirrors=mirrors)
    launches = [plan_launch(stage.resolved.recipe, options) for stage in stages]
    runs = [overwrite or not stage.finished for stage in stages]
    _refuse_stale(stages, runs)
    notices = [f"{stage.name}: {notice}" for stage in stages for notice in stage.resolved.notices]
    if mirrors:
        notices += unused_notices(mirrors, set().union(*(stage.resolved.mirrored for stage in stages)))
    return PipelineRun(name, spec.description, stages, launches, runs, notices)


def _refuse_stale(stages: list[PlannedStage], runs: list[bool]) -> None:
    by_name = {stage.name: index for index, stage in enumerate(stages)}
    problems = []
    for index, stage in enumerate(stages):
        if runs[index]:
            continue
        source = stage.from_stage
        while source is not None and not runs[by_name[source]]:
            source = stages[by_name[source]].from_stage
        if source is not None:
            problems.append(
                Problem(
                    source=str(stage.output_dir),
                    message=f"stage {stage.name} is finished, but it starts from stage {source}, which has not"
                    f" finished and trains now, so {stage.name} would be stale; pass --overwrite to retrain"
                    f" every stage, or remove {stage.output_dir} to retrain it after {source}",
                )
            )
    if problems:
        raise UserError(problems)


def document(planned: PipelineRun) -> dict[str, Any]:
    """The JSON document of `alignkit run --dry-run --json`."""
    stages = describe(planned.stages)
    for entry, launch, runs in zip(stages, planned.launches, planned.runs, strict=True):
        entry["runs"] = runs
        entry["launch"] = launch.as_dict()
    return {
        "pipeline": planned.name,
        "description": planned.description,
        "next": _next(planned),
        "stages": stages,
        "notices": planned.notices,
    }


def _next(planned: PipelineRun) -> str | None:
    return next((stage.name for stage, runs in zip(planned.stages, planned.runs, strict=True) if runs), None)


def print_plan(planned: PipelineRun, *, as_json: bool, echo) -> None:
    """Print the stage table (or the JSON document) of a dry run."""
    if as_json:
        echo(json.dumps(document(planned), indent=2))
        return
    from rich.table import Table

    from alignkit.terminal import output_console

    console = output_console()
    title = f"pipeline {planned.name}" + (f": {planned.description}" if planned.description else "")
    table = Table(title=title, title_justify="left")
    for column in ("stage", "method", "recipe", "model", "output dir", "launch", "status"):
        table.add_column(column, overflow="fold")
    for stage, launch, runs in zip(planned.stages, planned.launches, planned.runs, strict=True):
        model = f"{stage.from_stage} output" if stage.from_stage else stage.model
        status = ("retrain (--overwrite)" if stage.finished else "train") if runs else "finished, skipped"
        table.add_row(
            stage.name,
            stage.method,
            stage.recipe_name,
            model,
            str(stage.output_dir),
            f"{launch.profile}, {launch.world_size} process(es)",
            status,
        )
    console.print(table)
    upcoming = _next(planned)
    console.print(
        f"[green]dry run: every stage valid; next: {upcoming}.[/green]"
        if upcoming
        else "[green]dry run: every stage is finished; nothing to train.[/green]"
    )


def execute(planned: PipelineRun, options: LaunchOptions, *, overwrite: bool, argv: list[str], echo) -> None:
    """Train the stages that need it, in order, each through alignkit.launch.run.run.

    Raises:
        UserError, RunError: from a stage's run; the stages before it stay finished, so a rerun resumes there.
    """
    from alignkit.launch.run import run

    for stage, launch, runs in zip(planned.stages, planned.launches, planned.runs, strict=True):
        if not runs:
            echo(f"stage {stage.name}: finished, skipped")
            continue
        start = f", from stage {stage.from_stage}" if stage.from_stage else ""
        echo(f"stage {stage.name}: {stage.method} with recipe {stage.recipe_name}{start} -> {stage.output_dir}")
        run(stage.resolved, launch, options, overwrite=overwrite, argv=argv, echo=echo)
        # The next stage loads this output: make sure the run really finished (machine 0 writes the flag).
        if options.machine_rank == 0 and not is_finished(stage.output_dir):
            raise RunError(f"stage {stage.name} ended without marking {stage.output_dir} finished; rerun to resume")
    echo(f"pipeline {planned.name}: all {len(planned.stages)} stages finished")
