"""`alignkit eval --dry-run` and `alignkit data eval`: what an evaluation would measure, before any model loads.

The dry run checks what can be judged without torch: every model is a model folder (or a Hub id), lm-eval
is installed and the task files exist, the local data files exist, `python:` scorers import, the judge is a
one-output sequence classifier. Task names and the prompts' scorer columns are checked when the run starts
(lm-eval's task index and the rows need the heavy stack). `alignkit data eval` shows the held-out prompts as
`alignkit data sample` shows a sample run's. Writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkit.evaluation.recipe import PARTS


def plan_document(resolved) -> dict[str, Any]:
    """The dry run as one JSON-ready document; raises UserError for what the run would refuse."""
    from alignkit.evaluation.models import fingerprint

    recipe = resolved.recipe
    light_checks(recipe, str(resolved.source))
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
        "prompt_sources": [s.path for s in recipe.data.datasets] if recipe.data is not None else [],
    }


def light_checks(recipe, source: str) -> None:
    """Raise UserError listing what the dry run can find wrong without the heavy stack (see the docstring)."""
    import importlib.util

    from alignkit.data.sources import check_local
    from alignkit.errors import Problem, UserError
    from alignkit.evaluation.harness import INSTALL, check_model, is_task_file
    from alignkit.scoring.reward_model import reward_model_problem
    from alignkit.scoring.specs import check_scorers

    section, problems = recipe.eval, []
    for index, model in enumerate(section.models):
        problems += check_model(model.path, source=source, where=f"eval.models.{index}.path")
    if section.harness is not None:
        if importlib.util.find_spec("lm_eval") is None:
            problems.append(Problem(source=source, path="eval.harness.tasks", message=INSTALL))
        for index, task in enumerate(section.harness.tasks):
            if is_task_file(task) and not Path(task).expanduser().is_file():
                problems.append(
                    Problem(source=source, path=f"eval.harness.tasks.{index}", message=f"no such task file: {task}")
                )
    if section.generate is not None:
        for index, data_source in enumerate(recipe.data.datasets):
            check_local(data_source, index)
        problems += check_scorers(section.generate.scorers, None, where="eval.generate.scorers", source=source)
    if section.judge is not None and (found := reward_model_problem(section.judge.reward_model)) is not None:
        problems.append(Problem(source=source, path="eval.judge.reward_model", message=found))
    if section.loss is not None:
        for index, data_source in enumerate(section.loss.datasets):
            check_local(data_source, index)
    if problems:
        raise UserError(problems)


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
    if document["prompt_sources"]:
        print(f"  held-out prompts: {', '.join(document['prompt_sources'])}")
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
