"""`alignkit env`: the versions and accelerators a bug report needs."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from alignkit.hardware import cpu_has_bf16

PACKAGES = (
    "alignkit",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "bitsandbytes",
    "flash-attn",
    "liger-kernel",
)


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, str]:
    """Versions of Python, torch and the training stack, and the visible accelerators."""
    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch cuda"] = str(torch.version.cuda or "none (CPU build)")
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["gpus"] = f"{len(names)}: " + ", ".join(names)
        else:
            info["gpus"] = "none"
        info["cpu bf16"] = "yes" if torch.backends.mkldnn.is_available() and cpu_has_bf16() else "no"
    except ImportError:
        info["torch"] = "not installed"
    for package in PACKAGES:
        info[package] = package_version(package)
    return info
