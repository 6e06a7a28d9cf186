"""The per-process training entry point: `python -m alignkit.train.worker OUTPUT_DIR`.

Every process (one in-process run, or each rank of a multi-process launch) reads the frozen recipe from the
run directory, so the command line is parsed once, by the parent. It resumes from the newest complete
checkpoint there, trains, saves, and on the main process writes the card, curves and metrics. Launched, it
reports a failure to the launcher rather than to the console (alignkit.launch.worker_errors).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from alignkit.errors import EXIT_INTERRUPTED, EXIT_RUN_ERROR, UserError
from alignkit.launch.worker_errors import report_failure
from alignkit.quiet import quiet_libraries
from alignkit.run_record import RunRecord, rank_log

log = logging.getLogger("alignkit")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def setup_logging(output_dir: Path) -> Path:
    """Send alignkit's, transformers' and TRL's logs to the run's log file (one per rank beyond rank 0)."""
    import transformers

    quiet_libraries()

    rank = _rank()
    path = output_dir / rank_log(rank)
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for name in ("alignkit", "trl", "peft", "accelerate"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity_info()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.add_handler(handler)
    return path


def _facts(run: RunRecord, hardware):
    """What the automatic settings read on the device that trains: the hardware and the memory plan against
    this device's memory (the plan frozen at launch gives the processes and the sharding)."""
    from alignkit.launch.memory import checkpointing_facts
    from alignkit.launch.plan import LaunchPlan
    from alignkit.recipe.automatic import Facts

    if "plan" not in run.info:
        return Facts.of(hardware)
    plan = LaunchPlan(**run.info["plan"])
    device_bytes, label = None, ""
    if hardware.device == "cuda":
        import torch

        device_bytes, label = torch.cuda.get_device_properties(0).total_memory, "this GPU"
    return Facts.of(hardware, **checkpointing_facts(run.recipe, plan, device_bytes, label))


def train(output_dir: Path, *, callbacks: list | None = None, echo=print) -> dict[str, Any]:
    """Train the run frozen in `output_dir` to the end and finalise it; returns the final metrics."""
    from transformers import set_seed

    from alignkit.hardware import detect
    from alignkit.train.checkpoints import MARKS_CHECKPOINTS, resume_point
    from alignkit.train.factory import build_trainer
    from alignkit.train.finalize import finalize_main, save_weights
    from alignkit.train.progress import ProgressCallback
    from alignkit.train.run_callbacks import CheckpointMarker, ReplacedRunRemover

    run = RunRecord.load(output_dir)
    set_seed(run.recipe.training.seed)
    hardware = detect()
    main_process = _rank() == 0
    built = build_trainer(
        run.recipe,
        hardware,
        facts=_facts(run, hardware),
        output_dir=output_dir,
        # The launch profile's trainer settings (FSDP, DDP), frozen into the run file when it was prepared.
        trainer_kwargs=run.info.get("trainer_kwargs", {}),
        callbacks=[
            ProgressCallback(metrics=run.recipe.method.progress_metrics),
            CheckpointMarker(output_dir),
            ReplacedRunRemover(run),
            *(callbacks or []),
        ],
    )
    trainer = built.trainer
    for setting in built.settings:
        log.info("setting %s", setting.line())
    if main_process:
        for setting in built.settings:
            if setting.automatic:
                echo(f"auto: {setting.line()}")
        for notice in built.notices:
            echo(f"note: {notice}")
        for line in built.data.report.summary_lines():
            echo(line)
        for notice in built.data.report.notices:
            echo(f"note: {notice}")
    resume, skipped = resume_point(output_dir, marked=run.info.get(MARKS_CHECKPOINTS) is True)
    if main_process:
        for notice in skipped:
            echo(f"note: {notice}")
        if resume is not None:
            echo(f"resuming from {resume.name} (step {resume.name.split('-')[-1]})")
    log.info("training %s %s in %s (resume: %s)", run.method, run.name, output_dir, resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics: dict[str, Any] = {f"train_{k}" if not k.startswith("train") else k: v for k, v in result.metrics.items()}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    save_weights(built, output_dir)
    if main_process:
        metrics = finalize_main(built, run, metrics=metrics)
        echo(f"saved to {output_dir}")
    trainer.accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point of each launched process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m alignkit.train.worker OUTPUT_DIR", file=sys.stderr)
        return 2
    output_dir = Path(args[0])
    setup_logging(output_dir)
    try:
        train(output_dir)
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # a clean exit, so no rank aborts at interpreter shutdown
    except UserError as err:
        log.error("rank %d: %s", _rank(), err)
        lines = [f"error: {problem}" for problem in err.problems]
        if not report_failure("\n".join(lines)):
            print(*lines, sep="\n", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        log.info("rank %d interrupted", _rank())  # the launcher says so, once
        return EXIT_INTERRUPTED
    except Exception as err:
        log.exception("rank %d failed", _rank())
        summary = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if not report_failure(f"{type(err).__name__}: {summary}", traceback.format_exc()):
            raise
        return EXIT_RUN_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
