"""alignkit's CPU attention kernel (`blocked_matmul`) against SDPA on the reference workload's model (issue #14).

    .venv/bin/python benchmarks/attention_kernel.py [--lengths 220 330 450 600 800 1024] [--rounds 3]

Builds the reference model of benchmarks/reference_workload.py (Llama, hidden 256, 4 layers) twice from the
same weights, one per kernel, and times one training step (forward, backward, fused AdamW step) at batch 8
under bf16 autocast, as alignkit trains on this CPU, for each length: the kernels alternate, every length
runs once to warm up, and each figure is the median of `--rounds` steps. Prints each length's times and the
ratio, then the ratio of the sums. Run it alone: a second job on the machine's cores makes the ratio
meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KERNELS = ("sdpa", "blocked_matmul")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[220, 330, 450, 600, 800, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from reference_workload import MODEL_SHAPE
    from transformers import AutoModelForCausalLM

    from alignkit.demo.tiny import build_tiny_model
    from alignkit.train.attention import register

    register()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "model", **MODEL_SHAPE, max_position_embeddings=1024, seed=0)
        models = {kernel: AutoModelForCausalLM.from_pretrained(path, attn_implementation=kernel) for kernel in KERNELS}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=2e-5, fused=True) for k, m in models.items()}
    vocab = models["sdpa"].config.vocab_size

    def step(kernel: str, length: int) -> float:
        ids = torch.randint(0, vocab, (8, length), generator=torch.Generator().manual_seed(length))
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = models[kernel](input_ids=ids, labels=ids).loss
        loss.backward()
        optimizers[kernel].step()
        optimizers[kernel].zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for kernel in KERNELS:
        models[kernel].train()
        for length in args.lengths:
            step(kernel, length)
    times = {kernel: {length: [] for length in args.lengths} for kernel in KERNELS}
    for _ in range(args.rounds):
        for kernel in KERNELS:
            for length in args.lengths:
                times[kernel][length].append(step(kernel, length))
    medians = {k: {n: statistics.median(v) for n, v in by_length.items()} for k, by_length in times.items()}
    print(f"{'tokens':>6} {'SDPA':>8} {'blocked':>8} {'ratio':>6}")
    for length in args.lengths:
        sdpa, blocked = medians["sdpa"][length], medians["blocked_matmul"][length]
        print(f"{length:>6} {sdpa:>7.3f}s {blocked:>7.3f}s {sdpa / blocked:>5.2f}x")
    sdpa, blocked = (sum(medians[kernel].values()) for kernel in KERNELS)
    print(f"{'all':>6} {sdpa:>7.3f}s {blocked:>7.3f}s {sdpa / blocked:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
