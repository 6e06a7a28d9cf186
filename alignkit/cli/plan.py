"""`alignkit plan`: the memory a recipe's run needs per device and what fits, before any GPU time is spent.

Light like the rest of the CLI: the plan is worked out from the recipe, the launch plan and the model's
config.json (`alignkit.launch.memory`); nothing heavy is imported.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from alignkit.cli.options import LaunchOption, MirrorOption, NumProcesses, QloraOption, RecipeOption, SetOption
from alignkit.errors import Problem, UserError
from alignkit.methods import METHODS

GpuMemoryOption = Annotated[
    str | None,
    typer.Option(
        "--gpu-memory",
        help="Memory of one GPU, e.g. 80GB or 24GiB (plans for GPUs; default: this machine's GPU, else its CPU RAM).",
    ),
]


def plan(
    method: Annotated[
        str | None, typer.Argument(help=f"The training method ({', '.join(METHODS)}); default: the recipe's only one.")
    ] = None,
    recipe: RecipeOption = ...,
    qlora: QloraOption = False,
    overrides: SetOption = None,
    mirror: MirrorOption = None,
    launch: LaunchOption = None,
    num_processes: NumProcesses = None,
    gpu_memory: GpuMemoryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
) -> None:
    """Plan the memory a run needs per device: weights, gradients, optimizer states, activations with and
    without checkpointing, and what fits (the largest micro-batch, checkpointing or sharding needed).

    Reads the model's config.json from a local folder or the Hugging Face cache; downloads nothing.

    Examples:

      [cyan]alignkit plan sft --recipe zephyr-7b-beta --gpu-memory 80GB[/cyan]

      [cyan]alignkit plan --recipe my_dpo.yaml --launch zero3 --num-processes 8 --gpu-memory 80GB --json[/cyan]
    """
    from alignkit.launch.device_memory import device_memory, parse_size
    from alignkit.launch.memory import memory_plan
    from alignkit.launch.plan import LaunchOptions, plan_launch
    from alignkit.recipe.mirrors import selected_mirrors
    from alignkit.recipe.resolve import resolve_recipe

    device_bytes = parse_size(gpu_memory) if gpu_memory is not None else None
    mirrors = selected_mirrors(mirror)
    chosen = method or _only_method(recipe)
    resolved = resolve_recipe(chosen, recipe, qlora=qlora, overrides=overrides or (), mirrors=mirrors or {})
    launch_plan = plan_launch(resolved.recipe, LaunchOptions(launch=launch, num_processes=num_processes))
    if device_bytes is None:
        device_bytes, label = device_memory(launch_plan.device, launch_plan.processes_per_machine)
    else:
        launch_plan, label = _on_gpus(resolved.recipe, launch_plan), f"--gpu-memory {gpu_memory}"
    memory = memory_plan(resolved.recipe, launch_plan, device_bytes, device=label)
    if as_json:
        document = {"method": chosen, "recipe_name": resolved.name, "launch": launch_plan.as_dict()}
        typer.echo(json.dumps({**document, "memory_plan": memory.as_dict()}, indent=2))
        return
    typer.echo(f"memory plan: alignkit {chosen} --recipe {recipe} ({launch_plan.device})")
    for line in memory.lines():
        typer.echo(f"  {line}")


def _only_method(recipe: str) -> str:
    """The method of a recipe that has only one stage; refused (exit 2) when it has several or none."""
    from pathlib import Path

    from alignkit.library import registry
    from alignkit.recipe.yamlio import read_yaml_mapping

    entry = registry.discover().get(recipe)
    if entry is not None:
        found = entry.methods
    else:
        from alignkit.library.lookup import locate

        _, path = locate(recipe, next(iter(METHODS)))
        found = [name for name in METHODS if name in read_yaml_mapping(Path(path))]
    if len(found) == 1:
        return found[0]
    has = f"it has {', '.join(found)}" if found else "it names none"
    raise UserError(
        Problem(
            source="alignkit plan",
            message=f"give the method, e.g. `alignkit plan {(found or list(METHODS))[0]} --recipe {recipe}`: {has}",
        )
    )


def _on_gpus(recipe, launch_plan):
    """The launch plan as it would run on GPUs (--gpu-memory plans for GPUs even on a machine without one)."""
    if launch_plan.device == "cuda":
        return launch_plan
    from alignkit.recipe.automatic import decide, planned_facts

    decided = {setting.path: setting.value for setting in decide(recipe, planned_facts("cuda"))}
    return dataclasses.replace(launch_plan, device="cuda", mixed_precision=decided["training.mixed_precision"])
