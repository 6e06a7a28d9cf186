"""A PNG of the training curves: loss and learning rate, plus the panels the method adds (rewards, margins and
accuracies for preference methods), drawn from the trainer's log history with matplotlib's file-only backend."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

BASE_PANELS = (
    ("loss", ("loss", "eval_loss")),
    ("learning rate", ("learning_rate",)),
)


def plot_curves(
    log_history: list[dict[str, Any]], path: Path, title: str, panels: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> Path | None:
    """Draw the base panels and `panels` (the method's) that have data; returns the file, or None if none has.

    A panel's key may hold `*` (such as `rewards/*/mean`): every logged key it matches is a line of its own,
    for metrics named after the run's settings (one per reward function).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = sorted({key for row in log_history for key in row})
    drawn = []
    for name, patterns in (*BASE_PANELS, *panels):
        series = {}
        for key in _matching(patterns, logged):
            points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
            if points:
                series[key] = points
        if series:
            drawn.append((name, series))
    if not drawn:
        return None
    fig, axes = plt.subplots(len(drawn), 1, figsize=(7, 2.4 * len(drawn)), sharex=True, squeeze=False)
    for axis, (name, series) in zip(axes[:, 0], drawn, strict=True):
        for key, points in series.items():
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=key)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _matching(patterns: tuple[str, ...], logged: list[str]) -> list[str]:
    """The panel's keys: plain ones as given, patterns expanded to the logged keys they match (sorted)."""
    keys: list[str] = []
    for pattern in patterns:
        if "*" in pattern:
            keys += [key for key in logged if fnmatch.fnmatchcase(key, pattern) and key not in keys]
        elif pattern not in keys:
            keys.append(pattern)
    return keys
