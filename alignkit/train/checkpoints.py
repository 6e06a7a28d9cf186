"""Which checkpoint a run resumes from: the newest complete one, never one a kill cut short.

The Trainer writes a `checkpoint-N/` folder file by file; a run killed while saving leaves a partial one. A
checkpoint counts as complete when it holds everything resuming needs (the weights, the optimizer and
scheduler state, a readable `trainer_state.json`) and, for runs that mark their checkpoints, the marker
`alignkit_checkpoint.json`, written only after every process finished saving. Runs started before markers
existed are judged by their files alone. Light: no torch here.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.run_record import checkpoints

MARKER_FILE = "alignkit_checkpoint.json"
MARKS_CHECKPOINTS = "marks_checkpoints"
"""The run file's key saying the run's checkpoints carry the marker (absent in runs from before markers)."""

# One of each group must be there. DeepSpeed keeps the weights and optimizer in `global_stepN/`, FSDP in
# `pytorch_model_fsdp*` and `optimizer_*`; DeepSpeed's own scheduler is saved inside its folder too.
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model_fsdp*",
    "global_step*",
)
_OPTIMIZER = ("optimizer.pt", "optimizer.bin", "optimizer_*", "global_step*")
_SCHEDULER = ("scheduler.pt", "global_step*")


def missing_parts(folder: Path, *, marked: bool) -> list[str]:
    """What `folder` lacks to resume from; empty when it is complete."""
    missing = []
    if marked and not (folder / MARKER_FILE).is_file():
        missing.append(MARKER_FILE)
    for name, patterns in (("weights", _WEIGHTS), ("optimizer.pt", _OPTIMIZER), ("scheduler.pt", _SCHEDULER)):
        if not any(any(folder.glob(pattern)) for pattern in patterns):
            missing.append(name)
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        missing.append("trainer_state.json")
    return missing


def resume_point(output_dir: Path, *, marked: bool) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint in `output_dir` (None: start from step 0) and a notice per skipped one.

    `marked`: the run marks its checkpoints, so an unmarked one was cut short even when its files are there
    (a file may be half written).
    """
    notices = []
    found = checkpoints(output_dir)
    for index in reversed(range(len(found))):
        folder = found[index]
        # A run from before markers that was resumed since marks its newer checkpoints: one marked earlier
        # means this one would have been marked too.
        strict = marked or any((older / MARKER_FILE).is_file() for older in found[:index])
        missing = missing_parts(folder, marked=strict)
        if not missing:
            return folder, notices
        notices.append(
            f"{folder} is incomplete (no {', '.join(missing)}), probably cut short while saving; not resuming from it"
        )
    if notices:
        notices.append("no complete checkpoint: training starts from step 0")
    return None, notices
