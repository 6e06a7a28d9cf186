"""What `--dry-run` prints: the resolved recipe, the launch plan and the accelerate/DeepSpeed configs it generates.

Nothing is loaded or written; the same document is printed as JSON with `--json`, for scripts.
"""

from __future__ import annotations

import json

from alignkit.launch.memory import local_plan
from alignkit.launch.plan import machine_facts
from alignkit.recipe.automatic import decide


def print_dry_run(resolved, plan, *, as_json: bool, notices_to, overwrite: bool = False) -> None:
    """Print the resolved recipe and its launch plan (with the generated launcher configs), or one JSON document.

    `notices_to` prints the recipe's notices (to stderr) before the human-readable view. The run's own
    pre-flight checks come first (alignkit.launch.preflight), so a recipe the run would refuse is refused here.
    """
    from dataclasses import replace

    from alignkit.launch.preflight import preflight
    from alignkit.launch.profiles import accelerate_config, deepspeed_config, describe
    from alignkit.recipe.yamlio import dump_yaml

    resolved = replace(resolved, notices=[*resolved.notices, *preflight(resolved, overwrite=overwrite, dry_run=True)])

    recipe = resolved.recipe.model_dump(mode="json")
    settings = decide(resolved.recipe, machine_facts(resolved.recipe, plan))
    launcher = accelerate_config(plan)
    deepspeed = deepspeed_config(plan)
    memory, no_memory = local_plan(resolved.recipe, plan)
    if as_json:
        document = {
            "method": resolved.method,
            "recipe_name": resolved.name,
            "source": str(resolved.source),
            "recipe": recipe,
            "launch": plan.as_dict(),
            "accelerate_config": launcher,
            "deepspeed_config": deepspeed,
            "settings": [setting.as_dict() for setting in settings],
            "memory_plan": memory.as_dict() if memory else {"unavailable": no_memory},
            "notices": resolved.notices,
        }
        print(json.dumps(document, indent=2))
        return
    from rich.syntax import Syntax

    from alignkit.terminal import output_console

    notices_to(resolved.notices)
    console = output_console()
    _print_recipe_and_plan(console, resolved, plan, recipe, describe)
    _print_settings(console, settings, plan.device)
    console.print("[bold]memory plan[/bold] (`alignkit plan` for more)", highlight=False)
    for line in memory.lines() if memory else [f"unavailable: {no_memory}"]:
        console.print(f"  {line}", highlight=False, markup=False)
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


def _print_settings(console, settings, device: str) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"speed settings (as decided on this machine: {device})", title_justify="left")
    for column in ("setting", "value", "by", "why"):
        table.add_column(column, overflow="fold")
    for setting in settings:
        value = str(setting.value).lower() if isinstance(setting.value, bool) else str(setting.value)
        # Plain Text: a reason may hold brackets (`alignkit[vllm]`) that rich would read as markup.
        table.add_row(setting.path, Text(value), "auto" if setting.automatic else "recipe", Text(setting.reason))
    console.print(table)


def _print_recipe_and_plan(console, resolved, plan, recipe: dict, describe) -> None:
    from rich.syntax import Syntax
    from rich.table import Table
    from rich.text import Text

    from alignkit.recipe.yamlio import dump_yaml

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
        table.add_row(key, Text(value))
    console.print(table)
