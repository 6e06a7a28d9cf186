"""What a finished `alignkit sample` run says about itself: `alignkit_sample.json`, the score-distribution PNG
and the card (README.md) of the output folder.

Score statistics are over distinct candidates (identical completions were merged before scoring), for every
scorer and the weighted total, once over all candidates and once over the selected ones, so a reader sees
what selection shifted.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from alignkit import __version__

SUMMARY_FILE = "alignkit_sample.json"
CANDIDATES_FILE = "candidates.jsonl"
SELECTED_FILE = "selected.jsonl"
PLOT_FILE = "scores.png"
CARD_FILE = "README.md"


def stats(values: list[float | None]) -> dict[str, float | int] | None:
    """count, mean, std, min, max of the numbers among `values` (None where a scorer gave none)."""
    numbers = [v for v in values if v is not None and not math.isnan(v)]
    if not numbers:
        return None
    return {
        "count": len(numbers),
        "mean": statistics.fmean(numbers),
        "std": statistics.pstdev(numbers),
        "min": min(numbers),
        "max": max(numbers),
    }


def score_stats(candidates: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Statistics of each scorer's values and of the total over `candidates`."""
    out = {label: stats([c["scores"].get(label) for c in candidates]) for label in labels}
    out["total"] = stats([c["total"] for c in candidates])
    return out


def plot_scores(all_candidates: list[dict], selected: list[dict], labels: list[str], path: Path) -> Path | None:
    """Histograms of the total and of each scorer: every candidate against the selected ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("total", [c["total"] for c in all_candidates], [c["total"] for c in selected])]
    for label in labels:
        values = [c["scores"].get(label) for c in all_candidates]
        chosen = [c["scores"].get(label) for c in selected]
        panels.append((label, [v for v in values if v is not None], [v for v in chosen if v is not None]))
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), squeeze=False)
    for axis, (name, values, chosen) in zip(axes[:, 0], panels, strict=True):
        bins = min(30, max(5, len(set(values))))
        axis.hist(values, bins=bins, alpha=0.5, label=f"all candidates ({len(values)})")
        if chosen:
            axis.hist(chosen, bins=bins, alpha=0.7, label=f"selected ({len(chosen)})")
        axis.set_ylabel(name)
        axis.legend(fontsize=8)
    axes[0, 0].set_title("score distributions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_card(recipe, summary: dict[str, Any], source: str) -> str:
    """The output folder's README: what was generated, how it was scored and selected, and how to train on it."""
    section = recipe.sample
    counts = summary["counts"]
    lines = [
        f"# {recipe.description or 'Rejection sampling'}",
        "",
        f"Made with alignkit {__version__} (`alignkit sample --recipe {source}`).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| policy | `{recipe.model.name_or_path}` |",
        f"| prompts | {counts['prompts']} ({', '.join(summary['prompts_read_as'])}) |",
        f"| generation | {section.num_samples} per prompt, temperature {section.temperature:g}, top_p"
        f" {section.top_p:g}, top_k {section.top_k or 'off'}, max_new_tokens {section.max_new_tokens},"
        f" seed {section.seed}, backend {summary['backend']} |",
        f"| scorers | {', '.join(f'{label} x {weight:g}' for label, weight in summary['weights'].items())} |",
        f"| selection | {section.select}{_threshold(section)} |",
        "",
        "| count | value |",
        "|---|---|",
        *(f"| {name.replace('_', ' ')} | {value} |" for name, value in counts.items()),
        *(f"| dropped: {reason} | {n} |" for reason, n in summary["dropped"].items()),
        "",
        "| score | all candidates: mean (min..max) | selected: mean (min..max) |",
        "|---|---|---|",
    ]
    for label in [*summary["weights"], "total"]:
        every, chosen = summary["scores"].get(label), summary["selected_scores"].get(label)
        lines.append(f"| {label} | {_cell(every)} | {_cell(chosen)} |")
    lines += [
        "",
        f"`{SELECTED_FILE}` holds the training rows ({_row_kind(section.select)}); train on it with",
        "",
        "```yaml",
        "data:",
        "  datasets:",
        f"  - path: {Path(recipe.training.output_dir or '.') / SELECTED_FILE}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _threshold(section) -> str:
    if section.select == "best_worst":
        return f", min_margin {section.min_margin:g}"
    return f", min_score {section.min_score:g}" if section.min_score is not None else ""


def _row_kind(select: str) -> str:
    return "prompt/chosen/rejected preference pairs" if select == "best_worst" else "conversations ending in the answer"


def _cell(found: dict[str, float] | None) -> str:
    if not found:
        return "-"
    return f"{found['mean']:.4g} ({found['min']:.4g}..{found['max']:.4g})"
