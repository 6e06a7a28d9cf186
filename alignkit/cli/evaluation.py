"""`alignkit eval`: a scorecard of one or more models, from a recipe or, for one-off use, from flags.

Only flags are read here; the recipe is resolved by `alignkit.recipe.resolve` (or written from the flags by
`alignkit.evaluation.oneoff`) and the run lives in `alignkit.evaluation`, imported inside the command so
`--help` stays light.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from alignkit.cli.options import (
    DryRunOption,
    JsonOption,
    MirrorOption,
    OutputDirOption,
    SetOption,
    command_line,
    print_notices,
    resolve_from_flags,
)
from alignkit.errors import UserError
from alignkit.stages import EVAL


def evaluate(
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="An eval recipe: a file, a library name or NAME:VARIANT.")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A model to evaluate (folder, run output, adapter or Hub id); repeat."),
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option("--tasks", "-t", help="An lm-eval task name or task YAML file; repeat (with --model)."),
    ] = None,
    overrides: SetOption = None,
    mirror: MirrorOption = None,
    output_dir: OutputDirOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Measure everything anew instead of reusing the folder's cache.")
    ] = False,
) -> None:
    """Evaluate models side by side: lm-eval benchmarks, generative checks, a reward-model judge, held-out loss.

    Writes eval_results.json (every task, metric, model, sample count, seed and versions), eval_results.md,
    a PNG comparing the models and each model's answers; a rerun reuses what did not change.

    Examples:

      [cyan]alignkit eval --model runs/sft --model runs/dpo --tasks my_tasks/quiz.yaml[/cyan]

      [cyan]alignkit eval --recipe my_eval.yaml --json[/cyan]
    """
    if recipe is not None and (models or tasks):
        raise UserError("give a recipe (--recipe) or models and tasks (--model, --tasks), not both", source="--recipe")
    if recipe is not None:
        resolved = resolve_from_flags(EVAL, recipe, overrides=overrides, output_dir=output_dir, mirror=mirror)
    else:
        if mirror is not None:
            raise UserError("applies to --recipe; give --model the local folder itself", source="--mirror")
        from alignkit.evaluation.oneoff import oneoff_recipe

        resolved = oneoff_recipe(models or [], tasks or [], overrides=overrides, output_dir=output_dir)
    if dry_run:
        from alignkit.evaluation.preview import print_dry_run

        print_dry_run(resolved, as_json=as_json, notices_to=print_notices)
        return
    print_notices(resolved.notices)
    from alignkit.evaluation.run import start_eval

    # With --json the document is stdout's only content; progress goes to stderr.
    echo = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    document = start_eval(resolved, overwrite=overwrite, argv=command_line(), echo=echo, table=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
