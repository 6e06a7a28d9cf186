"""The `alignkit` command line.

This module is the light layer: it imports typer, rich, pydantic and yaml, never torch, transformers, TRL,
datasets or accelerate (a test guards this), so `--help`, `recipes list` and `--dry-run` answer at once.
Training imports the heavy stack lazily, inside the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from alignkit import __version__
from alignkit.errors import AlignkitError, UserError
from alignkit.methods import METHODS

app = typer.Typer(
    name="alignkit",
    help=f"Post-train language models ({', '.join(METHODS)}) from validated recipes, on one CPU or many GPU nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(
    help="List, show and copy the shipped recipes.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipes_app, name="recipes")


_METHOD_ARGUMENT_HELP = f"The training method: {', '.join(METHODS)}."


def _print_error_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"error: {line}", err=True)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn alignkit errors into their exit codes and one line per problem (tracebacks with ALIGNKIT_DEBUG=1)."""
    try:
        yield
    except UserError as err:
        if os.environ.get("ALIGNKIT_DEBUG") == "1":
            raise
        _print_error_lines([str(p) for p in err.problems])
        raise typer.Exit(err.exit_code) from None
    except AlignkitError as err:
        if os.environ.get("ALIGNKIT_DEBUG") == "1":
            raise
        _print_error_lines(str(err).splitlines() or [type(err).__name__])
        raise typer.Exit(err.exit_code) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"alignkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Post-train language models from validated recipes.

    [bold]Quick start[/bold]

      alignkit recipes list
      alignkit sft --recipe zephyr-7b-gemma --qlora --dry-run
      alignkit sft --recipe my_recipe.yaml --set training.learning_rate=3e-5
    """


@recipes_app.command("list")
def recipes_list(
    method: Annotated[str | None, typer.Option("--method", "-m", help="Only recipes with this method.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the shipped recipes: name, methods, base model, size, GPUs and launch profile.

    Example: [cyan]alignkit recipes list --method dpo[/cyan]
    """
    from alignkit.library import registry

    with _reported():
        _check_method(method)
        entries = [e for e in registry.discover().values() if method is None or method in e.files]
        if as_json:
            rows = [
                {
                    "name": e.name,
                    "methods": e.methods,
                    "base_model": e.base_model,
                    "size": e.size,
                    "gpus": e.gpus * e.nodes,
                    "nodes": e.nodes,
                    "profile": e.profile,
                    "description": e.description,
                }
                for e in entries
            ]
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        from alignkit.terminal import output_console

        console = output_console()
        headers = ("name", "methods", "base model", "size", "GPUs", "launch")
        rows = [(e.name, ", ".join(e.methods), e.base_model, e.size, _gpus_label(e), e.profile) for e in entries]
        # The fixed columns never wrap; the description gets what is left, and is dropped (it is in --json)
        # when the terminal would leave it a sliver that folds every few letters.
        used = sum(max(len(str(c)) for c in column) + 3 for column in zip(headers, *rows, strict=True)) + 1
        with_description = console.width - used >= 30
        if console.width < used:
            # Too narrow for the table: print it whole and let the terminal wrap, rather than cut ids short.
            console = output_console(width=used)
        table = Table(title="alignkit recipes", title_justify="left")
        for column in headers:
            table.add_column(column, no_wrap=True)
        if with_description:
            table.add_column("description", overflow="fold")
        for e, row in zip(entries, rows, strict=True):
            table.add_row(*row, *((e.description,) if with_description else ()))
        console.print(table)


def _gpus_label(entry) -> str:
    return f"{entry.nodes}x{entry.gpus}" if entry.nodes > 1 else str(entry.gpus)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name (see `alignkit recipes list`) or path.")],
    method: Annotated[str | None, typer.Option("--method", "-m", help="Show only this method's stage.")] = None,
    qlora: Annotated[bool, typer.Option("--qlora", help="Show the QLoRA variant.")] = False,
) -> None:
    """Print a recipe, fully resolved (defaults filled in), as YAML.

    Example: [cyan]alignkit recipes show zephyr-7b-gemma --method sft --qlora[/cyan]
    """
    from alignkit.library import registry
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.recipe.yamlio import dump_yaml

    with _reported():
        _check_method(method)
        entry = registry.discover().get(name)
        methods = [method] if method else (entry.methods if entry else [])
        if not methods:
            raise UserError("give --method for a recipe given by path", source="alignkit recipes show")
        documents = []
        for m in methods:
            resolved = resolve_recipe(m, name, qlora=qlora)
            _print_notices(resolved.notices)
            documents.append(f"# {resolved.name}: {m}\n" + dump_yaml(resolved.recipe.model_dump(mode="json")))
        typer.echo("---\n".join(documents), nl=False)


