"""`alignkit sample`: generate candidates for prompts with a policy, score them, select training rows.

Only flags are read here; the recipe is resolved by `alignkit.recipe.resolve` and the run lives in
`alignkit.sampling`, imported inside the command so `--help` stays light.
"""

from __future__ import annotations

from typing import Annotated

import typer

from alignkit.cli.options import (
    DryRunOption,
    JsonOption,
    MirrorOption,
    OutputDirOption,
    OverwriteOption,
    RecipeOption,
    SetOption,
    check_json,
    command_line,
    print_notices,
    resolve_from_flags,
)
from alignkit.stages import SAMPLE


def sample(
    recipe: RecipeOption,
    overrides: SetOption = None,
    mirror: MirrorOption = None,
    output_dir: OutputDirOption = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    overwrite: OverwriteOption = False,
    num_processes: Annotated[
        int,
        typer.Option(
            "--num-processes", min=1, help="Processes on this machine sharing the prompts (one GPU each on GPUs)."
        ),
    ] = 1,
) -> None:
    """Rejection sampling: generate N completions per prompt, score them, keep the best as training rows.

    Writes candidates.jsonl (every completion with each scorer's value), selected.jsonl (rows sft or dpo
    reads directly), alignkit_sample.json, scores.png and a card. A killed run resumes at its first
    unfinished shard.

    Examples:

      [cyan]alignkit sample --recipe my_sample.yaml --dry-run[/cyan]

      [cyan]alignkit sample --recipe my_sample.yaml --set sample.num_samples=8 --output-dir runs/bon[/cyan]

      [cyan]alignkit sample --recipe my_sample.yaml --num-processes 8[/cyan]
    """
    check_json(as_json, dry_run)
    resolved = resolve_from_flags(SAMPLE, recipe, overrides=overrides, output_dir=output_dir, mirror=mirror)
    if dry_run:
        from alignkit.sampling.dry_run import print_dry_run

        print_dry_run(resolved, as_json=as_json, overwrite=overwrite, notices_to=print_notices)
        return
    print_notices(resolved.notices)
    from alignkit.sampling.run import start_sample

    start_sample(resolved, overwrite=overwrite, argv=command_line(), echo=typer.echo, num_processes=num_processes)
