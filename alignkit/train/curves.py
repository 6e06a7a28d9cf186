"""A PNG of the training curves: loss and learning rate, plus the panels the method adds (rewards, margins and
accuracies for preference methods), drawn from the trainer's log history with matplotlib's file-only backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE_PANELS = (
    ("loss", ("loss", "eval_loss")),
    ("learning rate", ("learning_rate",)),
)


def plot_curves(
    log_history: list[dict[str, Any]], path: Path, title: str, panels: tuple[tuple[str, tuple[str, ...]], ...] = ()
) -> Path | None:
    """Draw the base panels and `panels` (the method's) that have data; returns the file, or None if none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for name, keys in (*BASE_PANELS, *panels):
        series = {}
        for key in keys:
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
