"""`alignkit data` and `alignkit env`: look at a recipe's data, and at the machine, before training."""

from __future__ import annotations

from typing import Annotated

import typer

from alignkit.cli.options import JsonOption, MethodArgument, RecipeOption, SetOption, check_stage
from alignkit.errors import UserError


def data(
    method: MethodArgument,
    recipe: RecipeOption,
    overrides: SetOption = None,
    show: Annotated[int, typer.Option("--show", help="Rendered examples to print, trained-on spans highlighted.")] = 3,
    as_json: JsonOption = False,
) -> None:
    """Load, mix, split and tokenize a recipe's data with its tokenizer only, and show what will be trained on.

    Rows per source, train/test sizes, token lengths, rows over max_length, and examples with the loss spans.
    For sample: the prompts, how each source was read, the columns the scorers may read, and rendered prompts.

    Loads no weights and writes nothing to the output directory; the prepared data is cached for training.

    Example: [cyan]alignkit data sft --recipe my_sft.yaml --show 2[/cyan]
    """
    check_stage(method)
    if show < 0:
        raise UserError("--show takes a number of examples, 0 or more", source="--show")
    from alignkit.stages import preview_data

    preview_data(method, recipe, tuple(overrides or ()), show, as_json)


def env() -> None:
    """Print versions and accelerators, for bug reports.

    Example: [cyan]alignkit env[/cyan]
    """
    from alignkit.envinfo import collect

    for key, value in collect().items():
        typer.echo(f"{key + ':':<16} {value}")
