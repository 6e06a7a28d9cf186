"""What the machine can do, decided once per process (the device, bf16 support, flash-attention), and the one
rule for which mixed precision really runs on it, shared by the launcher and the engine."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Hardware:
    """Facts about this process's accelerator that change defaults."""

    device: str
    """"cuda" or "cpu"."""
    bf16: bool
    """bf16 matrix maths is supported (Ampere+ GPU, or a CPU with AVX512-BF16/AMX)."""
    fp16: bool
    flash_attn: bool
    """flash-attn is installed and usable (CUDA only)."""


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 matrix maths natively (AVX512-BF16 or AMX); read without importing torch."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def usable_precision(wanted: str, device: str, *, bf16: bool, fp16: bool) -> str:
    """The mixed precision that really runs: `wanted` ("no", "bf16", "fp16") where the device has it, else "no".

    The launcher announces this value to the workers and the trainer sets its flags from it: transformers
    keeps the launcher's value whenever the trainer's own flags are off, so the two must never disagree.
    """
    if wanted == "bf16" and not bf16:
        return "no"
    if wanted == "fp16" and not fp16:
        return "no"
    if wanted not in ("no", "bf16", "fp16"):
        raise ValueError(f"unknown mixed precision {wanted!r}")
    return wanted


@cache
def detect() -> Hardware:
    """Probe the accelerator once."""
    import torch

    if torch.cuda.is_available():
        return Hardware(
            device="cuda",
            bf16=torch.cuda.is_bf16_supported(),
            fp16=True,
            flash_attn=importlib.util.find_spec("flash_attn") is not None,
        )
    return Hardware(device="cpu", bf16=cpu_has_bf16(), fp16=False, flash_attn=False)
