"""The scorers reasoning recipes need, each computing what TRL's reward function of the same purpose computes.

`math` checks the completion's final answer against the row's reference with math-verify, exactly as TRL's
`accuracy_reward`: the reference is parsed with math-verify's defaults (LaTeX or a plain expression), the
completion with LaTeX extraction only, a `\\boxed{}` answer first, else the answer after an anchor such as
"the answer is" (a bare `$\\frac12$` is not read), units normalised. A reference math-verify cannot parse gives
None (no score), as TRL skips that example. math-verify is an optional dependency (`alignkit[math]`), imported
only when a math scorer is built or checked.

`think_format` is TRL's `think_format_reward`: 1 when the completion starts with `<think>`, holds no second
`<think>`, and closes the block with `</think>`.

`overlong` is TRL's `get_soft_overlong_punishment` (DAPO's soft overlong punishment) over the completion's
length in tokens, which the caller passes as `score(..., tokens=[...])`.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from alignkit.errors import Problem, UserError

if TYPE_CHECKING:
    from alignkit.scoring.specs import MathSpec, OverlongSpec, ThinkFormatSpec

MATH_INSTALL = "pip install 'alignkit[math]'"
# TRL's think_format_reward pattern, and its flags.
THINK_FORMAT = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL | re.MULTILINE)


def math_verify_problem() -> str | None:
    """Why the math scorer cannot run here (math-verify missing), or None when it can."""
    try:
        import latex2sympy2_extended  # noqa: F401
        import math_verify  # noqa: F401
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name in ("math_verify", "latex2sympy2_extended"):
            return f"math needs the math-verify package, which is not installed: {MATH_INSTALL}"
        # Installed but broken, such as by a mismatched dependency: say what failed.
        return f"math needs math-verify, which does not import here ({err}): {MATH_INSTALL}"
    return None


class MathScorer:
    """1.0 when the completion's final answer verifies against the row's reference, 0.0 when not, None when the
    row has no reference or math-verify cannot parse it."""

    def __init__(self, spec: MathSpec, label: str):
        problem = math_verify_problem()
        if problem is not None:
            raise UserError(Problem(source=label, message=problem))
        self.label = label
        self.weight = spec.weight
        self.column = spec.column

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig, parse, verify

        parsing_timeout, verify_timeout = _timeouts()
        # TRL's extraction of the completion's answer, setting for setting.
        answer_config = [
            LatexExtractionConfig(
                normalization_config=NormalizationConfig(units=True),
                boxed_match_priority=0,
                try_extract_without_anchor=False,
            )
        ]
        golds: dict[str, list] = {}  # a prompt's candidates share its reference: parse it once
        values: list[float | None] = []
        for completion, row in zip(completions, rows, strict=True):
            reference = self._reference(row)
            if reference is None:
                values.append(None)
                continue
            if reference not in golds:
                golds[reference] = parse(reference, parsing_timeout=parsing_timeout)
            gold = golds[reference]
            if not gold:
                values.append(None)
                continue
            answer = parse(
                completion,
                extraction_config=answer_config,
                extraction_mode="first_match",
                parsing_timeout=parsing_timeout,
            )
            values.append(float(verify(gold, answer, timeout_seconds=verify_timeout)))
        return values

    def _reference(self, row: dict) -> str | None:
        reference: Any = row.get(self.column)
        if reference is None or isinstance(reference, str):
            return reference
        if isinstance(reference, int | float) and not isinstance(reference, bool):
            return str(reference)  # a JSON number: its text parses back to the same number
        raise UserError(
            Problem(
                source="prompt rows",
                path=self.column,
                message=f"holds {type(reference).__name__} values; math compares the completion's final answer with"
                " one reference, a string or a number: set column to the one holding it",
            )
        )

    def close(self) -> None:
        """Nothing to free."""


def _timeouts() -> tuple[int | None, int | None]:
    """math-verify's parsing and verifying timeouts, as TRL sets them.

    math-verify times out with signal.alarm(), which only the main thread may call: elsewhere the timeouts are
    off, and so are the warnings math-verify would log about that on every call.
    """
    if threading.current_thread() is threading.main_thread():
        return 10, 5
    logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
    logging.getLogger("math_verify.grader").setLevel(logging.ERROR)
    return None, None


class ThinkFormatScorer:
    """1.0 when the completion has the `<think>...</think>` form, else 0.0."""

    def __init__(self, spec: ThinkFormatSpec, label: str):
        self.label = label
        self.weight = spec.weight

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        return [1.0 if THINK_FORMAT.match(completion) else 0.0 for completion in completions]

    def close(self) -> None:
        """Nothing to free."""


def overlong_penalty(length: int, max_completion_length: int, buffer: int) -> float:
    """0 up to `max_completion_length - buffer` tokens, then linearly down to -1 at `max_completion_length`, -1
    beyond (TRL's formula, so the values agree to the last bit)."""
    if length <= max_completion_length - buffer:
        return 0.0
    if length <= max_completion_length:
        return (max_completion_length - buffer - length) / buffer
    return -1.0


class OverlongScorer:
    """DAPO's soft overlong punishment of each completion, from its length in tokens."""

    def __init__(self, spec: OverlongSpec, label: str):
        self.label = label
        self.weight = spec.weight
        self.max_completion_length = spec.max_completion_length
        self.buffer = spec.buffer

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        if tokens is None:
            raise RuntimeError(
                f"scorer {self.label} needs each completion's length in tokens: call score(..., tokens=[...])"
            )
        if len(tokens) != len(completions):
            raise ValueError(f"{len(tokens)} token counts for {len(completions)} completions")
        return [overlong_penalty(length, self.max_completion_length, self.buffer) for length in tokens]

    def close(self) -> None:
        """Nothing to free."""
