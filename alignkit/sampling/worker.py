"""One process of a multi-process `alignkit sample` (`alignkit sample --num-processes N`).

The parent froze the recipe into the output folder, read the prompts once to check them, chose the backend
(recorded in the run file) and started N of these through accelerate's launcher (alignkit.launch.spawn). Each
takes every N-th unfinished shard by its rank, on its own GPU (cuda:LOCAL_RANK) when there are GPUs, and writes
each shard as it finishes; the parent selects once all are done. Generation calls are seeded by the position of
their first prompt, so which process generates a shard does not change its candidates.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WORKER_MODULE = "alignkit.sampling.worker"


def worker_plan(processes: int):
    """The launch plan of `processes` sampling workers on this machine: plain data parallelism, nothing to
    batch or accumulate (the launcher needs only the profile, the counts and the device)."""
    from alignkit.launch.plan import LaunchPlan, visible_gpus

    return LaunchPlan(
        profile="ddp",
        device="cuda" if visible_gpus() else "cpu",
        num_machines=1,
        processes_per_machine=processes,
        world_size=processes,
        machine_rank=0,
        main_process_ip=None,
        main_process_port=29500,
        mixed_precision="no",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        effective_batch_size=processes,
        recipe_gpus=processes,
        recipe_effective_batch_size=processes,
    )


def run_share(out: Path, rank: int, world: int, local_rank: int) -> int:
    """Generate this rank's share of the unfinished shards; returns how many it wrote."""
    import torch

    from alignkit.quiet import quiet_libraries
    from alignkit.run_record import RECIPE_FILE, RunRecord
    from alignkit.sampling.prompts import load_prompts
    from alignkit.sampling.run import generate_shards, shards
    from alignkit.scoring.specs import labels

    quiet_libraries()
    record = RunRecord.load(out)
    recipe = record.recipe
    device = None
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # a reward model placed on "cuda" lands on this rank's GPU too
        device = f"cuda:{local_rank}"
    prompts = load_prompts(recipe, str(out / RECIPE_FILE)).prompts
    todo = [shard for shard in shards(len(prompts), recipe.sample.shard_size) if not shard.path(out).is_file()]
    mine = todo[rank::world]
    if mine:
        names = labels(recipe.sample.scorers)
        generate_shards(recipe, record.info["backend"], prompts, mine, names, out, echo=_echo, device=device)
    return len(mine)


def _echo(line: str) -> None:
    print(line, flush=True)  # the launcher prefixes each line with the rank


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rank = int(os.environ.get("RANK", "0"))
    written = run_share(
        Path(args[0]), rank, int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )
    print(f"rank {rank}: {written} shards written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
