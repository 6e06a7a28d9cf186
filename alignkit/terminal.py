"""Rich consoles for alignkit's human-readable output, laid out for where the output goes.

In a terminal, rich fits tables and text to the terminal's width. Piped into a file, a pager, `grep` or a
test, there is no width to fit, and rich's fallback of 80 columns would wrap header lines and split paths
mid-word; piped output therefore gets a width no ordinary row reaches, so every row stays on one line and
paths stay whole. An explicit `COLUMNS` still wins, as it does for rich itself.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

PIPED_WIDTH = 1000
"""Width of piped output: wide enough that no table cell or header line is ever folded."""
RULE_WIDTH = 80
"""Horizontal rules are drawn at most this wide, so a piped rule is not a thousand characters long."""


def output_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console for stdout (or stderr) that keeps piped output unwrapped; `width` forces a width."""
    from rich.console import Console

    console = Console(stderr=stderr, width=width)
    if width is None and not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)
    return console


def print_rule(console: Console, title: str) -> None:
    """A titled horizontal rule, no wider than the terminal or RULE_WIDTH."""
    from rich.rule import Rule

    console.print(Rule(title), width=min(console.width, RULE_WIDTH))
