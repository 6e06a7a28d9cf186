"""Automatic settings: the recipe fields left to alignkit (`null`, or `auto`), decided per run with a reason.

A recipe that leaves `training.gradient_checkpointing`, `training.train_sampling_strategy`,
`training.mixed_precision`, `training.use_liger_kernel` or `training.drop_padding_mask` unset gets the value
that is fastest on the machine that runs it, and a method may decide its own fields too (the `automatic`
hook of its `Method`: padding-free batches for sft, cached reference log-probs for dpo). Every decision is a
`Setting` carrying its reason; `--dry-run` shows them as planned on the machine that runs the dry run and
the run log shows them as decided on the machine that trains. A value written in the recipe always wins.

Light on purpose: the dry run uses it, so it reads facts handed to it and imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
"""The recipe value of `training.mixed_precision` that asks alignkit to choose."""


@dataclass(frozen=True)
class Facts:
    """What the automatic settings depend on, known before any weights are loaded."""

    device: str
    """"cuda" or "cpu"."""
    bf16: bool
    """The device computes bf16 matrix maths natively (Ampere+ GPU; CPU with AVX512-BF16 or AMX)."""
    flash_attn: bool
    """A flash-attention kernel with variable-length support is installed (CUDA only)."""
    liger: bool
    """liger-kernel is installed."""
    vllm: bool = False
    """vllm is installed (it generates only on CUDA)."""
    activations_fit: bool | None = None
    """Whether the activations fit in device memory without recomputation (the memory plan); None: unknown."""
    memory_reason: str = ""
    """The memory plan's figures behind `activations_fit`, for the reason text."""

    @classmethod
    def of(cls, hardware, **memory: Any) -> Facts:
        """Facts from a probed `alignkit.hardware.Hardware` (the training process)."""
        installed = importlib.util.find_spec
        liger, vllm = installed("liger_kernel") is not None, installed("vllm") is not None
        return cls(hardware.device, hardware.bf16, hardware.flash_attn, liger, vllm, **memory)


@dataclass(frozen=True)
class Setting:
    """One decided field: where it lives in the recipe, its value, and why."""

    path: str
    """Dotted recipe path, e.g. `training.gradient_checkpointing`."""
    value: Any
    reason: str
    automatic: bool = True
    """False when the recipe gave the value (listed so the dry run shows every speed setting in one place)."""

    def line(self) -> str:
        return f"{self.path} = {_show(self.value)}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "value": self.value, "reason": self.reason, "automatic": self.automatic}


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def planned_facts(device: str) -> Facts:
    """Facts read without torch, for the launcher and the dry run: a GPU is taken at its word for bf16
    (the training process checks, and falls back to float32 with a notice)."""
    from alignkit.hardware import cpu_has_bf16

    installed = importlib.util.find_spec
    cuda = device == "cuda"
    return Facts(
        device=device,
        bf16=True if cuda else cpu_has_bf16(),
        flash_attn=cuda and installed("flash_attn") is not None,
        liger=installed("liger_kernel") is not None,
        vllm=installed("vllm") is not None,
    )


def decide(recipe, facts: Facts) -> list[Setting]:
    """Every automatic setting of `recipe` on a machine with `facts`: the shared ones, then the method's.

    The method decides first: whether its rows end up packed decides whether grouping by length pays.
    """
    training = recipe.training
    own = list(recipe.method.automatic(recipe.section, facts))
    section = apply(recipe, own).section
    shared = [
        _sampling(recipe.method, section, training, facts),
        _checkpointing(training.gradient_checkpointing, facts),
        _precision(training.mixed_precision, facts),
        _liger(training.use_liger_kernel, facts),
        _padding_mask(recipe, training.drop_padding_mask, facts),
        _attention(recipe.model.attn_implementation, facts),
    ]
    return shared + own


def apply(recipe, settings: list[Setting]):
    """A copy of `recipe` with every automatic setting written in (recipe values are left as they are)."""
    updates: dict[str, dict[str, Any]] = {}
    for setting in settings:
        if setting.automatic:
            section, field = setting.path.split(".", 1)
            updates.setdefault(section, {})[field] = setting.value
    sections = {name: getattr(recipe, name).model_copy(update=fields) for name, fields in updates.items()}
    return recipe.model_copy(update=sections)


