"""`alignkit slurm` and `alignkit dstack`: write (and optionally submit) the job files that run a recipe on a
cluster, one alignkit process per node (a training method) or one on a single node (`sample`)."""

from __future__ import annotations

from typing import Annotated

import typer

from alignkit.cli.options import (
    LaunchOption,
    OutputDirOption,
    QloraOption,
    RecipeOption,
    SetOption,
    print_notices,
)
from alignkit.errors import UserError
from alignkit.stages import STAGE_KINDS, known_stage

# A job runs any stage kind: the training methods, and the stages that make data (sample).
StageArgument = Annotated[str, typer.Argument(help=f"What the job runs: {', '.join(STAGE_KINDS)}.")]

# Not the training commands' --overwrite (replace a finished run): here it replaces the job file.
JobFileOverwrite = Annotated[bool, typer.Option("--overwrite", help="Replace job files that exist already.")]


def check_stage(method: str) -> None:
    """Refuse a stage kind alignkit does not offer (exit 2), naming the choices."""
    try:
        known_stage(method)
    except ValueError as err:
        raise UserError(str(err), source="--method") from None


def slurm(
    method: StageArgument,
    recipe: RecipeOption,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes to allocate.")],
    gpus_per_node: Annotated[
        int, typer.Option("--gpus-per-node", help="GPUs per node (a training method starts one process per GPU).")
    ],
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.")] = None,
    time: Annotated[str | None, typer.Option("--time", help="Time limit, e.g. 2-00:00:00.")] = None,
    launch: LaunchOption = None,
    output: Annotated[str | None, typer.Option("--output", help="Script to write (default: <job>.sbatch).")] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Submit the script with sbatch.")] = False,
    overwrite: JobFileOverwrite = False,
    qlora: QloraOption = False,
    overrides: SetOption = None,
    output_dir: OutputDirOption = None,
) -> None:
    """Write an sbatch script that runs a recipe on Slurm nodes (one alignkit per node through srun; sample: one
    process on one node).

    Examples:

      [cyan]alignkit slurm sft --recipe zephyr-7b-gemma --nodes 2 --gpus-per-node 8 --partition gpu[/cyan]

      [cyan]alignkit slurm sample --recipe my_sample.yaml --nodes 1 --gpus-per-node 2[/cyan]
    """
    from pathlib import Path

    from alignkit.launch.job import JobSpec, plan_job
    from alignkit.launch.slurm import SlurmOptions, check_options, submit_script, write_script

    check_stage(method)
    options = SlurmOptions(partition=partition, time=time)
    check_options(options)
    spec = JobSpec(
        method=method,
        recipe=recipe,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        launch=launch,
        qlora=qlora,
        overrides=tuple(overrides or ()),
        output_dir=output_dir,
    )
    job = plan_job(spec)
    print_notices([*job.resolved.notices, *job.notices])
    path = write_script(job, options, Path(output or f"{job.name}.sbatch"), overwrite=overwrite)
    plan = job.plan
    if plan is None:
        typer.echo(f"wrote {path}: 1 node x {gpus_per_node} GPU(s), one alignkit {method} process")
    else:
        typer.echo(
            f"wrote {path}: {nodes} node(s) x {gpus_per_node} GPU(s), profile {plan.profile},"
            f" effective batch {plan.effective_batch_size}"
        )
    if submit:
        typer.echo(f"submitted job {submit_script(path)}")
    else:
        typer.echo(f"submit it with: sbatch {path}")


def dstack(
    method: StageArgument,
    recipe: RecipeOption,
    gpu: Annotated[str, typer.Option("--gpu", help="dstack GPU spec per node, e.g. H100:8 or 24GB..:1.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes (a fleet file is written for more than one).")] = 1,
    launch: LaunchOption = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Task file to write (default: <job>.dstack.yml).")
    ] = None,
    do_apply: Annotated[bool, typer.Option("--apply", help="Run `dstack apply` on the written files.")] = False,
    overwrite: JobFileOverwrite = False,
    qlora: QloraOption = False,
    overrides: SetOption = None,
    output_dir: OutputDirOption = None,
) -> None:
    """Write a dstack task (and a fleet for several nodes) that installs alignkit and runs a recipe (sample: one
    process on one node).

    Examples:

      [cyan]alignkit dstack sft --recipe zephyr-7b-gemma --gpu H100:8 --nodes 2 --apply[/cyan]

      [cyan]alignkit dstack sample --recipe my_sample.yaml --gpu H100:2[/cyan]
    """
    from pathlib import Path

    from alignkit.launch.dstack import apply, plan_dstack, write_files

    check_stage(method)
    job = plan_dstack(
        method,
        recipe,
        gpu=gpu,
        nodes=nodes,
        launch=launch,
        qlora=qlora,
        overrides=tuple(overrides or ()),
        output_dir=output_dir,
    )
    print_notices([*job.resolved.notices, *job.notices])
    files = write_files(job, gpu, Path(output) if output else None, overwrite=overwrite)
    for path in (files.fleet, files.task):
        if path is not None:
            typer.echo(f"wrote {path}")
    if do_apply:
        apply(files)
    else:
        first = f"dstack apply -f {files.fleet} && " if files.fleet else ""
        typer.echo(f"run it with: {first}dstack apply -f {files.task}")
