"""The options several commands share, declared once, and the small helpers every command uses.

Each option is an `Annotated` type: a command declares `recipe: RecipeOption` and gets the same flag names,
short forms and help everywhere.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from alignkit.errors import UserError
from alignkit.methods import METHODS

RecipeOption = Annotated[
    str, typer.Option("--recipe", "-r", help="Registry name, alignkit recipe file, or handbook/TRL YAML config.")
]
QloraOption = Annotated[bool, typer.Option("--qlora", help="4-bit NF4 base + LoRA on all linear layers.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a field: --set training.learning_rate=3e-7 (repeatable)."),
]
OutputDirOption = Annotated[str | None, typer.Option("--output-dir", "-o", help="Where the run writes.")]
MirrorOption = Annotated[
    str | None,
    typer.Option(
        "--mirror",
        help="YAML file mapping Hub ids to local paths (models, tokenizers, datasets); default: $ALIGNKIT_MIRRORS.",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Validate and print what would run (recipe, launch plan); load nothing.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace finished runs in the output directory.")]
MethodArgument = Annotated[str, typer.Argument(help=f"The training method ({', '.join(METHODS)}) or sample.")]
MethodFilter = Annotated[str | None, typer.Option("--method", "-m", help="Only this method's stage.")]

# The launch flags every training command shares.
LaunchOption = Annotated[
    str | None,
    typer.Option(
        "--launch",
        help="Launch profile: none, ddp, zero2, zero3, zero3-offload, fsdp, fsdp-qlora (default: the recipe's).",
    ),
]
NumProcesses = Annotated[
    int | None, typer.Option("--num-processes", help="Processes per machine (default: visible GPUs).")
]
NumMachines = Annotated[int | None, typer.Option("--num-machines", help="Machines (nodes).")]
MachineRank = Annotated[int, typer.Option("--machine-rank", help="This machine's rank, 0-based.")]
MainProcessIp = Annotated[str | None, typer.Option("--main-process-ip", help="Address of machine 0 (multi-node).")]
MainProcessPort = Annotated[int, typer.Option("--main-process-port", help="Port on machine 0.")]


def check_method(method: str | None, source: str = "--method") -> None:
    """Refuse a method name alignkit does not offer (exit 2), naming the choices."""
    if method is not None and method not in METHODS:
        raise UserError(f"unknown method {method!r}; one of {', '.join(METHODS)}", source=source)


def check_stage(kind: str | None, source: str = "--method") -> None:
    """Refuse a stage kind alignkit does not know (a training method or sample; exit 2), naming the choices."""
    from alignkit.stages import STAGE_KINDS

    if kind is not None and kind not in STAGE_KINDS:
        raise UserError(f"unknown method {kind!r}; one of {', '.join(STAGE_KINDS)}", source=source)


def resolve_from_flags(kind: str, recipe: str, *, overrides, output_dir, mirror, qlora: bool = False):
    """The recipe a stage command's flags give: resolved and validated, the mirrors applied and the unused ones
    noted (alignkit.recipe.resolve, alignkit.recipe.mirrors)."""
    from alignkit.recipe.mirrors import selected_mirrors, with_unused_notices
    from alignkit.recipe.resolve import resolve_recipe

    mirrors = selected_mirrors(mirror)
    resolved = resolve_recipe(
        kind, recipe, qlora=qlora, overrides=overrides or (), output_dir=output_dir, mirrors=mirrors or {}
    )
    return with_unused_notices(resolved, mirrors)


def check_json(as_json: bool, dry_run: bool) -> None:
    if as_json and not dry_run:
        raise UserError("--json needs --dry-run", source="--json")


def print_notices(notices: list[str]) -> None:
    """Notices go to stderr, so stdout stays the document a script reads."""
    for notice in notices:
        typer.echo(f"note: {notice}", err=True)


def command_line() -> list[str]:
    """The command as the user typed it, recorded in the run file (tokens redacted there)."""
    return ["alignkit", *sys.argv[1:]]
