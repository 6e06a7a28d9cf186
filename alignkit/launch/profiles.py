"""Launch profiles: the accelerate, DeepSpeed and Trainer settings of a run, generated from its launch plan.

A profile file (`configs/launch/<name>.yaml`) holds only what makes the profile what it is (ZeRO stage,
offloading, FSDP wrapping). Everything that depends on the recipe or the flags (mixed precision, batch
geometry, gradient accumulation, process and machine counts, the main node's address) is filled in here from
the `LaunchPlan`, which was itself computed from the recipe, so the launcher, DeepSpeed and the trainer can
never disagree. Light on purpose: `--dry-run` prints these configs without importing torch or accelerate.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import Problem, UserError
from alignkit.files import atomic_write
from alignkit.hardware import cpu_has_bf16, usable_precision
from alignkit.launch.plan import PROFILES, LaunchPlan
from alignkit.library.registry import configs_dir

DEEPSPEED = "DEEPSPEED"
FSDP = "FSDP"

# Keys alignkit fills from the plan; a profile file that set them could silently disagree with the recipe.
_PLAN_OWNED = {
    "num_processes",
    "num_machines",
    "machine_rank",
    "main_process_ip",
    "main_process_port",
    "mixed_precision",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "bf16",
    "fp16",
}


def profile_path(name: str) -> Path:
    return configs_dir() / "launch" / f"{name}.yaml"


@cache
def load_profile(name: str) -> dict[str, Any]:
    """The shipped profile file `name` as a mapping (`description`, `accelerate`, optional `deepspeed`)."""
    if name not in PROFILES or name == "none":
        raise UserError(Problem(source="--launch", message=f"no launch profile file for {name!r}"))
    path = profile_path(name)
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    owned = _PLAN_OWNED & (set(data.get("accelerate", {})) | set(data.get("deepspeed", {})))
    if owned:
        # A packaging mistake, not the user's: the profile files ship with alignkit.
        raise ValueError(f"{path} sets {sorted(owned)}, which alignkit fills in from the recipe")
    return data


def is_deepspeed(plan: LaunchPlan) -> bool:
    return plan.profile != "none" and load_profile(plan.profile)["accelerate"]["distributed_type"] == DEEPSPEED


def is_fsdp(plan: LaunchPlan) -> bool:
    return plan.profile != "none" and load_profile(plan.profile)["accelerate"]["distributed_type"] == FSDP


def launcher_precision(plan: LaunchPlan) -> str:
    """The mixed precision the launcher announces to the workers: what the trainer will really use.

    The launcher cannot probe a GPU it does not own, so it takes the GPU's word for it; a CPU is read here
    (without torch). The engine applies the same rule (`alignkit.hardware.usable_precision`) to the device
    it runs on.
    """
    on_cpu = plan.device == "cpu"
    return usable_precision(plan.mixed_precision, plan.device, bf16=cpu_has_bf16() if on_cpu else True, fp16=not on_cpu)


def deepspeed_config(plan: LaunchPlan) -> dict[str, Any] | None:
    """The DeepSpeed JSON config of a ZeRO profile (None for the others).

    The per-process batch geometry is written out from the plan, so transformers' check against the trainer's
    values fails loudly if they ever drifted apart; values the trainer derives (the global batch, which
    transformers computes before the process group exists, precision on this hardware, clipping, bucket sizes
    from the model's hidden size, optimizer hyper-parameters) stay "auto" and are filled from the TRL config.
    """
    if not is_deepspeed(plan):
        return None
    profile = load_profile(plan.profile)
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": plan.per_device_train_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto" if plan.mixed_precision == "bf16" else False},
        "fp16": {"enabled": "auto" if plan.mixed_precision == "fp16" else False},
    }
    config.update(json.loads(json.dumps(profile["deepspeed"])))  # a deep copy of the cached profile
    config["steps_per_print"] = 2**31 - 1  # the trainer logs; DeepSpeed's own step prints only add noise
    config["wall_clock_breakdown"] = False
    return config


def accelerate_config(plan: LaunchPlan, deepspeed_config_file: str | Path | None = None) -> dict[str, Any] | None:
    """The accelerate launch config of the plan (None for the single in-process run of profile `none`).

    Args:
        plan: the launch plan.
        deepspeed_config_file: where the DeepSpeed JSON lies (ZeRO profiles); a placeholder name when only
            printing the config.
    """
    if plan.profile == "none":
        return None
    profile = load_profile(plan.profile)
    static = json.loads(json.dumps(profile["accelerate"]))
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": static.pop("distributed_type"),
        "downcast_bf16": "no",
        "machine_rank": plan.machine_rank,
        "main_training_function": "main",
        "num_machines": plan.num_machines,
        # accelerate counts processes over all machines.
        "num_processes": plan.world_size,
        "rdzv_backend": "static",
        "same_network": True,
        # Never true, even on a CPU: accelerate would then run one process, not the plan's world size.
        "use_cpu": False,
    }
    if plan.num_machines > 1:
        config["main_process_ip"] = plan.main_process_ip
    config["main_process_port"] = plan.main_process_port
    if config["distributed_type"] == DEEPSPEED:
        # With a DeepSpeed JSON file, accelerate refuses precision and accumulation in its own config: they
        # live in the JSON (written from the same plan) and are checked there against the trainer's.
        ds = static.pop("deepspeed_config", {})
        ds["deepspeed_config_file"] = str(deepspeed_config_file or "deepspeed_config.json")
        ds["deepspeed_multinode_launcher"] = "standard"  # torchrun on every node; no pdsh/ssh fan-out
        config["deepspeed_config"] = dict(sorted(ds.items()))
    else:
        config["mixed_precision"] = launcher_precision(plan)
    if config["distributed_type"] == FSDP:
        fsdp = static.pop("fsdp_config")
        # FSDP checkpoints activations itself (per wrapped layer); the trainer's own must then be off.
        fsdp["fsdp_activation_checkpointing"] = plan.activation_checkpointing
        config["fsdp_config"] = dict(sorted(fsdp.items()))
    config.update(static)
    return dict(sorted(config.items()))


def trainer_kwargs(plan: LaunchPlan) -> dict[str, Any]:
    """TrainingArguments/TRL-config keyword arguments the profile needs on the trainer's side.

    The engine merges them last into the TRL config:
      - ddp: `ddp_find_unused_parameters=False` (every parameter of a causal LM takes part in the loss, and
        searching for unused ones costs a graph traversal each step and breaks activation checkpointing);
      - ZeRO profiles: nothing. The DeepSpeed JSON reaches the trainer through the launcher's environment
        (accelerate's DeepSpeed plugin reads the file), not as `deepspeed=`: transformers would check the
        global batch against that dict before the process group exists (world size 1), and on a CPU it would
        never initialise DeepSpeed's communication, so ZeRO-3's sharded loading would see one process;
      - FSDP profiles: `activation_checkpointing=False` when the recipe checkpoints activations, because FSDP
        does it per wrapped layer (the trainer refuses both at once);
      - none: nothing.
    """
    if plan.profile == "none":
        return {}
    if is_deepspeed(plan):
        return {}
    if is_fsdp(plan):
        return {"activation_checkpointing": False} if plan.activation_checkpointing else {}
    return {"ddp_find_unused_parameters": False}


def describe(name: str) -> str:
    """The one-line description of a profile."""
    if name == "none":
        return "one process, no distribution (in this process)"
    return str(load_profile(name).get("description", ""))


def write_launch_files(plan: LaunchPlan, folder: Path) -> Path:
    """Write the accelerate config (and the DeepSpeed JSON it names) into `folder`; return the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    ds_file = None
    ds = deepspeed_config(plan)
    if ds is not None:
        ds_file = folder / "deepspeed_config.json"
        atomic_write(ds_file, json.dumps(ds, indent=2) + "\n")
    config = accelerate_config(plan, ds_file.resolve() if ds_file else None)
    if config is None:
        raise ValueError("profile none runs in-process; there is no launcher config to write")
    path = folder / "accelerate_config.yaml"
    atomic_write(path, yaml.safe_dump(config, sort_keys=True))
    return path