@recipes_app.command("cp")
def recipes_cp(
    name: Annotated[str, typer.Argument(help="Recipe name (see `alignkit recipes list`), variants included.")],
    dest: Annotated[str, typer.Argument(help="A .yaml file (one method) or a folder (one <method>.yaml each).")],
    method: Annotated[str | None, typer.Option("--method", "-m", help="Copy only this method's stage.")] = None,
) -> None:
    """Copy a shipped recipe to edit it; never overwrites a file.

    Examples: [cyan]alignkit recipes cp zephyr-7b-beta my-zephyr/[/cyan]
    [cyan]alignkit recipes cp zephyr-7b-beta:qlora my_sft.yaml --method sft[/cyan]
    """
    from alignkit.library.copying import copy_recipe

    with _reported():
        _check_method(method)
        for copied in copy_recipe(name, dest, method):
            typer.echo(f"copied {copied.source.name} to {copied.dest}; run it with: {copied.command}")


def _check_method(method: str | None) -> None:
    if method is not None and method not in METHODS:
        raise UserError(f"unknown method {method!r}; one of {', '.join(METHODS)}", source="--method")


def _print_notices(notices: list[str]) -> None:
    for notice in notices:
        typer.echo(f"note: {notice}", err=True)


_MIRROR_HELP = "YAML file mapping Hub ids to local paths (models, tokenizers, datasets); default: $ALIGNKIT_MIRRORS."


# The launch flags every training command shares (method commands and `run`).
NumProcesses = Annotated[
    int | None, typer.Option("--num-processes", help="Processes per machine (default: visible GPUs).")
]
NumMachines = Annotated[int | None, typer.Option("--num-machines", help="Machines (nodes).")]
MachineRank = Annotated[int, typer.Option("--machine-rank", help="This machine's rank, 0-based.")]
MainProcessIp = Annotated[str | None, typer.Option("--main-process-ip", help="Address of machine 0 (multi-node).")]
MainProcessPort = Annotated[int, typer.Option("--main-process-port", help="Port on machine 0.")]
AsJson = Annotated[bool, typer.Option("--json", help="With --dry-run: print one JSON document.")]


def _make_method_command(method: str):
    spec = METHODS[method]

    def command(
        recipe: Annotated[
            str,
            typer.Option("--recipe", "-r", help="Registry name, alignkit recipe file, or handbook/TRL YAML config."),
        ],
        qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base + LoRA on all linear layers.")] = False,
        overrides: Annotated[
            list[str] | None,
            typer.Option("--set", "-s", help="Override a field: --set training.learning_rate=3e-7 (repeatable)."),
        ] = None,
        mirror: Annotated[str | None, typer.Option("--mirror", help=_MIRROR_HELP)] = None,
        output_dir: Annotated[str | None, typer.Option("--output-dir", "-o", help="Where the run writes.")] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Validate and print the recipe and launch plan; load nothing.")
        ] = False,
        as_json: AsJson = False,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace a finished run in the output directory.")
        ] = False,
        launch: Annotated[
            str | None,
            typer.Option("--launch", help="Launch profile: none, ddp, zero2, zero3, zero3-offload, fsdp, fsdp-qlora."),
        ] = None,
        num_processes: NumProcesses = None,
        num_machines: NumMachines = None,
        machine_rank: MachineRank = 0,
        main_process_ip: MainProcessIp = None,
        main_process_port: MainProcessPort = 29500,
    ) -> None:
        from alignkit.launch.plan import LaunchOptions, plan_launch
        from alignkit.recipe.mirrors import selected_mirrors, with_unused_notices
        from alignkit.recipe.resolve import resolve_recipe

        with _reported():
            if as_json and not dry_run:
                raise UserError("--json needs --dry-run", source="--json")
            mirrors = selected_mirrors(mirror)
            resolved = resolve_recipe(
                method, recipe, qlora=qlora, overrides=overrides or (), output_dir=output_dir, mirrors=mirrors or {}
            )
            resolved = with_unused_notices(resolved, mirrors)
            options = LaunchOptions(
                launch=launch,
                num_processes=num_processes,
                num_machines=num_machines,
                machine_rank=machine_rank,
                main_process_ip=main_process_ip,
                main_process_port=main_process_port,
            )
            plan = plan_launch(resolved.recipe, options)
            if dry_run:
                _print_dry_run(resolved, plan, as_json)
                return
            _print_notices(resolved.notices)
            from alignkit.launch.run import run

            run(resolved, plan, options, overwrite=overwrite, argv=["alignkit", *sys.argv[1:]])

    command.__doc__ = (
        f"{spec.summary}\n\nExamples:\n\n  [cyan]{spec.example}[/cyan]\n\n"
        f"  [cyan]alignkit {method} --recipe my_{method}.yaml --set training.num_train_epochs=2 --dry-run[/cyan]\n\n"
        f"  [cyan]alignkit {method} --recipe config_full.yaml --launch zero3 --num-processes 8[/cyan]"
    )
    return command


