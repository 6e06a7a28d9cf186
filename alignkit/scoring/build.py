"""Scorers built from their specs, and a candidate's weighted total.

Every scorer has a `label` (its column in reports), a `weight`, `score(prompts, completions, rows, tokens=...)`
giving one value (or None: it could not say) per candidate, and `close()`, which frees what it holds (a reward
model). The lists `score` takes are parallel, one entry per candidate: `prompts[i]` the prompt as chat
messages, `completions[i]` the generated text, `rows[i]` the prompt row's columns, and the optional
`tokens[i]` the completion's length in tokens (only `overlong` needs it, and refuses to score without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from alignkit.scoring.custom import PythonScorer
from alignkit.scoring.reasoning import MathScorer, OverlongScorer, ThinkFormatScorer
from alignkit.scoring.reward_model import RewardModelScorer
from alignkit.scoring.rules import ExactMatchScorer, RegexScorer
from alignkit.scoring.specs import (
    ExactMatchSpec,
    MathSpec,
    OverlongSpec,
    PythonSpec,
    RegexSpec,
    RewardModelSpec,
    ScorerSpec,
    ThinkFormatSpec,
)
from alignkit.scoring.specs import labels as default_labels

_SCORERS = {
    RewardModelSpec: RewardModelScorer,
    ExactMatchSpec: ExactMatchScorer,
    RegexSpec: RegexScorer,
    PythonSpec: PythonScorer,
    MathSpec: MathScorer,
    ThinkFormatSpec: ThinkFormatScorer,
    OverlongSpec: OverlongScorer,
}


class Scorer(Protocol):
    label: str
    weight: float

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]: ...

    def close(self) -> None: ...


def build_scorers(specs: Sequence[ScorerSpec], labels: Sequence[str] | None = None) -> list[Scorer]:
    """One scorer per spec, named by `labels` (default: `specs.labels(specs)`); a reward model loads once however
    many specs name it. If one cannot be built, those built so far are closed before the error rises."""
    names = default_labels(specs) if labels is None else list(labels)
    if len(names) != len(specs):
        raise ValueError(f"{len(names)} labels for {len(specs)} scorers")
    built: list[Scorer] = []
    try:
        for spec, name in zip(specs, names, strict=True):
            built.append(_SCORERS[type(spec)](spec, name))
    except BaseException:
        close_scorers(built)
        raise
    return built


def close_scorers(scorers: Sequence[Scorer]) -> None:
    """Close every scorer (freeing the reward models)."""
    for scorer in scorers:
        scorer.close()


def weighted_total(scorers: Sequence[Scorer], values: dict[str, list[float | None]]) -> list[float]:
    """Each candidate's sum of weight x value over the scorers, a None value counting as 0.

    `values` maps each scorer's label to its values, one per candidate, in the same order.
    """
    counts = {len(values[scorer.label]) for scorer in scorers}
    if len(counts) > 1:
        raise ValueError(f"the scorers' value lists differ in length: {sorted(counts)}")
    totals = [0.0] * (counts.pop() if counts else 0)
    for scorer in scorers:
        for index, value in enumerate(values[scorer.label]):
            if value is not None:
                totals[index] += scorer.weight * value
    return totals
