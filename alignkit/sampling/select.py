"""Choosing training rows from scored candidates: `best`, `best_worst` and `threshold`.

A prompt's record holds its distinct completions (identical ones were merged before scoring and counted in
`copies`), each with every scorer's value and the weighted total. `best` keeps the top candidate as an SFT
row (when it reaches `min_score`, if set); `best_worst` pairs the top (chosen) with the bottom (rejected)
for DPO when their margin is at least `min_margin`; both drop a prompt whose candidates all score the same
(there is nothing to choose between) and count it. `threshold` judges each candidate on its own: every one
scoring at least `min_score` becomes an SFT row. Ties between top candidates go to the one generated first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
"""{"prompt": messages, "row": {...}, "candidates": [{"completion", "tokens", "finish", "copies", "scores",
"total"}]}, as a shard file stores it."""


@dataclass
class Selection:
    """The rows chosen and why the others were not."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """Training rows: {"messages"} for SFT, {"prompt", "chosen", "rejected"} for DPO."""
    chosen: list[dict[str, Any]] = field(default_factory=list)
    """The candidates that went into rows (the chosen side of a pair), for their score statistics."""
    dropped: Counter = field(default_factory=Counter)
    """Prompts (best, best_worst) or candidates (threshold) left out, by reason."""


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _all_tie(candidates: list[dict[str, Any]]) -> bool:
    return len({c["total"] for c in candidates}) <= 1


def _ranked(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # sorted() is stable: among equal totals the earlier-generated candidate stays first.
    return sorted(candidates, key=lambda c: -c["total"])


def select_best(records: list[Record], min_score: float | None) -> Selection:
    out = Selection()
    for record in records:
        if _all_tie(record["candidates"]):
            out.dropped["all candidates tied"] += 1
            continue
        top = _ranked(record["candidates"])[0]
        if min_score is not None and top["total"] < min_score:
            out.dropped["best below min_score"] += 1
            continue
        out.rows.append({"messages": record["prompt"] + _answer(top["completion"])})
        out.chosen.append(top)
    return out


def select_best_worst(records: list[Record], min_margin: float) -> Selection:
    out = Selection()
    for record in records:
        if _all_tie(record["candidates"]):
            out.dropped["all candidates tied"] += 1
            continue
        ranked = _ranked(record["candidates"])
        chosen, rejected = ranked[0], ranked[-1]
        if chosen["total"] - rejected["total"] < min_margin:
            out.dropped["margin below min_margin"] += 1
            continue
        out.rows.append(
            {
                "prompt": record["prompt"],
                "chosen": _answer(chosen["completion"]),
                "rejected": _answer(rejected["completion"]),
            }
        )
        out.chosen.append(chosen)
    return out


def select_threshold(records: list[Record], min_score: float) -> Selection:
    out = Selection()
    for record in records:
        for candidate in record["candidates"]:
            if candidate["total"] < min_score:
                out.dropped["candidates below min_score"] += 1
                continue
            out.rows.append({"messages": record["prompt"] + _answer(candidate["completion"])})
            out.chosen.append(candidate)
    return out


def select(records: list[Record], section) -> Selection:
    """The rows `section.select` keeps from `records`."""
    if section.select == "best":
        return select_best(records, section.min_score)
    if section.select == "best_worst":
        return select_best_worst(records, section.min_margin)
    if section.select == "threshold":
        return select_threshold(records, section.min_score)
    raise ValueError(f"unknown selection {section.select!r}")


def merge_duplicates(completions: list[Any]) -> list[tuple[Any, int]]:
    """Distinct completions (by text, ignoring surrounding whitespace) in first-seen order, with their copies."""
    seen: dict[str, list] = {}
    for completion in completions:
        key = completion.text.strip()
        if key in seen:
            seen[key][1] += 1
        else:
            seen[key] = [completion, 1]
    return [(completion, copies) for completion, copies in seen.values()]
