"""The training commands: one per method (`alignkit sft`, ...), built from `METHODS`, and `alignkit run` for a
recipe family's pipeline or scan.

Only flags are read here; resolving the recipe, planning the launch and training happen in `alignkit.recipe`,
`alignkit.launch` and `alignkit.pipeline`, imported inside the command so `--help` stays light.
"""

from __future__ import annotations

from typing import Annotated

import typer

from alignkit.cli.options import (
    DryRunOption,
    JsonOption,
    LaunchOption,
    MachineRank,
    MainProcessIp,
    MainProcessPort,
    MirrorOption,
    NumMachines,
    NumProcesses,
    OutputDirOption,
    OverwriteOption,
    QloraOption,
    RecipeOption,
    SetOption,
    check_json,
    command_line,
    print_notices,
    resolve_from_flags,
)
from alignkit.methods import Listing


def _launch_options(launch, num_processes, num_machines, machine_rank, main_process_ip, main_process_port):
    from alignkit.launch.plan import LaunchOptions

    return LaunchOptions(
        launch=launch,
        num_processes=num_processes,
        num_machines=num_machines,
        machine_rank=machine_rank,
        main_process_ip=main_process_ip,
        main_process_port=main_process_port,
    )


def method_command(method: Listing):
    """The `alignkit <method>` command: resolve the recipe, plan the launch, then dry-run or train."""

    def command(
        recipe: RecipeOption,
        qlora: QloraOption = False,
        overrides: SetOption = None,
        mirror: MirrorOption = None,
        output_dir: OutputDirOption = None,
        dry_run: DryRunOption = False,
        as_json: JsonOption = False,
        overwrite: OverwriteOption = False,
        launch: LaunchOption = None,
        num_processes: NumProcesses = None,
        num_machines: NumMachines = None,
        machine_rank: MachineRank = 0,
        main_process_ip: MainProcessIp = None,
        main_process_port: MainProcessPort = 29500,
    ) -> None:
        from alignkit.launch.plan import plan_launch

        check_json(as_json, dry_run)
        resolved = resolve_from_flags(
            method.name, recipe, qlora=qlora, overrides=overrides, output_dir=output_dir, mirror=mirror
        )
        options = _launch_options(launch, num_processes, num_machines, machine_rank, main_process_ip, main_process_port)
        plan = plan_launch(resolved.recipe, options)
        if dry_run:
            from alignkit.launch.dry_run import print_dry_run

            print_dry_run(resolved, plan, as_json=as_json, notices_to=print_notices, overwrite=overwrite)
            return
        print_notices(resolved.notices)
        from alignkit.launch.start import start_training

        start_training(resolved, plan, options, overwrite=overwrite, argv=command_line())

    command.__doc__ = (
        f"{method.summary}\n\nExamples:\n\n  [cyan]{method.example}[/cyan]\n\n"
        f"  [cyan]alignkit {method.name} --recipe my_{method.name}.yaml --set training.num_train_epochs=2"
        " --dry-run[/cyan]\n\n"
        f"  [cyan]alignkit {method.name} --recipe config_full.yaml --launch zero3 --num-processes 8[/cyan]"
    )
    return command


def run_stages(
    recipe: Annotated[
        str,
        typer.Option("--recipe", "-r", help="A recipe family with stages (pipeline.yaml), or NAME:scan for its scan."),
    ],
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base + LoRA in every stage.")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a field in every stage, or in one: --set STAGE:a.b=VALUE."),
    ] = None,
    mirror: MirrorOption = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir", "-o", help="Root folder: stage S writes to DIR/S, a scan point to DIR/<its folder name>."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate every stage and print the stage table; load nothing.")
    ] = False,
    as_json: JsonOption = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Retrain every stage, replacing finished runs.")
    ] = False,
    launch: LaunchOption = None,
    num_processes: NumProcesses = None,
    num_machines: NumMachines = None,
    machine_rank: MachineRank = 0,
    main_process_ip: MainProcessIp = None,
    main_process_port: MainProcessPort = 29500,
) -> None:
    """Run a recipe family's stages in order (e.g. sft then dpo from the sft output), skipping finished ones.

    With NAME:scan, run every point of the family's scan.yaml (a grid of --set overrides) one after another.
    A rerun resumes at the first unfinished stage or point.

    Examples:

      [cyan]alignkit run --recipe zephyr-7b-beta --dry-run[/cyan]

      [cyan]alignkit run --recipe zephyr-7b-beta:qlora --set dpo:dpo.beta=0.05 --output-dir runs/zephyr[/cyan]

      [cyan]alignkit run --recipe pref-align-scan:scan --dry-run[/cyan]
    """
    from alignkit.pipeline.execute import execute, plan_run, print_plan
    from alignkit.recipe.mirrors import selected_mirrors

    check_json(as_json, dry_run)
    options = _launch_options(launch, num_processes, num_machines, machine_rank, main_process_ip, main_process_port)
    planned = plan_run(
        recipe,
        options,
        qlora=qlora,
        overrides=overrides or (),
        output_root=output_dir,
        mirrors=selected_mirrors(mirror) or {},
        overwrite=overwrite,
    )
    if dry_run and as_json:
        print_plan(planned, as_json=True, echo=typer.echo)
        return
    print_notices(planned.notices)
    if dry_run:
        print_plan(planned, as_json=False, echo=typer.echo)
        return
    execute(planned, options, overwrite=overwrite, argv=command_line(), echo=typer.echo)
