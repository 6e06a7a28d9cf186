"""Stopping a run whose loss or gradient norm is no longer a finite number.

Once the loss or the gradient norm is NaN or infinite, every later step only spreads it through the weights:
the run would save and mark finished a model of NaNs. The guard reads the loss and gradient norm as they are
logged (every `logging.logging_steps`; on every process, which all log the same reduced values, so all stop
together) and raises `Diverged` before that step's checkpoint is written. The run is then not marked
finished, and the error says at which step it was found and what to change.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from transformers import TrainerCallback

from alignkit.errors import RunError

log = logging.getLogger("alignkit")

WATCHED = ("loss", "grad_norm", "eval_loss")
"""The logged values that must stay finite."""

ADVICE = (
    "lower training.learning_rate (keep training.max_grad_norm above 0; train in bf16 or fp32 rather than fp16),"
    " then start over with --overwrite"
)


class Diverged(RunError):
    """Training produced a NaN or infinite loss or gradient norm."""


class DivergenceGuard(TrainerCallback):
    """Raises `Diverged` at the first logged step whose loss or gradient norm is NaN or infinite."""

    def __init__(self) -> None:
        self.last_finite: int | None = None

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        # fp16 loss scaling overflows on purpose now and then: that step is skipped, not taken, so its
        # gradient norm says nothing about the weights. The loss still must be finite.
        skipped = bool(getattr(kwargs.get("optimizer"), "step_was_skipped", False))
        watched = [key for key in WATCHED if not (skipped and key == "grad_norm")]
        bad = [(key, value) for key, value in (logs or {}).items() if key in watched and _not_finite(value)]
        if bad:
            message = self._message(state.global_step, bad)
            log.error("%s", message)
            raise Diverged(message)
        if "loss" in (logs or {}):
            self.last_finite = state.global_step

    def _message(self, step: int, bad: list[tuple[str, Any]]) -> str:
        what = ", ".join(f"{key} is {_spelled(value)}" for key, value in bad)
        since = ""
        if self.last_finite is not None and self.last_finite < step - 1:
            since = f" (finite at step {self.last_finite}, the last one logged)"
        return f"training diverged at step {step}{since}: {what}; {ADVICE}"


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _spelled(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
