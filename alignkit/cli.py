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
    help="Post-train language models (cpt, sft, dpo, orpo) from validated recipes, on one CPU or many GPU nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(
    help="List and show the shipped recipes.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipes_app, name="recipes")


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
    from alignkit import registry

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
        from rich.console import Console
        from rich.table import Table

        table = Table(title="alignkit recipes", title_justify="left")
        for column in ("name", "methods", "base model", "size", "GPUs", "launch"):
            table.add_column(column, no_wrap=True)
        table.add_column("description", overflow="fold")
        for e in entries:
            gpus = f"{e.nodes}x{e.gpus}" if e.nodes > 1 else str(e.gpus)
            table.add_row(e.name, ", ".join(e.methods), e.base_model, e.size, gpus, e.profile, e.description)
        Console().print(table)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name (see `alignkit recipes list`) or path.")],
    method: Annotated[str | None, typer.Option("--method", "-m", help="Show only this method's stage.")] = None,
    qlora: Annotated[bool, typer.Option("--qlora", help="Show the QLoRA variant.")] = False,
) -> None:
    """Print a recipe, fully resolved (defaults filled in), as YAML.

    Example: [cyan]alignkit recipes show zephyr-7b-gemma --method sft --qlora[/cyan]
    """
    from alignkit import registry
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


def _check_method(method: str | None) -> None:
    if method is not None and method not in METHODS:
        raise UserError(f"unknown method {method!r}; one of {', '.join(METHODS)}", source="--method")


def _print_notices(notices: list[str]) -> None:
    for notice in notices:
        typer.echo(f"note: {notice}", err=True)


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
        output_dir: Annotated[str | None, typer.Option("--output-dir", "-o", help="Where the run writes.")] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Validate and print the recipe and launch plan; load nothing.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print one JSON document.")] = False,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace a finished run in the output directory.")
        ] = False,
        launch: Annotated[
            str | None,
            typer.Option("--launch", help="Launch profile: none, ddp, zero2, zero3, zero3-offload, fsdp, fsdp-qlora."),
        ] = None,
        num_processes: Annotated[
            int | None, typer.Option("--num-processes", help="Processes per machine (default: visible GPUs).")
        ] = None,
        num_machines: Annotated[int | None, typer.Option("--num-machines", help="Machines (nodes).")] = None,
        machine_rank: Annotated[int, typer.Option("--machine-rank", help="This machine's rank, 0-based.")] = 0,
        main_process_ip: Annotated[
            str | None, typer.Option("--main-process-ip", help="Address of machine 0 (multi-node).")
        ] = None,
        main_process_port: Annotated[int, typer.Option("--main-process-port", help="Port on machine 0.")] = 29500,
    ) -> None:
        from alignkit.launch.plan import LaunchOptions, plan_launch
        from alignkit.recipe.resolve import resolve_recipe

        with _reported():
            if as_json and not dry_run:
                raise UserError("--json needs --dry-run", source="--json")
            resolved = resolve_recipe(method, recipe, qlora=qlora, overrides=overrides or (), output_dir=output_dir)
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

            run(resolved, plan, options, overwrite=overwrite, argv=sys.argv)

    command.__doc__ = (
        f"{spec.summary}\n\nExamples:\n\n  [cyan]{spec.example}[/cyan]\n\n"
        f"  [cyan]alignkit {method} --recipe my_{method}.yaml --set training.num_train_epochs=2 --dry-run[/cyan]\n\n"
        f"  [cyan]alignkit {method} --recipe config_full.yaml --launch zero3 --num-processes 8[/cyan]"
    )
    return command


for _name in METHODS:
    app.command(_name)(_make_method_command(_name))


def _print_dry_run(resolved, plan, as_json: bool) -> None:
    from alignkit.recipe.yamlio import dump_yaml

    recipe = resolved.recipe.model_dump(mode="json")
    if as_json:
        document = {
            "method": resolved.method,
            "recipe_name": resolved.name,
            "source": str(resolved.source),
            "recipe": recipe,
            "launch": plan.as_dict(),
            "notices": resolved.notices,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.table import Table

    _print_notices(resolved.notices)
    console = Console()
    console.print(f"[bold]{resolved.method}[/bold] recipe [bold]{resolved.name}[/bold] ({resolved.source})")
    console.print(Syntax(dump_yaml(recipe), "yaml", background_color="default", word_wrap=True))
    table = Table(title="launch plan", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = [
        ("profile", plan.profile),
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
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
