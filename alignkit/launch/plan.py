"""The launch plan: how many processes on how many machines, under which profile, with what batch size.

Computed without importing torch: GPUs are counted from `CUDA_VISIBLE_DEVICES` or the NVIDIA device files,
so `--dry-run` stays instant and shows the world size and effective batch size the run will have.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import get_args

from alignkit.errors import Problem, UserError
from alignkit.recipe.automatic import decide, planned_facts
from alignkit.recipe.schema import RecipeBase
from alignkit.recipe.sections import LaunchProfile

PROFILES: tuple[str, ...] = get_args(LaunchProfile)
SHARDED_PROFILES = ("zero3", "zero3-offload", "fsdp", "fsdp-qlora")
"""Profiles that shard the weights themselves: FSDP and ZeRO-3 flatten tensors of one dtype only."""


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
    activation_checkpointing: bool = False
    """The recipe checkpoints activations (FSDP profiles move this from the trainer into FSDP)."""
    bnb_4bit_quant_storage: str | None = None
    """Sharded 4-bit runs: the dtype the packed 4-bit weights (and the LoRA adapters) must be stored in, which
    is the compute dtype; None when the run is not both 4-bit and sharded."""

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


def plan_launch(recipe: RecipeBase, options: LaunchOptions) -> LaunchPlan:
    """Resolve the launch plan.

    Raises:
        UserError: for launch flags that contradict each other.
    """
    profile = options.launch or recipe.launch.profile
    _check_options(options, profile)
    gpus = visible_gpus()
    machines = options.num_machines or 1
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
    storage = _quant_storage(recipe, profile)
    training = recipe.training
    device = "cuda" if gpus else "cpu"
    batch = training.per_device_train_batch_size * training.gradient_accumulation_steps
    recipe_gpus = recipe.launch.gpus * recipe.launch.nodes
    plan = LaunchPlan(
        profile=profile,
        device=device,
        num_machines=machines,
        processes_per_machine=per_machine,
        world_size=world,
        machine_rank=options.machine_rank,
        main_process_ip=options.main_process_ip,
        main_process_port=options.main_process_port,
        mixed_precision=decided(recipe, planned_facts(device))["training.mixed_precision"],
        per_device_train_batch_size=training.per_device_train_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        effective_batch_size=batch * world,
        recipe_gpus=recipe_gpus,
        recipe_effective_batch_size=batch * recipe_gpus,
        bnb_4bit_quant_storage=storage,
    )
    return replace(plan, activation_checkpointing=_checkpointing(recipe, plan))


def decided(recipe: RecipeBase, facts) -> dict:
    """The automatic settings of `recipe` by recipe path."""
    return {setting.path: setting.value for setting in decide(recipe, facts)}


def machine_facts(recipe: RecipeBase, plan: LaunchPlan):
    """The facts the automatic settings read, as known on this machine before launch (memory plan included)."""
    from alignkit.launch.memory import checkpointing_facts

    return replace(planned_facts(plan.device), **checkpointing_facts(recipe, plan))


def _checkpointing(recipe: RecipeBase, plan: LaunchPlan) -> bool:
    """Whether the run checkpoints activations: the recipe's word, else the memory plan's on this machine."""
    return decided(recipe, machine_facts(recipe, plan))["training.gradient_checkpointing"]


def _check_options(options: LaunchOptions, profile: str) -> None:
    """Refuse launch flags that are out of range or contradict each other, all at once."""
    problems = []
    if profile not in PROFILES:
        close = difflib.get_close_matches(profile, PROFILES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(
            Problem(source="--launch", message=f"unknown profile {profile!r}{hint} (one of {', '.join(PROFILES)})")
        )
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


def _quant_storage(recipe: RecipeBase, profile: str) -> str | None:
    """The storage dtype of a sharded 4-bit run, refusing quantisation that the profile cannot shard.

    FSDP and ZeRO-3 shard flat buffers of one dtype, so the packed 4-bit weights must be stored in the compute
    dtype (bitsandbytes' default, uint8, cannot be sharded with bf16 LoRA weights beside it).
    """
    quant = recipe.quantization
    four_bit = quant is not None and quant.load_in_4bit
    if profile == "fsdp-qlora" and not four_bit:
        raise UserError(
            Problem(
                source="--launch",
                message="fsdp-qlora shards a 4-bit base model, but the recipe has no quantization.load_in_4bit;"
                " add --qlora, or use --launch fsdp for full or LoRA fine-tuning",
            )
        )
    if quant is None or profile not in SHARDED_PROFILES:
        return None
    if quant.load_in_8bit:
        raise UserError(
            Problem(
                source="recipe",
                path="quantization.load_in_8bit",
                message=f"8-bit weights cannot be sharded by --launch {profile}; use 4-bit (--qlora) or"
                " --launch ddp/zero2",
            )
        )
    if not four_bit:
        return None
    compute = quant.bnb_4bit_compute_dtype
    if compute in (None, "auto"):
        # --qlora and the loader use the model dtype, and bfloat16 for an auto model dtype.
        compute = recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16"
    problems = []
    if recipe.model.dtype not in ("auto", compute):
        # The weights left unquantised (norms, embeddings, the LoRA copies) are sharded beside the 4-bit ones.
        problems.append(
            Problem(
                source="recipe",
                path="model.dtype",
                message=f"is {recipe.model.dtype} but the 4-bit compute dtype is {compute}; --launch {profile} shards"
                f" all weights together: --set model.dtype={compute}",
            )
        )
    storage = quant.bnb_4bit_quant_storage
    if storage not in (None, "auto", compute):
        problems.append(
            Problem(
                source="recipe",
                path="quantization.bnb_4bit_quant_storage",
                message=f"is {storage} but the compute dtype is {compute}; --launch {profile} shards the 4-bit"
                f" weights only when they are stored in the compute dtype: remove the field or"
                f" --set quantization.bnb_4bit_quant_storage={compute}",
            )
        )
    if problems:
        raise UserError(problems)
    return compute
