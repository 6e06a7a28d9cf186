"""The rule scorers: `exact_match` (the completion against the row's reference answer) and `regex`.

exact_match compares normalised texts: surrounding whitespace stripped, case folded, inner whitespace
collapsed, surrounding quotes and a trailing period dropped. Two numbers compare as numbers, so "57",
"57.0", " 57 " and "57." agree, as do "1,000" and "1000" (commas only as thousands separators), within a
relative tolerance of 1e-9. A reference may be a string, a JSON number, or a list of accepted answers (any
one matching counts); a row without one (None) gets no score (None), not a 0.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from alignkit.errors import Problem, UserError

if TYPE_CHECKING:
    from alignkit.scoring.specs import ExactMatchSpec, RegexSpec

_QUOTES = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’"}
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?")
_GROUPED_NUMBER = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
RELATIVE_TOLERANCE = 1e-9


def normalise(text: str) -> str:
    """`text` as exact_match compares it: stripped, casefolded, one space between words, unquoted, no final period."""
    text = " ".join(text.split()).casefold()
    while True:
        before = text
        if text.endswith("."):
            text = text[:-1].rstrip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text


def as_number(text: str) -> float | None:
    """The finite number a normalised text writes, or None when it writes something else."""
    if _GROUPED_NUMBER.fullmatch(text):
        text = text.replace(",", "")
    elif not _PLAIN_NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def answers_match(completion: str, reference: Any) -> bool:
    """Whether the completion gives the reference answer (a string, a number, or a list of accepted ones)."""
    if isinstance(reference, list | tuple):
        return any(answers_match(completion, item) for item in reference if item is not None)
    # A JSON number's text (57, 57.5, 1e+20) parses back to the same number.
    given, expected = normalise(completion), normalise(str(reference))
    number, wanted = as_number(given), as_number(expected)
    if number is not None and wanted is not None:
        return math.isclose(number, wanted, rel_tol=RELATIVE_TOLERANCE)
    return given == expected


class ExactMatchScorer:
    """1.0 when the completion gives the row's reference answer, 0.0 when not, None when the row has none."""

    def __init__(self, spec: ExactMatchSpec, label: str):
        self.label = label
        self.weight = spec.weight
        self.column = spec.column

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        values: list[float | None] = []
        for completion, row in zip(completions, rows, strict=True):
            reference = row.get(self.column)
            if reference is None:
                values.append(None)
                continue
            if isinstance(reference, dict):
                raise UserError(
                    Problem(
                        source="prompt rows",
                        path=self.column,
                        message="holds a mapping; exact_match compares the completion with a string, a number or a"
                        " list of them: set column to the one holding the reference answer",
                    )
                )
            values.append(1.0 if answers_match(completion, reference) else 0.0)
        return values

    def close(self) -> None:
        """Nothing to free."""


class RegexScorer:
    """1.0 when the pattern is found in the completion (`re.search`), else 0.0."""

    def __init__(self, spec: RegexSpec, label: str):
        self.label = label
        self.weight = spec.weight
        self.pattern = re.compile(spec.pattern)

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        return [1.0 if self.pattern.search(completion) else 0.0 for completion in completions]

    def close(self) -> None:
        """Nothing to free."""
