"""What `alignkit sample --dry-run` prints: the resolved recipe, where the prompts come from, the generation
settings, the scorers and the selection, and what the output folder would do (new, resume, refused).

Checks what it can without loading a model: local data files exist, `python:` scorers import, a local reward
model is a sequence classifier. Prompt columns are checked when the run reads the rows. Light: no torch.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from alignkit.errors import UserError


def plan_document(resolved, *, overwrite: bool) -> dict[str, Any]:
    """The dry run as one JSON-ready document; raises UserError for what the run would refuse."""
    from alignkit.data.sources import check_local
    from alignkit.launch.start import prepare_output_dir
    from alignkit.scoring.specs import check_scorers, labels

    recipe, source = resolved.recipe, str(resolved.source)
    for index, data_source in enumerate(recipe.data.datasets):
        check_local(data_source, index)
    problems = check_scorers(recipe.sample.scorers, None, where="sample.scorers", source=source)
    if problems:
        raise UserError(problems)
    action = prepare_output_dir(resolved, overwrite=overwrite)
    section = recipe.sample
    return {
        "method": resolved.method,
        "recipe_name": resolved.name,
        "source": source,
        "recipe": recipe.model_dump(mode="json"),
        "output_dir": str(resolved.output_dir),
        "output_action": action,
        "prompt_sources": [s.path for s in recipe.data.datasets if s.role != "test"],
        "candidates_per_prompt": section.num_samples,
        "backend": {"requested": section.backend, "decided": _backend_note(section.backend)},
        "scorers": [
            {"label": label, "weight": spec.weight}
            for label, spec in zip(labels(section.scorers), section.scorers, strict=True)
        ],
        "select": section.select,
        "notices": resolved.notices,
    }


def _backend_note(requested: str) -> str:
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is None:
        return "transformers (vllm is not installed)"
    return "vllm when a CUDA device is present at run time, else transformers"


_ACTIONS = {
    "new": "a new run",
    "resume": "resumes the unfinished run there (finished shards are kept)",
    "replace": "replaces the run there (--overwrite); the old one is kept aside until generation starts",
}


def print_dry_run(resolved, *, as_json: bool, overwrite: bool, notices_to) -> None:
    document = plan_document(resolved, overwrite=overwrite)
    if as_json:
        print(json.dumps(document, indent=2))
        return
    from rich.syntax import Syntax

    from alignkit.recipe.yamlio import dump_yaml
    from alignkit.terminal import output_console

    notices_to(resolved.notices)
    console = output_console()
    console.print(f"[bold]sample[/bold] recipe [bold]{resolved.name}[/bold] ({resolved.source})")
    console.print(Syntax(dump_yaml(document["recipe"]), "yaml", background_color="default", word_wrap=True))
    section = resolved.recipe.sample
    lines = [
        f"prompts from: {', '.join(document['prompt_sources'])}",
        f"candidates: {section.num_samples} per prompt, temperature {section.temperature:g},"
        f" max_new_tokens {section.max_new_tokens}, seed {section.seed}",
        f"backend: {document['backend']['decided']}",
        "score: " + " + ".join(f"{s['weight']:g} x {s['label']}" for s in document["scorers"]),
        f"select: {section.select}",
        f"output: {document['output_dir']} ({_ACTIONS[document['output_action']]})",
    ]
    for line in lines:
        console.print(f"  {line}", highlight=False, markup=False)
    console.print("[green]dry run: recipe valid; nothing loaded or written.[/green]")
