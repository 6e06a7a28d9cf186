"""Generative checks of `alignkit eval`: each model answers the held-out prompts, the scorers mark the answers.

Generation is `alignkit sample`'s (the same prompt reading, chat template and transformers generation, a LoRA
adapter merged), greedy by default, one completion per prompt, seeded by the recipe. Each scorer's mean over
the prompts is its score (for exact_match or math: the share answered right); a prompt a scorer cannot judge
(None) is left out of that scorer's mean and counted. The completions are kept for the judge and the report.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from alignkit.recipe.sections import ModelSection


def policy_recipe(recipe, model) -> SimpleNamespace:
    """What sampling's prompt reader and generator read, for one model of an eval recipe."""
    part = recipe.eval.generate
    return SimpleNamespace(
        model=ModelSection(name_or_path=model.path, revision=model.revision, dtype=recipe.eval.dtype),
        data=recipe.data,
        sample=SimpleNamespace(prompt_column=part.prompt_column, max_prompts=part.max_prompts),
    )


def generate_answers(recipe, model, prompts, *, echo) -> dict[str, Any]:
    """The model's completion of every prompt, scored by each scorer: {completions, finish, scores, counts}."""
    from alignkit.sampling.generation import GenerationSettings, load_generator
    from alignkit.scoring.build import build_scorers, close_scorers
    from alignkit.scoring.specs import labels

    part = recipe.eval.generate
    settings = GenerationSettings(
        num_samples=1,
        max_new_tokens=part.max_new_tokens,
        temperature=part.temperature,
        stop=tuple(part.stop),
        batch_size=part.batch_size,
    )
    generator = load_generator(policy_recipe(recipe, model), "transformers")
    try:
        echo(f"  {model.name}: generating {len(prompts)} answers")
        done = generator.generate([p.messages for p in prompts], settings, seed=recipe.eval.seed)
    finally:
        generator.close()
    completions = [candidates[0] for candidates in done]
    texts, tokens = [c.text for c in completions], [c.tokens for c in completions]
    messages, rows = [p.messages for p in prompts], [p.row for p in prompts]
    scorers = build_scorers(part.scorers, labels(part.scorers))
    try:
        values = {scorer.label: scorer.score(messages, texts, rows, tokens=tokens) for scorer in scorers}
    finally:
        close_scorers(scorers)
    return {
        "completions": texts,
        "finish": [c.finish for c in completions],
        "scores": {label: _mean(found) for label, found in values.items()},
        "unjudged": {label: sum(v is None for v in found) for label, found in values.items()},
        "values": values,
    }


def _mean(values: list[float | None]) -> float | None:
    judged = [v for v in values if v is not None]
    return sum(judged) / len(judged) if judged else None
