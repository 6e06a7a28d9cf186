"""What the data layer did: rows per source, split sizes, token lengths, truncation, and examples.

`DataReport` is plain data (JSON round-trip) so it is cached with the prepared datasets and printed by
`alignkit data`. `examples` re-reads prepared rows and returns each one's rendered text and the text spans
that carry the loss, which is what a user must check before spending GPU hours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SourceReport:
    """One source of the mixture and what became of its rows."""

    path: str
    split: str
    role: str
    weight: float
    format: str = ""
    name: str | None = None
    rows_in: int = 0
    """Rows found (after the split's slice)."""
    decontaminated: int = 0
    """Rows removed because they contain benchmark text."""
    rows_out: int = 0
    """Rows used, after weighting (copies counted), decontamination and dropping (train and test together)."""
    train_rows: int = 0
    test_rows: int = 0
    dropped: int = 0
    """Rows dropped: no token left to train on (after truncation), an empty/identical response, or a prompt
    longer than an online method leaves room for."""
    loss: str = ""
    """Which tokens of this source's rows carry the loss."""


@dataclass
class LengthStats:
    """Token lengths of the training rows (before truncation)."""

    count: int = 0
    min: int = 0
    mean: float = 0.0
    median: float = 0.0
    p95: float = 0.0
    max: int = 0
    total: int = 0

    @classmethod
    def of(cls, lengths) -> LengthStats:
        import numpy as np

        values = np.asarray(lengths, dtype=np.int64)
        if values.size == 0:
            return cls()
        return cls(
            count=int(values.size),
            min=int(values.min()),
            mean=round(float(values.mean()), 1),
            median=float(np.median(values)),
            p95=float(np.percentile(values, 95)),
            max=int(values.max()),
            total=int(values.sum()),
        )


@dataclass
class DataReport:
    """Everything `prepare_data` decided, for logs, `alignkit data` and the model card."""

    method: str
    sources: list[SourceReport] = field(default_factory=list)
    train_rows: int = 0
    test_rows: int = 0
    max_length: int | None = None
    train_lengths: LengthStats = field(default_factory=LengthStats)
    truncated: int = 0
    """Training rows longer than max_length (cut to it for sft; cut by the trainer for dpo/orpo)."""
    prompt_truncated: int = 0
    """dpo/orpo: prompts cut from the left to max_prompt_length."""
    desirable_rows: int = 0
    """Unpaired rows: training rows labelled desirable (a pair's chosen response counts here)."""
    undesirable_rows: int = 0
    """Unpaired rows: training rows labelled undesirable (a pair's rejected response counts here)."""
    chat_template: str = ""
    """Where the chat template came from: recipe, tokenizer, chatml fallback, or none (cpt)."""
    loss: str = ""
    """Which tokens carry the loss, in words."""
    notices: list[str] = field(default_factory=list)
    fingerprint: str = ""
    cached: bool = False
    """True when the prepared data came from the cache of an earlier run."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        data = dict(data)
        data["sources"] = [SourceReport(**s) for s in data.get("sources", [])]
        data["train_lengths"] = LengthStats(**data.get("train_lengths", {}))
        return cls(**data)

    def summary_lines(self) -> list[str]:
        """One line per source and one for the totals, for logs."""
        lines = []
        for s in self.sources:
            extra = f", {s.decontaminated} decontaminated" if s.decontaminated else ""
            extra += f", {s.dropped} dropped" if s.dropped else ""
            lines.append(
                f"{s.path} [{s.split}] {s.format}: {s.rows_in} rows found, weight {s.weight:g} ({s.role})"
                f" -> {s.rows_out} used{extra}"
            )
        lines.append(f"{self.method} data: {self.train_rows} train rows, {self.test_rows} test rows")
        return lines


def trained_spans(tokenizer, input_ids: list[int], mask: list[int]) -> tuple[str, list[str]]:
    """The decoded example and the decoded runs of tokens whose mask is 1."""
    runs: list[str] = []
    start = None
    for position, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = position
        elif not bit and start is not None:
            runs.append(tokenizer.decode(input_ids[start:position], skip_special_tokens=False))
            start = None
    return tokenizer.decode(input_ids, skip_special_tokens=False), runs


def examples(prepared, tokenizer, count: int) -> list[dict[str, Any]]:
    """The first `count` training rows as {text, trained} (plus prompt/chosen/rejected for preference data,
    prompt/completion/label for unpaired rows)."""
    dataset = prepared.train
    out: list[dict[str, Any]] = []
    for row in dataset.select(range(min(count, len(dataset)))):
        if "input_ids" in row:
            text, runs = trained_spans(tokenizer, row["input_ids"], row["assistant_masks"])
            out.append({"text": text, "trained": runs})
        elif "label" in row:
            out.append(
                {
                    "text": row["prompt"] + row["completion"],
                    "trained": [row["completion"]],
                    "prompt": row["prompt"],
                    "completion": row["completion"],
                    "label": row["label"],
                }
            )
        elif "chosen" in row:
            out.append(
                {
                    "text": row["prompt"] + row["chosen"],
                    "trained": [row["chosen"], row["rejected"]],
                    "prompt": row["prompt"],
                    "chosen": row["chosen"],
                    "rejected": row["rejected"],
                }
            )
        else:
            out.append({"text": row["text"], "trained": [row["text"]]})
    return out
