"""What a launch profile divides among the processes, and what it moves to CPU memory, as the memory plan
counts it: read from the profile files (ZeRO stage and offloading, FSDP full shard), nothing imported."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sharding:
    """Which per-device states a profile splits over the processes."""

    stage: int = 0
    """ZeRO stage: 1 shards optimizer states, 2 gradients too, 3 (and FSDP's full shard) the weights as well."""
    deepspeed: bool = False
    """DeepSpeed's optimizer keeps float32 states and a float32 master copy of half-precision weights."""
    ddp_buckets: bool = False
    """DDP's communication buckets hold a second copy of the gradients."""
    offload_optimizer: bool = False
    offload_weights: bool = False
    notes: list[str] = field(default_factory=list)

    def shares(self, processes: int) -> dict[str, int]:
        """What each state is divided by."""
        split = max(processes, 1)
        return {
            "optimizer_states": split if self.stage >= 1 else 1,
            "gradients": split if self.stage >= 2 else 1,
            "weights": split if self.stage >= 3 else 1,
        }


def sharding_of(launch_plan) -> Sharding:
    """The sharding of the launch plan's profile (a single process shards nothing)."""
    from alignkit.launch.profiles import load_profile

    if launch_plan.profile == "none":
        return Sharding()
    profile = load_profile(launch_plan.profile)
    accelerate = profile.get("accelerate", {})
    kind = accelerate.get("distributed_type")
    if kind == "DEEPSPEED":
        zero = profile.get("deepspeed", {}).get("zero_optimization", {})
        return Sharding(
            stage=int(zero.get("stage", 0)),
            deepspeed=True,
            offload_optimizer=zero.get("offload_optimizer", {}).get("device") == "cpu",
            offload_weights=zero.get("offload_param", {}).get("device") == "cpu",
            notes=["ZeRO-3 also gathers a layer's weights at a time (its prefetch buckets), not counted"]
            if int(zero.get("stage", 0)) == 3
            else [],
        )
    if kind == "FSDP":
        fsdp = accelerate.get("fsdp_config", {})
        offload = bool(fsdp.get("fsdp_offload_params"))
        return Sharding(
            stage=3,
            offload_optimizer=offload,
            offload_weights=offload,
            notes=["FSDP gathers one layer's weights at a time on top of the shards, not counted"],
        )
    return Sharding(ddp_buckets=launch_plan.world_size > 1)
