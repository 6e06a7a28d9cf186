"""The launch plan: how many processes on how many machines, under which profile, with what batch size.

Computed without importing torch: GPUs are counted from `CUDA_VISIBLE_DEVICES` or the NVIDIA device files,
so `--dry-run` stays instant and shows the world size and effective batch size the run will have.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

from alignkit.errors import Problem, UserError
from alignkit.recipe.schema import LaunchProfile, _RecipeBase

PROFILES: tuple[str, ...] = get_args(LaunchProfile)


@dataclass(frozen=True)
class LaunchOptions:
    """The launch flags as the user gave them (None: not given)."""

    launch: str | None = None
    num_processes: int | None = None
    num_machines: int | None = None
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500


@dataclass(frozen=True)
class LaunchPlan:
    """What a run will do, resolved from the recipe, the flags and the machine."""

    profile: str
    device: str
    num_machines: int
    processes_per_machine: int
    world_size: int
    machine_rank: int
    main_process_ip: str | None
    main_process_port: int
    mixed_precision: str
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int
    recipe_gpus: int
    """GPUs (all nodes) the recipe was tuned on."""
    recipe_effective_batch_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def visible_gpus() -> int:
    """CUDA devices this process could use, counted without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [part for part in env.split(",") if part.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    dev = Path("/dev")
    try:
        return sum(1 for p in dev.iterdir() if re.fullmatch(r"nvidia\d+", p.name))
    except OSError:
        return 0


def plan_launch(recipe: _RecipeBase, options: LaunchOptions) -> LaunchPlan:
    """Resolve the launch plan.

    Raises:
        UserError: for launch flags that contradict each other.
    """
    problems = []
    profile = options.launch or recipe.launch.profile
    if profile not in PROFILES:
        close = difflib.get_close_matches(profile, PROFILES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(
            Problem(source="--launch", message=f"unknown profile {profile!r}{hint} (one of {', '.join(PROFILES)})")
        )
    gpus = visible_gpus()
    machines = options.num_machines or 1
    if options.num_processes is not None and options.num_processes < 1:
        problems.append(
            Problem(source="--num-processes", message=f"must be at least 1 (given: {options.num_processes})")
        )
    if machines < 1:
        problems.append(Problem(source="--num-machines", message=f"must be at least 1 (given: {machines})"))
    if not 0 <= options.machine_rank < max(machines, 1):
        problems.append(
            Problem(
                source="--machine-rank",
                message=f"must be between 0 and {max(machines, 1) - 1} for {machines} machine(s)"
                f" (given: {options.machine_rank})",
            )
        )
    if machines > 1 and not options.main_process_ip:
        problems.append(
            Problem(source="--main-process-ip", message="required with --num-machines > 1: the address of machine 0")
        )
    if not 1 <= options.main_process_port <= 65535:
        problems.append(
            Problem(source="--main-process-port", message=f"must be 1-65535 (given: {options.main_process_port})")
        )
    if problems:
        raise UserError(problems)
    if options.launch == "none":
        if (options.num_processes or 1) > 1 or machines > 1:
            raise UserError(
                Problem(source="--launch", message="none runs one process; drop --num-processes/--num-machines")
            )
        per_machine = 1
    else:
        per_machine = options.num_processes or max(gpus, 1)
        if profile == "none" and per_machine * machines > 1:
            profile = "ddp"  # a single-process recipe spread over several devices is plain data parallelism
    world = per_machine * machines
    training = recipe.training
    batch = training.per_device_train_batch_size * training.gradient_accumulation_steps
    recipe_gpus = recipe.launch.gpus * recipe.launch.nodes
    return LaunchPlan(
        profile=profile,
        device="cuda" if gpus else "cpu",
        num_machines=machines,
        processes_per_machine=per_machine,
        world_size=world,
        machine_rank=options.machine_rank,
        main_process_ip=options.main_process_ip,
        main_process_port=options.main_process_port,
        mixed_precision=training.mixed_precision,
        per_device_train_batch_size=training.per_device_train_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        effective_batch_size=batch * world,
        recipe_gpus=recipe_gpus,
        recipe_effective_batch_size=batch * recipe_gpus,
    )
