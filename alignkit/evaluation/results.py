"""The scorecard of `alignkit eval`: eval_results.json, the table on the terminal, and a PNG of the models.

Every measurement is one `Score` row: the part that made it (harness, generate, judge, loss), the task, the
metric, the model, the value, its standard error where the engine gives one, and how many samples it rests
on. The JSON holds the rows with the models (path, fingerprint), the seed and the versions; the table puts
the models side by side, one line per task and metric; the PNG draws one panel per metric.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alignkit.files import atomic_write

RESULTS_FILE = "eval_results.json"
PLOT_FILE = "eval_results.png"
TABLE_FILE = "eval_results.md"


@dataclass(frozen=True)
class Score:
    part: str
    task: str
    metric: str
    model: str
    value: float | None
    samples: int
    stderr: float | None = None
    higher_is_better: bool | None = None


def write_results(out: Path, header: dict[str, Any], scores: list[Score]) -> dict[str, Any]:
    """Write eval_results.json (and the Markdown table beside it); returns what was written."""
    document = {**header, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": [asdict(s) for s in scores]}
    atomic_write(out / RESULTS_FILE, json.dumps(document, indent=2) + "\n")
    atomic_write(out / TABLE_FILE, markdown_table(scores, [m["name"] for m in header["models"]]) + "\n")
    return document


def rows_by_metric(scores: list[Score], models: list[str]) -> list[tuple[tuple[str, str, str], list[Score | None]]]:
    """(part, task, metric) -> the score of each model in `models` order (None where it has none), in the order
    the measurements were made."""
    keyed: dict[tuple[str, str, str], dict[str, Score]] = {}
    for score in scores:
        keyed.setdefault((score.part, score.task, score.metric), {})[score.model] = score
    return [(key, [found.get(name) for name in models]) for key, found in keyed.items()]


def show(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric.endswith(("rate", "acc", "acc_norm")) or ":" in metric or metric in ("exact_match", "win_rate"):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def markdown_table(scores: list[Score], models: list[str]) -> str:
    lines = ["| part | task | metric | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for (part, task, metric), row in rows_by_metric(scores, models):
        cells = [show(s.value, metric) if s else "-" for s in row]
        lines.append(f"| {part} | {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(scores: list[Score], models: list[str], console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="alignkit eval", title_justify="left")
    for column in ("part", "task", "metric", *models):
        table.add_column(column, overflow="fold", justify="right" if column in models else "left")
    for (part, task, metric), row in rows_by_metric(scores, models):
        cells = [Text(show(s.value, metric) if s else "-") for s in row]
        table.add_row(part, Text(task), Text(metric), *cells)
    console.print(table)


def plot_results(scores: list[Score], models: list[str], path: Path) -> Path | None:
    """One panel per (task, metric), a bar per model; None when nothing has a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, row) for key, row in rows_by_metric(scores, models) if any(s and s.value is not None for s in row)]
    if not panels:
        return None
    columns = min(3, len(panels))
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.0 * lines), squeeze=False)
    for axis, ((_, task, metric), row) in zip(axes.flat, panels, strict=False):
        values = [s.value if s and s.value is not None else 0.0 for s in row]
        axis.bar(range(len(models)), values, color=[f"C{i}" for i in range(len(models))])
        axis.set_xticks(range(len(models)), models, rotation=20, fontsize=8)
        axis.set_title(f"{task}: {metric}", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    fig.suptitle("alignkit eval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
