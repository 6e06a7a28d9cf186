"""Progress while training: a live line (step, loss, learning rate, the method's metrics, tokens/s, ETA) in a
terminal, and plain periodic log lines when output goes to a file or a CI log."""

from __future__ import annotations

import sys
import time
from typing import Any

from transformers import TrainerCallback

_SHOWN = ("loss", "learning_rate", "grad_norm")


class ProgressCallback(TrainerCallback):
    """Reports training progress on the main process only; `metrics` are the method's logged metrics to show."""

    def __init__(self, *, metrics: tuple[str, ...] = (), live: bool | None = None, stream=None):
        self.shown = (*_SHOWN, *metrics)
        self.shown_eval = ("eval_loss", *(f"eval_{key}" for key in metrics))
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._progress = None
        self._task = None
        self._start = 0.0
        self._start_step = 0
        self._start_tokens = 0
        self._last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._start = time.monotonic()
        self._start_step = state.global_step
        self._start_tokens = state.num_input_tokens_seen or 0
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[metrics]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, metrics=""
            )
        else:
            resumed = f" (resumed at step {state.global_step})" if state.global_step else ""
            self._print(f"training: {state.max_steps} steps{resumed}")

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        numbers = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        self._last.update(numbers)
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, metrics=self._format(state, self._last))
        elif "loss" in logs:
            self._print(f"step {state.global_step}/{state.max_steps} {self._format(state, numbers)}")
        elif "eval_loss" in logs:
            shown = "  ".join(f"{k} {numbers[k]:.4g}" for k in self.shown_eval if k in numbers)
            self._print(f"step {state.global_step}/{state.max_steps} {shown}")

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None and state.is_world_process_zero:
            self._progress.update(self._task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
        self._print(f"training done: {state.global_step} steps in {time.monotonic() - self._start:.1f}s")

    def _format(self, state, values: dict[str, float]) -> str:
        parts = []
        for key in self.shown:
            if key in values:
                value = values[key]
                parts.append(f"{key.split('/')[-1]} {value:.3g}" if key != "learning_rate" else f"lr {value:.2e}")
        elapsed = time.monotonic() - self._start
        steps = state.global_step - self._start_step
        tokens = (state.num_input_tokens_seen or 0) - self._start_tokens
        if elapsed > 0 and tokens > 0:
            parts.append(f"{tokens / elapsed:,.0f} tok/s")
        if steps > 0 and not self.live:
            remaining = (state.max_steps - state.global_step) * elapsed / steps
            parts.append(f"eta {_duration(remaining)}")
        return "  ".join(parts)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
