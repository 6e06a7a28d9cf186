"""What the GPU check measures inside a training process: real tokens per second, MFU and peak memory.

`StepMeter` wraps `transformers.Trainer.training_step`, which TRL's trainers and alignkit's runs both go
through, so the two sides are measured by the same code without touching either. Each call synchronises
the device, notes the time and counts the batch's tokens that are not padding (padding-free batches have
none). Throughput is taken between the first call after the warm-up steps and the last call, so start-up,
the first kernels' compilation and the final save are left out.
"""

from __future__ import annotations

import resource
import subprocess
import threading
import time

PEAK_BF16_DENSE = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12))
"""Dense bf16 tensor-core FLOP/s by GPU name (vendor datasheets, without sparsity); the first match wins."""


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16_DENSE if key in name), None)


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepMeter:
    """Times every training step and counts its non-padding tokens."""

    def __init__(self, pad_token_id: int, warmup: int) -> None:
        self.pad_token_id = pad_token_id
        self.warmup = warmup
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.slots: list[int] = []

    def install(self) -> None:
        import transformers

        original = transformers.Trainer.training_step
        meter = self

        def training_step(trainer, model, inputs, *args, **kwargs):
            meter.mark(inputs)
            return original(trainer, model, inputs, *args, **kwargs)

        transformers.Trainer.training_step = training_step

    def mark(self, inputs) -> None:
        _synchronize()
        self.times.append(time.perf_counter())
        ids = inputs["input_ids"]
        self.tokens.append(int((ids != self.pad_token_id).sum()))
        self.slots.append(ids.numel())

    def summary(self, parameters: int, peak: float | None) -> dict:
        """Tokens/s over the measured steps, and MFU as 6 x parameters x tokens/s over the GPU's peak."""
        first = min(self.warmup, max(len(self.times) - 2, 0))
        measured = slice(first, len(self.times) - 1)
        seconds = self.times[-1] - self.times[first] if len(self.times) > 1 else 0.0
        tokens = sum(self.tokens[measured])
        per_second = tokens / seconds if seconds > 0 else None
        slots = sum(self.slots[measured])
        return {
            "steps": len(self.times),
            "measured_steps": len(self.times) - 1 - first,
            "measured_seconds": seconds,
            "tokens": tokens,
            "tokens_per_s": per_second,
            "padding_fraction": 1 - tokens / slots if slots else None,
            "mfu": 6 * parameters * per_second / peak if per_second and peak else None,
        }


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak GPU memory of this process (allocated by tensors, reserved by the allocator); on a CPU, peak RSS."""
    import torch

    if torch.cuda.is_available():
        return {
            "peak_memory_kind": "cuda max_memory_allocated",
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_memory_kind": "cpu peak RSS", "peak_memory_bytes": rss}


class DevicePeak:
    """The highest memory in use on GPU 0 as nvidia-smi reports it (CUDA context and allocator slack included,
    which max_memory_allocated leaves out), polled in a thread; None where there is no nvidia-smi."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read(self) -> int | None:
        command = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
            return int(done.stdout.strip()) * 2**20
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = self._read()
            if used is None:
                return
            self.samples.append(used)
            self._stop.wait(self.interval)

    def __enter__(self) -> DevicePeak:
        self.before = self._read()
        if self.before is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def peak_above_start(self) -> int | None:
        """Peak memory used during the run minus what was in use before it (other processes, this one's imports)."""
        return max(self.samples) - self.before if self.samples and self.before is not None else None
