"""`alignkit eval --dry-run` and `alignkit data eval`: what an evaluation would measure, before any model loads.

The dry run checks what the run checks first (every model is a model folder or a Hub id, the lm-eval tasks
exist, the prompts carry the scorers' columns, the judge is a one-output sequence classifier) and lists the
models, parts and what the cache already holds. `alignkit data eval` shows the held-out prompts as
`alignkit data sample` shows a sample run's. Writes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from alignkit.evaluation.recipe import PARTS


def plan_document(resolved) -> dict[str, Any]:
    """The dry run as one JSON-ready document; raises UserError for what the run would refuse."""
    from alignkit.evaluation.models import fingerprint
    from alignkit.evaluation.run import check_inputs
    from alignkit.quiet import quiet_libraries

    quiet_libraries()
    recipe = resolved.recipe
    prompts = check_inputs(recipe, str(resolved.source))
    section = recipe.eval
    return {
        "method": resolved.method,
        "recipe_name": resolved.name,
        "source": str(resolved.source),
        "recipe": recipe.model_dump(mode="json"),
        "output_dir": str(resolved.output_dir),
        "models": [
            {"name": m.name, "path": m.path, "fingerprint": fingerprint(m.path, m.revision)} for m in section.models
        ],
        "baseline": section.baseline_name,
        "parts": [part for part in PARTS if getattr(section, part) is not None],
        "prompts": len(prompts) if prompts is not None else 0,
    }


def print_dry_run(resolved, *, as_json: bool, notices_to) -> None:
    document = plan_document(resolved)
    if as_json:
        print(json.dumps(document, indent=2))
        return
    notices_to(resolved.notices)
    print(f"eval recipe {document['recipe_name']} ({document['source']})")
    for model in document["models"]:
        mark = " (baseline)" if model["name"] == document["baseline"] and "judge" in document["parts"] else ""
        print(f"  model {model['name']}: {model['path']}{mark}")
    print(f"  measures: {', '.join(document['parts'])}")
    if document["prompts"]:
        print(f"  held-out prompts: {document['prompts']}")
    print(f"  output: {document['output_dir']} (finished measurements there are reused)")
    print("dry run: recipe valid; nothing loaded or written.")


def report_eval_data(recipe_ref: str, overrides: tuple[str, ...], show: int, as_json: bool) -> None:
    """`alignkit data eval`: the held-out prompts eval.generate answers (as `alignkit data sample` shows them)."""
    from alignkit.errors import UserError
    from alignkit.evaluation.generative import policy_recipe
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.sampling.prompts import load_prompts

    resolved = resolve_recipe("eval", recipe_ref, overrides=list(overrides))
    recipe = resolved.recipe
    if recipe.eval.generate is None:
        raise UserError("this eval recipe reads no prompts (it has no eval.generate)", source=str(resolved.source))
    found = load_prompts(policy_recipe(recipe, recipe.eval.models[0]), str(resolved.source))
    document = {
        "prompts": len(found.prompts),
        "read_as": found.read_as,
        "scorer_columns": sorted(found.columns),
        "examples": [{"messages": p.messages, "row": p.row} for p in found.prompts[:show]],
    }
    if as_json:
        print(json.dumps(document, indent=2))
        return
    print(f"{document['prompts']} held-out prompts; read as: {'; '.join(document['read_as'])}")
    print(f"columns the scorers may read: {', '.join(document['scorer_columns']) or 'none'}")
    for example in document["examples"]:
        print(json.dumps(example, ensure_ascii=False))
