"""Trainer callbacks that keep the run folder trustworthy: checkpoints marked complete only once fully
saved, and a run replaced with `--overwrite` deleted only once the new one has begun training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from alignkit.files import atomic_write
from alignkit.launch.replacing import REPLACING, drop_replaced
from alignkit.run_record import RunRecord
from alignkit.train.checkpoints import MARKER_FILE

log = logging.getLogger("alignkit")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointMarker(TrainerCallback):
    """Writes `checkpoint-N/alignkit_checkpoint.json` after every process has saved its part of checkpoint N."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)

    def _folder(self, state) -> Path:
        return self.output_dir / f"checkpoint-{state.global_step}"

    def on_step_end(self, args, state, control, **kwargs):
        # Saving into a folder that already exists (a rerun reaching the step of an incomplete checkpoint):
        # its old marker must not vouch for files about to be rewritten.
        if control.should_save and state.is_local_process_zero:
            (self._folder(state) / MARKER_FILE).unlink(missing_ok=True)

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank's shards and random state are on disk before the marker says so
        folder = self._folder(state)
        if state.is_local_process_zero and folder.is_dir():
            atomic_write(folder / MARKER_FILE, json.dumps({"global_step": state.global_step, "complete": True}) + "\n")


class ReplacedRunRemover(TrainerCallback):
    """Deletes the run that `--overwrite` moved aside, as training begins: the new inputs were all accepted."""

    def __init__(self, run: RunRecord):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.run.info.get(REPLACING):
            return
        if drop_replaced(self.run.info[REPLACING]):
            log.info("deleted the replaced run %s", self.run.info[REPLACING])
        self.run.info.pop(REPLACING)
        self.run.save_info()
