"""Decontamination: removing training rows that contain benchmark text, from local files only.

Benchmark files are `.txt` (one string per line) or `.jsonl` (each line a JSON string, or an object whose
string values are all benchmark strings). Text is compared as lowercase words, so punctuation and spacing
do not hide a match. A row is removed when its words contain a whole benchmark string, or any run of
`NGRAM` consecutive words of a longer one (a paraphrased frame around a copied passage still counts).
Strings shorter than `MIN_WORDS` words are ignored: "yes" or "return x" would remove innocent rows.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import Problem, UserError

NGRAM = 13
"""Word n-gram length that counts as contamination (the GPT-3 paper's choice)."""
MIN_WORDS = 3
"""Benchmark strings with fewer words are skipped."""

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class Benchmarks:
    """Word tuples to look for, grouped by length (strings shorter than NGRAM, and NGRAM-grams of longer ones)."""

    by_length: dict[int, set[tuple[str, ...]]] = field(default_factory=dict)
    strings: int = 0
    skipped_short: int = 0

    def add(self, text: str) -> None:
        tokens = tuple(words(text))
        if len(tokens) < MIN_WORDS:
            if tokens:
                self.skipped_short += 1
            return
        self.strings += 1
        if len(tokens) <= NGRAM:
            self.by_length.setdefault(len(tokens), set()).add(tokens)
            return
        grams = self.by_length.setdefault(NGRAM, set())
        for start in range(len(tokens) - NGRAM + 1):
            grams.add(tokens[start : start + NGRAM])

    def __bool__(self) -> bool:
        return bool(self.by_length)

    def contains(self, text: str) -> bool:
        tokens = words(text)
        for length, grams in self.by_length.items():
            for start in range(len(tokens) - length + 1):
                if tuple(tokens[start : start + length]) in grams:
                    return True
        return False


def load_benchmarks(paths: list[str]) -> Benchmarks:
    """Read the benchmark files named by `data.decontaminate`.

    Raises:
        UserError: for a missing file, an unsupported extension, or a malformed JSON line.
    """
    benchmarks = Benchmarks()
    problems = []
    for index, name in enumerate(paths):
        path = Path(name).expanduser()
        where = f"data.decontaminate.{index}"
        if not path.is_file():
            problems.append(
                Problem(
                    source=name, path=where, message="benchmark file not found (decontamination reads local files only)"
                )
            )
            continue
        suffix = path.suffix.lower()
        if suffix not in (".txt", ".jsonl"):
            problems.append(Problem(source=name, path=where, message="benchmark files must be .txt or .jsonl"))
            continue
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if suffix == ".txt":
                    benchmarks.add(line)
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    problems.append(
                        Problem(source=f"{path}:{number}", path=where, message=f"not valid JSON ({err.msg})")
                    )
                    break
                for text in _strings(value):
                    benchmarks.add(text)
    if problems:
        raise UserError(problems)
    return benchmarks


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("role", "from"):  # message roles are not content
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def row_text(row: dict[str, Any], columns: tuple[str, ...]) -> str:
    """Every string in the row's format columns (message contents included), joined."""
    return "\n".join(_strings([row.get(c) for c in columns]))
