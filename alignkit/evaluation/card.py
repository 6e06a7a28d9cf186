"""An evaluation's scores added to the card of every model that is an alignkit run's output.

The card (`README.md`, written by the run when it finished) gains an "Evaluation" section with that model's
scores and where the whole scorecard lies; a later evaluation of the same folder replaces the section it
wrote (it sits between marker comments), and nothing else of the card changes. A model that is no finished
alignkit run (a Hub id, someone else's folder) is left untouched.
"""

from __future__ import annotations

import re
from pathlib import Path

from alignkit.evaluation.results import RESULTS_FILE, Score, show
from alignkit.files import atomic_write
from alignkit.run_record import is_finished

BEGIN, END = "<!-- alignkit eval -->", "<!-- /alignkit eval -->"
_SECTION = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)


def add_to_cards(models, scores: list[Score], out: Path) -> list[Path]:
    """Write each alignkit run's scores into its card; returns the cards changed."""
    changed = []
    for model in models:
        folder = Path(model.path).expanduser()
        card = folder / "README.md"
        if not (folder.is_dir() and is_finished(folder) and card.is_file()):
            continue
        mine = [s for s in scores if s.model == model.name]
        if not mine:
            continue
        text = _SECTION.sub("", card.read_text(encoding="utf-8")).rstrip("\n")
        atomic_write(card, f"{text}\n\n{section(mine, out)}\n")
        changed.append(card)
    return changed


def section(scores: list[Score], out: Path) -> str:
    lines = [
        BEGIN,
        "## Evaluation",
        "",
        f"Measured by `alignkit eval` (all models side by side: {out.resolve() / RESULTS_FILE}).",
        "",
        "| part | task | metric | value | samples |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s.part} | {s.task} | {s.metric} | {show(s.value, s.metric)} | {s.samples} |" for s in scores]
    lines.append(END)
    return "\n".join(lines)