for _name in METHODS:
    app.command(_name)(_make_method_command(_name))


@app.command("run")
def run_pipeline(
    recipe: Annotated[
        str,
        typer.Option("--recipe", "-r", help="A recipe family with stages (pipeline.yaml), or NAME:scan for its scan."),
    ],
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base + LoRA in every stage.")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a field in every stage, or one: --set dpo:dpo.beta=0.1."),
    ] = None,
    mirror: Annotated[str | None, typer.Option("--mirror", help=_MIRROR_HELP)] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir", "-o", help="Root folder: stage S writes to DIR/S, a scan point to DIR/<its folder name>."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate every stage and print the stage table; load nothing.")
    ] = False,
    as_json: AsJson = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Retrain every stage, replacing finished runs.")
    ] = False,
    launch: Annotated[
        str | None, typer.Option("--launch", help="Launch profile for every stage (default: each recipe's).")
    ] = None,
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
    from alignkit.launch.plan import LaunchOptions
    from alignkit.pipeline.execute import execute, plan_run, print_plan
    from alignkit.recipe.mirrors import selected_mirrors

    with _reported():
        if as_json and not dry_run:
            raise UserError("--json needs --dry-run", source="--json")
        options = LaunchOptions(
            launch=launch,
            num_processes=num_processes,
            num_machines=num_machines,
            machine_rank=machine_rank,
            main_process_ip=main_process_ip,
            main_process_port=main_process_port,
        )
        mirrors = selected_mirrors(mirror)
        planned = plan_run(
            recipe,
            options,
            qlora=qlora,
            overrides=overrides or (),
            output_root=output_dir,
            mirrors=mirrors or {},
            overwrite=overwrite,
        )
        if dry_run and as_json:
            print_plan(planned, as_json=True, echo=typer.echo)
            return
        _print_notices(planned.notices)
        if dry_run:
            print_plan(planned, as_json=False, echo=typer.echo)
            return
        execute(planned, options, overwrite=overwrite, argv=["alignkit", *sys.argv[1:]], echo=typer.echo)


