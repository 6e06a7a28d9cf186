"""SFT throughput on a GPU: plain TRL with its defaults against `alignkit sft` with its defaults (issue #14).

    python benchmarks/gpu_throughput.py [--shape 1b] [--steps 40] [--warmup 5] [--out FILE.json]

The model is built here from a config with random weights (benchmarks/gpu_models.py: `1b` is Llama-3.2-1B's
shape, `tiny` runs on a CPU in seconds); the data are the reference workload's 1,024 synthetic chats with
log-normal lengths. Both sides get what a user would give (benchmarks/reference_workload.py: learning rate,
batch 8, max length 1,024) and run a fixed number of optimizer steps, each in a fresh process; everything
else is TRL's `SFTConfig` defaults or alignkit's automatic settings. Reported per side: real (non-padding)
tokens per second after the warm-up steps, MFU (6 x parameters x tokens/s over the GPU's dense bf16 peak),
peak GPU memory and the final train loss; then alignkit's speed-up and its memory against TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from fresh_process import answer, spawn
from gpu_models import built_model

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIDES = ("trl", "alignkit")


def _train(side: str, built: dict, out: Path, steps: int, warmup: int) -> dict:
    """One side's run in this process, measured by StepMeter."""
    import reference_workload
    from gpu_measure import StepMeter, device_name, peak_flops, peak_memory, reset_peak_memory
    from transformers import AutoTokenizer

    # The reference workload's runners take the user's settings from this dict: a step count instead of an epoch.
    reference_workload.SETTINGS.update(max_steps=steps)
    pad = AutoTokenizer.from_pretrained(built["model"]).pad_token_id
    meter = StepMeter(pad, warmup)
    meter.install()
    reset_peak_memory()
    run = reference_workload.run_trl if side == "trl" else reference_workload.run_alignkit
    result = run("sft", Path(built["model"]), Path(built["data"]), out)
    name = device_name()
    result = {**result, **meter.summary(built["parameters"], peak_flops(name)), **peak_memory(), "device": name}
    return {**result, "settings": _settings(out)} if side == "alignkit" else result


def _settings(out: Path) -> list[str]:
    """The speed settings alignkit's run used ("training.mixed_precision = bf16"), from its run log."""
    log = out / "alignkit.log"
    if not log.is_file():
        return []
    found = (re.search(r"setting (\S+ = [^:]*)", line) for line in log.read_text(encoding="utf-8").splitlines())
    return [match.group(1) for match in found if match]


def _child(argv: list[str]) -> int:
    side, built, out, steps, warmup = argv
    return answer(_train(side, json.loads(built), Path(out), int(steps), int(warmup)))


def compare(shape: str, steps: int, warmup: int, root: Path, timeout: float | None) -> dict:
    built = built_model(root, shape, timeout)
    report = {"section": "sft_throughput", "shape": shape, "parameters": built["parameters"], "steps": steps}
    for side in SIDES:
        shutil.rmtree(root / side, ignore_errors=True)
        report[side] = spawn(
            __file__, side, json.dumps(built), str(root / side), str(steps), str(warmup), timeout=timeout
        )
    trl, ours = report["trl"], report["alignkit"]
    report["device"] = ours["device"]
    if trl["tokens_per_s"] and ours["tokens_per_s"]:
        report["speedup"] = ours["tokens_per_s"] / trl["tokens_per_s"]
    report["memory_ratio"] = ours["peak_memory_bytes"] / trl["peak_memory_bytes"]
    report["loss_diff_pct"] = 100 * (ours["train_loss"] - trl["train_loss"]) / trl["train_loss"]
    return report


def print_report(report: dict) -> None:
    print(f"sft throughput, {report['shape']} shape ({report['parameters'] / 1e9:.3g}B parameters), {report['device']}")
    print(f"{'side':<9} {'tokens/s':>10} {'MFU':>6} {'peak memory':>12} {'padding':>8} {'train loss':>10}")
    for side in SIDES:
        row = report[side]
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
        print(
            f"{side:<9} {row['tokens_per_s'] or 0:>10.0f} {mfu:>6} {row['peak_memory_bytes'] / 2**30:>10.2f}Gi"
            f" {100 * (row['padding_fraction'] or 0):>7.1f}% {row['train_loss']:>10.4f}"
        )
    print("alignkit's settings: " + ", ".join(report["alignkit"].get("settings") or ["(none logged)"]))
    speedup = report.get("speedup")
    print(
        f"alignkit/TRL: {speedup:.2f}x tokens/s, " if speedup else "alignkit/TRL: tokens/s not measured, ",
        f"{report['memory_ratio']:.2f}x peak memory, loss {report['loss_diff_pct']:+.2f}%",
        sep="",
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1b", choices=["tiny", "1b"])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the throughput")
    parser.add_argument("--timeout", type=float, help="seconds each process may take")
    parser.add_argument("--workdir", type=Path, help="keep the model and runs here (a model built there is reused)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        report = compare(args.shape, args.steps, args.warmup, root, args.timeout)
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
