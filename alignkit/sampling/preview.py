"""`alignkit data sample --recipe R`: the prompts a sample run would generate for, before any model loads.

Reads the sources as the run does (alignkit.sampling.prompts), renders a few prompts with the chat template's
generation prompt as the policy will see them, lists the columns the scorers may read, and runs the scorers'
checks against them (a missing `exact_match` column, a `python:` target that does not import, a reward model
that is not a sequence classifier). Loads the tokenizer only, never its code, and writes nothing.
"""

from __future__ import annotations

import json
from typing import Any


def prompt_document(resolved, show: int) -> dict[str, Any]:
    """The preview as one JSON-ready document; raises UserError for what the run would refuse."""
    from alignkit.data.templates import ensure_chat_template
    from alignkit.data.tokenizer import load_tokenizer
    from alignkit.errors import UserError
    from alignkit.sampling.prompts import load_prompts
    from alignkit.scoring.specs import check_scorers

    recipe, source = resolved.recipe, str(resolved.source)
    found = load_prompts(recipe, source)
    problems = check_scorers(recipe.sample.scorers, found.columns, where="sample.scorers", source=source)
    if problems:
        raise UserError(problems)
    tokenizer = load_tokenizer(recipe, run_code=False)
    ensure_chat_template(tokenizer, recipe)
    examples = [
        {
            "messages": prompt.messages,
            "rendered": tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True),
            "row": prompt.row,
        }
        for prompt in found.prompts[:show]
    ]
    return {
        "method": resolved.method,
        "recipe_name": resolved.name,
        "source": source,
        "prompts": len(found.prompts),
        "completions": len(found.prompts) * recipe.sample.num_samples,
        "read_as": found.read_as,
        "scorer_columns": sorted(found.columns),
        "examples": examples,
    }


def report_prompts(recipe_ref: str, overrides: tuple[str, ...], show: int, as_json: bool) -> None:
    """Resolve the sample recipe and print the preview (text or JSON)."""
    from alignkit.quiet import quiet_libraries
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.stages import SAMPLE

    resolved = resolve_recipe(SAMPLE, recipe_ref, overrides=overrides)
    quiet_libraries()
    document = prompt_document(resolved, show)
    if as_json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    from alignkit.terminal import output_console, print_rule

    console = output_console()
    console.print(f"[bold]sample[/bold] recipe [bold]{resolved.name}[/bold] ({resolved.source})")
    lines = [
        f"prompts: {document['prompts']} ({document['completions']} completions at"
        f" {resolved.recipe.sample.num_samples} per prompt)",
        *(f"read: {how}" for how in document["read_as"]),
        f"columns the scorers may read: {', '.join(document['scorer_columns']) or 'none'}",
    ]
    for line in lines:
        console.print(f"  {line}", highlight=False, markup=False)
    for number, example in enumerate(document["examples"], start=1):
        print_rule(console, f"prompt {number}")
        console.print(example["rendered"], highlight=False, markup=False)
        if example["row"]:
            console.print(f"columns: {json.dumps(example['row'], ensure_ascii=False)}", highlight=False, markup=False)