def _print_dry_run(resolved, plan, as_json: bool) -> None:
    from alignkit.launch.profiles import accelerate_config, deepspeed_config, describe
    from alignkit.recipe.yamlio import dump_yaml

    recipe = resolved.recipe.model_dump(mode="json")
    launcher = accelerate_config(plan)
    deepspeed = deepspeed_config(plan)
    if as_json:
        document = {
            "method": resolved.method,
            "recipe_name": resolved.name,
            "source": str(resolved.source),
            "recipe": recipe,
            "launch": plan.as_dict(),
            "accelerate_config": launcher,
            "deepspeed_config": deepspeed,
            "notices": resolved.notices,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    from rich.syntax import Syntax
    from rich.table import Table

    from alignkit.terminal import output_console

    _print_notices(resolved.notices)
    console = output_console()
    console.print(f"[bold]{resolved.method}[/bold] recipe [bold]{resolved.name}[/bold] ({resolved.source})")
    console.print(Syntax(dump_yaml(recipe), "yaml", background_color="default", word_wrap=True))
    table = Table(title="launch plan", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = [
        ("profile", f"{plan.profile}: {describe(plan.profile)}"),
        ("device", plan.device),
        ("machines x processes", f"{plan.num_machines} x {plan.processes_per_machine} = {plan.world_size}"),
        ("mixed precision", plan.mixed_precision),
        (
            "effective batch",
            f"{plan.per_device_train_batch_size} per device x {plan.gradient_accumulation_steps} accumulation"
            f" x {plan.world_size} processes = {plan.effective_batch_size}",
        ),
        ("recipe tuned for", f"{plan.recipe_gpus} GPUs, effective batch {plan.recipe_effective_batch_size}"),
        ("output dir", str(resolved.recipe.training.output_dir)),
    ]
    if plan.bnb_4bit_quant_storage:
        rows.append(("4-bit storage", f"{plan.bnb_4bit_quant_storage} (the compute dtype, as sharding needs)"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if launcher is not None:
        console.print("[bold]accelerate config[/bold] (written to the output directory's launch/ folder)")
        console.print(Syntax(dump_yaml(launcher), "yaml", background_color="default", word_wrap=True))
    if deepspeed is not None:
        console.print('[bold]DeepSpeed config[/bold] ("auto": filled in by the trainer from the recipe)')
        console.print(Syntax(json.dumps(deepspeed, indent=2), "json", background_color="default", word_wrap=True))
    if plan.effective_batch_size != plan.recipe_effective_batch_size:
        console.print(
            f"[yellow]note:[/yellow] the effective batch ({plan.effective_batch_size}) differs from the recipe's"
            f" ({plan.recipe_effective_batch_size}); adjust training.gradient_accumulation_steps to match."
        )
    console.print("[green]dry run: recipe valid; nothing loaded or written.[/green]")


@app.command("env")
def env() -> None:
    """Print versions and accelerators, for bug reports.

    Example: [cyan]alignkit env[/cyan]
    """
    from alignkit.envinfo import collect

    for key, value in collect().items():
        typer.echo(f"{key + ':':<16} {value}")


@app.command("slurm")
def slurm(
    method: Annotated[str, typer.Argument(help=_METHOD_ARGUMENT_HELP)],
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Registry name or recipe file.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes to allocate.")],
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node (processes per node).")],
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.")] = None,
    time: Annotated[str | None, typer.Option("--time", help="Time limit, e.g. 2-00:00:00.")] = None,
    launch: Annotated[str | None, typer.Option("--launch", help="Launch profile (default: the recipe's).")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Script to write (default: <job>.sbatch).")] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Submit the script with sbatch.")] = False,
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base + LoRA on all linear layers.")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a field (repeatable), as for training.")
    ] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", "-o", help="Where the run writes.")] = None,
) -> None:
    """Write an sbatch script that runs a recipe on Slurm nodes (one alignkit per node, through srun).

    Example: [cyan]alignkit slurm sft --recipe zephyr-7b-gemma --nodes 2 --gpus-per-node 8 --partition gpu[/cyan]
    """
    from pathlib import Path

    from alignkit.launch.job import JobSpec, plan_job
    from alignkit.launch.slurm import SlurmOptions, check_options, submit_script, write_script

    with _reported():
        _check_method(method)
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
        _print_notices(job.resolved.notices)
        path = write_script(job, options, Path(output or f"{job.name}.sbatch"))
        plan = job.plan
        typer.echo(
            f"wrote {path}: {nodes} node(s) x {gpus_per_node} GPU(s), profile {plan.profile},"
            f" effective batch {plan.effective_batch_size}"
        )
        if submit:
            typer.echo(f"submitted job {submit_script(path)}")
        else:
            typer.echo(f"submit it with: sbatch {path}")


@app.command("dstack")
def dstack(
    method: Annotated[str, typer.Argument(help=_METHOD_ARGUMENT_HELP)],
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Registry name or recipe file.")],
    gpu: Annotated[str, typer.Option("--gpu", help="dstack GPU spec per node, e.g. H100:8 or 24GB..:1.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes (a fleet file is written for more than one).")] = 1,
    launch: Annotated[str | None, typer.Option("--launch", help="Launch profile (default: the recipe's).")] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Task file to write (default: <job>.dstack.yml).")
    ] = None,
    do_apply: Annotated[bool, typer.Option("--apply", help="Run `dstack apply` on the written files.")] = False,
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base + LoRA on all linear layers.")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a field (repeatable), as for training.")
    ] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", "-o", help="Where the run writes.")] = None,
) -> None:
    """Write a dstack task (and a fleet for several nodes) that installs alignkit and runs a recipe.

    Example: [cyan]alignkit dstack sft --recipe zephyr-7b-gemma --gpu H100:8 --nodes 2 --apply[/cyan]
    """
    from pathlib import Path

    from alignkit.launch.dstack import apply, plan_dstack, write_files

    with _reported():
        _check_method(method)
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
        _print_notices(job.resolved.notices)
        files = write_files(job, gpu, Path(output) if output else None)
        for path in (files.fleet, files.task):
            if path is not None:
                typer.echo(f"wrote {path}")
        if do_apply:
            apply(files)
        else:
            first = f"dstack apply -f {files.fleet} && " if files.fleet else ""
            typer.echo(f"run it with: {first}dstack apply -f {files.task}")


@app.command("data")
def data(
    method: Annotated[str, typer.Argument(help=_METHOD_ARGUMENT_HELP)],
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Registry name, recipe file, or handbook/TRL config.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a field (repeatable), as for training.")
    ] = None,
    show: Annotated[int, typer.Option("--show", help="Rendered examples to print, trained-on spans highlighted.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Load, mix, split and tokenize a recipe's data with its tokenizer only, and show what will be trained on.

    Rows per source, train/test sizes, token lengths, rows over max_length, and examples with the loss spans.

    Loads no weights and writes nothing to the output directory; the prepared data is cached for training.

    Example: [cyan]alignkit data sft --recipe my_sft.yaml --show 2[/cyan]
    """
    with _reported():
        _check_method(method)
        if show < 0:
            raise UserError("--show takes a number of examples, 0 or more", source="--show")
        from alignkit.data.show import report_data

        report_data(method, recipe, tuple(overrides or ()), show, as_json)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
