"""How much memory a device has: read from `--gpu-memory` (`80GB`, `24GiB`, `81559MiB`), from nvidia-smi for
the local GPUs, or from /proc/meminfo for a CPU run; and byte counts written for people.

Sizes use binary units whatever they are called, as GPU makers mean them (an "80GB" H100 has 80 GiB).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from alignkit.errors import Problem, UserError

_UNITS = {"": None, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str, source: str = "--gpu-memory") -> int:
    """Bytes in `text` such as 80GB, 80G, 24GiB or 512MiB (binary units).

    Raises:
        UserError: for anything else, naming `source`.
    """
    match = _SIZE.fullmatch(text or "")
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or float(match.group(1)) <= 0:
        raise UserError(
            Problem(
                source=source,
                message=f"{text!r} is not a memory size; give a number and a unit, e.g. 80GB, 24GiB or 512MiB",
            )
        )
    return int(float(match.group(1)) * unit)


def human(count: int | float) -> str:
    """Bytes as GiB with two decimals, or MiB below 1 GiB."""
    if abs(count) >= 1 << 30:
        return f"{count / (1 << 30):.2f} GiB"
    return f"{count / (1 << 20):.1f} MiB"


def device_memory(device: str, processes_per_machine: int = 1) -> tuple[int | None, str]:
    """(bytes one process may use, what they are) on this machine: the smallest local GPU's memory, or for a
    CPU run the available RAM shared by the processes; (None, why) when it cannot be found cheaply."""
    if device == "cuda":
        gpus = _nvidia_smi_memory()
        if not gpus:
            return None, "GPU memory unknown: nvidia-smi did not answer"
        return min(gpus), f"GPU memory of this machine ({len(gpus)} GPU{'s' if len(gpus) > 1 else ''}, nvidia-smi)"
    available = _meminfo("MemAvailable")
    if available is None:
        return None, "CPU RAM unknown"
    share = f", shared by {processes_per_machine} processes" if processes_per_machine > 1 else ""
    return available // max(processes_per_machine, 1), f"available CPU RAM{share}"


def _nvidia_smi_memory() -> list[int]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    values = [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]
    return [int(value) << 20 for value in values] if done.returncode == 0 else []


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                if name == key:
                    return int(rest.split()[0]) << 10
    except (OSError, ValueError, IndexError):
        return None
    return None
