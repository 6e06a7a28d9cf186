"""Norm outputs handed on in the compute dtype when a CPU trains under bf16 autocast.

Autocast keeps the residual stream in float32, so an RMSNorm returns float32 and every linear layer that reads
it casts it to bf16 again: three times for the attention's query, key and value projections, twice for the
MLP's gate and up projections, and the gradients come back through as many casts. Casting once, where the
norm's output is made, hands every reader the values autocast would have given it: about 1% of a CPU training
step of the reference workload's model (benchmarks/RESULTS.md).

The rotary tables are float32 too, and casting them as well saved about 3% more, but that changes the maths
(the rotation in bf16, as a model loaded in bf16 computes it): the offline demo, whose sums depend on digit
positions, learnt less with it (74.5% exact match after SFT against 89.0%, reward model 84.5% against 88.0%),
so they are left as they are.

Forward hooks on the modules, found by their class names across transformers' decoder families
(`LlamaRMSNorm`, `Qwen3RMSNorm`, ...), so no model code is replaced; they act only while CPU autocast is on,
so evaluation, generation and saving see the model unchanged.
"""

from __future__ import annotations

from typing import Any

SUFFIXES = ("RMSNorm",)
"""Class-name endings of the modules whose outputs only feed autocast-cast products."""


def hand_on_in_compute_dtype(model) -> int:
    """Hook every RMSNorm and rotary-embedding module of `model`; returns how many were hooked."""
    hooked = 0
    for module in model.modules():
        if type(module).__name__.endswith(SUFFIXES):
            module.register_forward_hook(_to_compute_dtype)
            hooked += 1
    return hooked


def _to_compute_dtype(module, args: tuple, output: Any):
    import torch

    if not torch.is_autocast_enabled("cpu"):
        return None
    dtype = torch.get_autocast_dtype("cpu")

    def cast(tensor):
        floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.device.type == "cpu"
        return tensor.to(dtype) if floating else tensor

    return tuple(cast(t) for t in output) if isinstance(output, tuple) else cast(output)