def _sampling(method, section, training, facts: Facts) -> Setting:
    path = "training.train_sampling_strategy"
    chosen = training.train_sampling_strategy
    if chosen is not None:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    fixed = method.fixed_order(section)
    if fixed:
        return Setting(path, "sequential", fixed)
    if method.packs(section):
        return Setting(path, "random", "packed rows carry no padding, so grouping by length saves nothing")
    if method.splits_by_length is not None:
        return _split(method, section, training.per_device_train_batch_size, facts)
    if not method.groups_by_length:
        reason = f"TRL's {method.name} trainer keeps its rows' order or gives no row lengths to group by"
        return Setting(path, "random", reason)
    return Setting(
        path,
        "group_by_length",
        "rows of similar length share a batch, so little compute goes to padding; kept at the start of the"
        " run only if random batches of the prepared rows would be 15% or more padding",
    )


def _split(method, section, batch: int, facts: Facts) -> Setting:
    path = "training.train_sampling_strategy"
    grouped = (
        f"batches grouped by length would change what {method.name} learns (every step's gradient is clipped,"
        " so a batch of short rows would weigh as much as a batch of long ones)"
    )
    if facts.device != "cpu":
        return Setting(path, "random", f"{grouped}; splitting batches instead is measured on CPUs only so far")
    if batch < 2:
        return Setting(path, "random", f"{grouped}; a batch of one row has nothing to split")
    if not method.splits_by_length(section):
        return Setting(path, "random", f"{grouped}; its loss compares rows across the batch, so no splitting either")
    return Setting(
        path,
        "split_by_length",
        f"{grouped}; random batches instead, each run as micro-batches of similar length that accumulate into"
        " the same step, so less compute goes to padding (a single process without DeepSpeed or FSDP)",
    )


def _checkpointing(chosen: bool | None, facts: Facts) -> Setting:
    path = "training.gradient_checkpointing"
    if chosen is not None:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    if facts.activations_fit is None:
        return Setting(path, True, "no memory plan for this model, so activations are recomputed to be safe")
    if facts.activations_fit:
        return Setting(path, False, f"activations fit without recomputation ({facts.memory_reason})")
    return Setting(path, True, f"activations would not fit otherwise ({facts.memory_reason})")


def _precision(chosen: str, facts: Facts) -> Setting:
    path = "training.mixed_precision"
    if chosen != AUTO:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    if facts.bf16:
        where = "this GPU" if facts.device == "cuda" else "this CPU (AVX512-BF16/AMX)"
        return Setting(path, "bf16", f"{where} computes bf16 matrix maths natively, faster than float32")
    return Setting(path, "no", f"this {facts.device} has no native bf16 maths; float32 is as fast and exact")


def _liger(chosen: bool | None, facts: Facts) -> Setting:
    path = "training.use_liger_kernel"
    if chosen is not None:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    if facts.device != "cuda":
        return Setting(path, False, "Liger's kernels are Triton kernels for CUDA")
    if not facts.liger:
        return Setting(path, False, "liger-kernel is not installed (`pip install liger-kernel` to use it)")
    # Measured on an H200 (benchmarks/RESULTS.md): Liger cut a 1B model's peak memory by 30% but made its steps
    # slower, so it is the first answer to tight memory, not a speed-up.
    if facts.activations_fit:
        reason = f"activations fit ({facts.memory_reason}); Liger's fused kernels save memory but cost speed"
        return Setting(path, False, reason)
    why = "no memory plan" if facts.activations_fit is None else f"memory is tight ({facts.memory_reason})"
    return Setting(path, True, f"{why}: Liger's fused loss never holds the whole logits, saving memory")


def _attention(chosen: str, facts: Facts) -> Setting:
    path = "model.attn_implementation"
    if chosen != AUTO:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    if facts.flash_attn:
        return Setting(path, "flash_attention_2", "flash-attention is installed: padding-free, variable-length kernel")
    if facts.device == "cuda":
        return Setting(path, "sdpa", "flash-attention is not installed; SDPA picks PyTorch's fused CUDA kernel")
    # Measured on the reference workload's model (benchmarks/attention_kernel.py, RESULTS.md): training steps
    # 7-24% faster than with SDPA's CPU flash kernel at 220 to 1,024 tokens, the same losses.
    return Setting(
        path,
        "blocked_matmul",
        "on a CPU, causal attention as matrix products over blocks of at most 128 queries outruns SDPA's flash kernel",
    )


def _padding_mask(recipe, chosen: bool | None, facts: Facts) -> Setting:
    path = "training.drop_padding_mask"
    if chosen is not None:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    attention = recipe.model.attn_implementation
    if attention.startswith("flash_attention") or (attention == "auto" and facts.flash_attn):
        return Setting(path, False, "flash-attention uses the mask to skip padding altogether")
    return Setting(
        path,
        True,
        "batches are right-padded, so causal attention already hides the padding from every real token; "
        "without the mask the attention kernel runs its causal path, which skips the masked half (exact same loss)",
    )
