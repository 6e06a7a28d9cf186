"""The root `alignkit` typer app, and the one place alignkit errors become exit codes and error lines.

A `UserError` (a wrong recipe, flag or data) prints one `error: ...` line per problem and exits 2; any other
`AlignkitError` prints its message and exits with its code (1, or 130 when interrupted); neither shows a
traceback unless `ALIGNKIT_DEBUG=1`. A file-system error about a path that escaped every check (a folder
that cannot be read, a file where a folder must be) is the user's path, so it is reported like a
`UserError`: one line naming the path, exit 2. The root command group applies this to every command, so no
command handles errors itself.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from alignkit import __version__
from alignkit.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, AlignkitError, UserError
from alignkit.methods import METHODS


def _print_error_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"error: {line}", err=True)


class ReportingGroup(TyperGroup):
    """The root command group: runs the chosen command and reports alignkit errors the one way."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
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
        except KeyboardInterrupt:
            if os.environ.get("ALIGNKIT_DEBUG") == "1":
                raise
            _print_error_lines(["interrupted"])
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as err:
            if err.filename is None or os.environ.get("ALIGNKIT_DEBUG") == "1":
                raise
            _print_error_lines([f"{err.filename}: {err.strerror or err}"])
            raise typer.Exit(EXIT_USER_ERROR) from None


app = typer.Typer(
    name="alignkit",
    cls=ReportingGroup,
    help=f"Post-train language models ({', '.join(METHODS)}) from validated recipes, on one CPU or many GPU nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
