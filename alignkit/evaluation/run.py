"""`alignkit eval`: check every input, measure every part of every model (reusing the cache), write the scorecard.

Before any weights load, the models, the lm-eval tasks, the prompts and their scorer columns and the judge's
reward model are checked, and every problem is reported at once (exit 2). Then each part runs model by model:
a result whose inputs are unchanged comes from the folder's cache (alignkit.evaluation.cache), anything else
is measured and cached as it finishes. The folder holds eval_results.json, eval_results.md, a PNG, each
model's answers (answers/<model>.jsonl) and the run file; a rerun into the same folder rewrites the
scorecard from the cache and what changed (`--overwrite` measures everything anew). A folder holding anything
but an eval run is refused. Each model that is an alignkit run's output gets its scores in its card.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alignkit import __version__
from alignkit.errors import Problem, UserError
from alignkit.evaluation.cache import CACHE_DIR, ResultCache, file_fingerprints
from alignkit.evaluation.models import fingerprint
from alignkit.evaluation.results import (
    PLOT_FILE,
    RESULTS_FILE,
    TABLE_FILE,
    Score,
    plot_results,
    print_table,
    write_results,
)
from alignkit.files import atomic_write
from alignkit.launch.lock import output_lock
from alignkit.launch.start import freeze_run
from alignkit.run_record import read_info

ANSWERS_DIR = "answers"


def start_eval(
    resolved,
    *,
    overwrite: bool = False,
    argv: list[str] | None = None,
    echo=print,
    num_processes: int = 1,
    table: bool = True,
) -> dict[str, Any]:
    """Evaluate `resolved` (an eval recipe) into its output folder; returns the eval_results document.

    `table` prints the scorecard on the terminal (the CLI's --json prints the document instead); one process
    measures (`num_processes` is the stage interface's, and must be 1).
    """
    if num_processes != 1:
        raise UserError(Problem(source="--num-processes", message="alignkit eval runs as one process; give 1"))
    from alignkit.quiet import quiet_libraries

    quiet_libraries()
    out = resolved.output_dir
    _previous_eval(out)
    prompts = check_inputs(resolved.recipe, str(resolved.source))  # before anything is written
    with output_lock(out, echo=echo):
        previous = _previous_eval(out)
        record = freeze_run(resolved, list(argv or sys.argv), previous=previous)
        overwrite = overwrite or resolved.recipe.training.overwrite_output_dir
        try:
            document, scores = evaluate(resolved, prompts, overwrite=overwrite, echo=echo)
        except UserError:
            if previous is None and not (out / CACHE_DIR).is_dir():
                shutil.rmtree(out, ignore_errors=True)  # bad input found late: leave nothing half written
            raise
        record.mark_finished({"scores": len(document["results"])})
    if table:
        from rich.console import Console

        print_table(scores, [m.name for m in resolved.recipe.eval.models], Console())
    echo(f"wrote {out / RESULTS_FILE}, {out / TABLE_FILE} and {out / PLOT_FILE}")
    return document


def _previous_eval(out: Path) -> dict | None:
    """The run file of an earlier eval in `out` (None for a new folder); any other content is refused."""
    info = read_info(out)
    if info is None:
        if out.exists() and (not out.is_dir() or any(p.name != ".alignkit.lock" for p in out.iterdir())):
            raise UserError(
                Problem(source=str(out), message="exists and holds no alignkit eval; choose another --output-dir")
            )
        return None
    if info.get("method") != "eval":
        raise UserError(
            Problem(
                source=str(out),
                message=f"holds a {info.get('method')} run; an eval writes only into new or eval folders: choose"
                " another --output-dir",
            )
        )
    return info


def evaluate(resolved, prompts, *, overwrite: bool, echo) -> tuple[dict[str, Any], list[Score]]:
    """Measure (the inputs checked, `prompts` read) and write; returns the eval_results document and its scores."""
    recipe, out, source = resolved.recipe, resolved.output_dir, str(resolved.source)
    section = recipe.eval
    cache = ResultCache(out, overwrite=overwrite)
    scores: list[Score] = []
    answers: dict[str, list[str]] = {}
    if section.harness is not None:
        scores += _harness(recipe, cache, source, echo)
    if section.generate is not None:
        found, answers = _generate(recipe, prompts, cache, out, echo)
        scores += found
    if section.judge is not None:
        scores += _judge(recipe, prompts, answers, cache, echo)
    if section.loss is not None:
        scores += _loss(recipe, cache, out, echo)
    header = _header(resolved)
    document = write_results(out, header, scores)
    names = [model.name for model in section.models]
    plot_results(scores, names, out / PLOT_FILE)
    from alignkit.evaluation.card import add_to_cards

    add_to_cards(section.models, scores, out)
    return document, scores


def check_inputs(recipe, source: str):
    """Every problem with the models, tasks, prompts and reward model, before any weights load; the prompts."""
    from alignkit.scoring.reward_model import reward_model_problem
    from alignkit.scoring.specs import check_scorers

    section = recipe.eval
    from alignkit.evaluation.harness import check_model

    problems = []
    for index, model in enumerate(section.models):
        problems += check_model(model.path, source=source, where=f"eval.models.{index}.path")
    if section.harness is not None:
        from alignkit.evaluation.harness import check_tasks

        problems += check_tasks(section.harness.tasks, source=source, where="eval.harness.tasks")
    prompts = None
    if section.generate is not None:
        from alignkit.evaluation.generative import policy_recipe
        from alignkit.sampling.prompts import load_prompts

        prompt_set = load_prompts(policy_recipe(recipe, section.models[0]), source)
        prompts = prompt_set.prompts
        problems += check_scorers(
            section.generate.scorers, prompt_set.columns, where="eval.generate.scorers", source=source
        )
    if section.judge is not None and (found := reward_model_problem(section.judge.reward_model)) is not None:
        problems.append(Problem(source=source, path="eval.judge.reward_model", message=found))
    if problems:
        raise UserError(problems)
    return prompts


def _cached(cache: ResultCache, part: str, name: str, key: dict[str, Any], measure, echo) -> dict[str, Any]:
    """The cached result of `part` for `name` (a model, or `all` for the judge), else `measure()`, cached."""
    found = cache.get(part, name, key)
    if found is not None:
        echo(f"  {name}: {part} reused from the cache (inputs unchanged)")
        return found
    result = measure()
    cache.put(part, name, key, result)
    return result


def _model_key(model, recipe) -> dict[str, Any]:
    return {"model": fingerprint(model.path, model.revision), "dtype": recipe.eval.dtype, "seed": recipe.eval.seed}


def _harness(recipe, cache: ResultCache, source: str, echo) -> list[Score]:
    from alignkit.evaluation.harness import run_harness

    part = recipe.eval.harness
    files = [task for task in part.tasks if task.endswith((".yaml", ".yml"))]
    key_base = {"part": part.model_dump(mode="json"), "files": file_fingerprints([str(Path(f).parent) for f in files])}
    echo(f"lm-eval: {', '.join(part.tasks)}")
    dtype = None if recipe.eval.dtype == "auto" else recipe.eval.dtype
    scores = []
    for index, model in enumerate(recipe.eval.models):
        key = {**_model_key(model, recipe), **key_base, "alignkit": __version__}

        def measure(model=model, index=index) -> dict[str, Any]:
            echo(f"  {model.name}: running lm-eval")
            outcome = run_harness(
                model.path,
                part.tasks,
                num_fewshot=part.num_fewshot,
                limit=part.limit,
                apply_chat_template=part.apply_chat_template,
                batch_size=part.batch_size,
                seed=recipe.eval.seed,
                dtype=dtype,
                source=source,
                model_field=f"eval.models.{index}.path",
                tasks_field="eval.harness.tasks",
            )
            return {"scores": [asdict(score) for score in outcome.results], "versions": outcome.versions}

        found = _cached(cache, "harness", model.name, key, measure, echo)
        for s in found["scores"]:
            scores.append(
                Score(
                    "harness",
                    s["task"],
                    s["metric"],
                    model.name,
                    s["value"],
                    s["samples"],
                    s.get("stderr"),
                    s.get("higher_is_better"),
                )
            )
    return scores


def _generate(recipe, prompts, cache: ResultCache, out: Path, echo) -> tuple[list[Score], dict[str, list[str]]]:
    from alignkit.evaluation.generative import generate_answers

    part = recipe.eval.generate
    sources = [source.path for source in recipe.data.datasets]
    key_base = {"part": part.model_dump(mode="json"), "data": recipe.data.model_dump(mode="json"),
                "files": file_fingerprints(sources), "alignkit": __version__}  # fmt: skip
    echo(f"generate: {len(prompts)} held-out prompts")
    scores, answers = [], {}
    for model in recipe.eval.models:
        key = {**_model_key(model, recipe), **key_base}
        found = _cached(
            cache, "generate", model, key, lambda m=model: generate_answers(recipe, m, prompts, echo=echo), echo
        )
        answers[model.name] = found["completions"]
        _write_answers(out, model.name, prompts, found)
        for label, value in found["scores"].items():
            judged = len(prompts) - found["unjudged"][label]
            scores.append(Score("generate", "heldout", label, model.name, value, judged, higher_is_better=True))
    return scores, answers


def _write_answers(out: Path, name: str, prompts, found: dict[str, Any]) -> None:
    rows = []
    for index, prompt in enumerate(prompts):
        values = {label: found["values"][label][index] for label in found["values"]}
        rows.append({"prompt": prompt.messages, "completion": found["completions"][index],
                     "finish": found["finish"][index], "scores": values, **prompt.row})  # fmt: skip
    atomic_write(out / ANSWERS_DIR / f"{name}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def _judge(recipe, prompts, answers: dict[str, list[str]], cache: ResultCache, echo) -> list[Score]:
    from alignkit.evaluation.judge import head_to_head, judge_scores

    part, section = recipe.eval.judge, recipe.eval
    baseline = section.baseline_name
    # The answers themselves are keyed by their digest: the cache entry stays small however many prompts there are.
    digest = hashlib.sha256(json.dumps(answers, sort_keys=True).encode()).hexdigest()
    judge_key = {"reward_model": fingerprint(part.reward_model), "answers": digest, "alignkit": __version__}
    echo(f"judge: {part.reward_model} against {baseline}")
    rewards = _cached(
        cache, "judge", "all", judge_key, lambda: judge_scores(part.reward_model, part.batch_size, prompts, answers,
                                                                echo=echo), echo,
    )  # fmt: skip
    scores = []
    task = f"vs {baseline}"
    for model in section.models:
        if model.name == baseline:
            scores.append(Score("judge", task, "mean_reward", model.name, _mean(rewards[model.name]), len(prompts)))
            continue
        same = [a == b for a, b in zip(answers[model.name], answers[baseline], strict=True)]
        found = head_to_head(rewards[model.name], rewards[baseline], same)
        for metric in ("win_rate", "tie_rate", "loss_rate", "mean_reward"):
            better = {"loss_rate": False, "tie_rate": None}.get(metric, True)
            scores.append(
                Score("judge", task, metric, model.name, found[metric], len(prompts), higher_is_better=better)
            )
    return scores


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _loss(recipe, cache: ResultCache, out: Path, echo) -> list[Score]:
    from alignkit.evaluation.heldout_loss import heldout_loss

    part = recipe.eval.loss
    key_base = {"part": part.model_dump(mode="json"), "files": file_fingerprints([s.path for s in part.datasets]),
                "alignkit": __version__}  # fmt: skip
    echo("loss: held-out rows")
    scores = []
    for model in recipe.eval.models:
        key = {**_model_key(model, recipe), **key_base}
        found = _cached(
            cache, "loss", model.name, key, lambda m=model: heldout_loss(recipe, m, str(out), echo=echo), echo
        )
        for metric in ("loss", "perplexity"):
            scores.append(
                Score("loss", "heldout", metric, model.name, found[metric], found["rows"], higher_is_better=False)
            )
    return scores


def _header(resolved) -> dict[str, Any]:
    from alignkit.envinfo import PACKAGES, package_version

    section = resolved.recipe.eval
    return {
        "alignkit_version": __version__,
        "recipe": resolved.name,
        "seed": section.seed,
        "baseline": section.baseline_name,
        "models": [
            {"name": m.name, "path": m.path, "revision": m.revision, "fingerprint": fingerprint(m.path, m.revision)}
            for m in section.models
        ],
        "versions": {name: package_version(name) for name in (*PACKAGES, "torch", "lm-eval")},
    }
