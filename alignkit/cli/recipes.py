"""`alignkit recipes list | show | cp`: the shipped recipe library from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from alignkit.cli.options import JsonOption, check_stage, print_notices
from alignkit.errors import UserError

recipes_app = typer.Typer(
    help="List, show and copy the shipped recipes.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@recipes_app.command("list")
def recipes_list(
    method: Annotated[str | None, typer.Option("--method", "-m", help="Only recipes with this method.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the shipped recipes: name, methods, base model, size, GPUs and launch profile.

    Example: [cyan]alignkit recipes list --method dpo[/cyan]
    """
    from alignkit.library import registry

    check_stage(method)
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
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.recipe.yamlio import dump_yaml

    check_stage(method)
    methods = [method] if method else _methods_shown(name)
    documents = []
    for m in methods:
        resolved = resolve_recipe(m, name, qlora=qlora)
        print_notices(resolved.notices)
        documents.append(f"# {resolved.name}: {m}\n" + dump_yaml(resolved.recipe.model_dump(mode="json")))
    typer.echo("---\n".join(documents), nl=False)


_NO_FILE = "no file by that name either"
_PATH_HINT = "a path must end in .yaml"


def _methods_shown(name: str) -> list[str]:
    """Every method of a registry recipe or recipe folder, or the one a recipe file is for."""
    from alignkit.library import registry
    from alignkit.library.lookup import file_methods, find_entry, recipe_folder, refuse_unknown

    source = "alignkit recipes show"
    if name in registry.discover() or recipe_folder(name) is not None:
        return find_entry(name, source=source).methods
    path = Path(name).expanduser()
    if not path.is_file():
        looks_like_path = path.suffix in (".yaml", ".yml") or "/" in name
        refuse_unknown(name, source=source, note=_NO_FILE if looks_like_path else _PATH_HINT)
    methods = file_methods(path)
    if len(methods) != 1:
        raise UserError(
            f"{name} does not say which method it is for ({'several sections' if methods else 'no method section'});"
            " give --method",
            source=source,
        )
    return methods


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

    check_stage(method)
    for copied in copy_recipe(name, dest, method):
        typer.echo(f"copied {copied.source.name} to {copied.dest}; run it with: {copied.command}")
