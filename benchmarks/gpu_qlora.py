"""QLoRA peak memory of a 7B-shaped model on one GPU against `alignkit plan --qlora` (issue #14: within 25%).

    python benchmarks/gpu_qlora.py [--shape 7b] [--steps 5] [--out FILE.json]

The model is Mistral-7B's shape with random weights (benchmarks/gpu_models.py), saved in bf16 and quantised
to 4-bit NF4 by `alignkit sft --qlora` as it loads. The recipe is minimal (batch 4, max length 1,024, a few
steps, no checkpoint saved) and every batch is padded to max_length, because the plan is a worst case over
max_length. Measured in the training process: torch.cuda.max_memory_allocated and, with nvidia-smi, the
peak in use on the GPU over what was in use before the run (CUDA context included, as in the plan's runtime
allowance). Planned: the `planned_total` of `alignkit plan sft --recipe R --qlora --json`; where this
checkout has no `plan` command the comparison is reported as skipped and the measurement still runs.
On a CPU (`--shape tiny`) every step runs except the ones bitsandbytes or alignkit refuse there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fresh_process import answer, spawn
from gpu_models import built_model

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
BATCH, MAX_LENGTH = 4, 1024


def write_recipe(built: dict, out: Path, steps: int) -> Path:
    import yaml

    recipe = {
        "model": {"name_or_path": built["model"]},
        "data": {"datasets": [{"path": built["data"]}]},
        "training": {
            "per_device_train_batch_size": BATCH,
            "max_steps": steps,
            "save_strategy": "no",
            "output_dir": str(out),
            # Every batch padded to max_length: the plan is a worst case over max_length.
            "extra": {"pad_to_multiple_of": MAX_LENGTH},
        },
        "sft": {"max_length": MAX_LENGTH},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def planned(recipe: Path, timeout: float | None) -> dict:
    """`alignkit plan sft --recipe R --qlora --json`, or why there is no plan."""
    command = [sys.executable, "-m", "alignkit", "plan", "sft", "--recipe", str(recipe), "--qlora", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        if "No such command" in done.stderr + done.stdout:
            return {"skipped": "no alignkit plan command in this checkout"}
        raise RuntimeError(
            f"alignkit plan failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return json.loads(done.stdout)["memory_plan"]


def _train(recipe: Path) -> dict:
    """`alignkit sft --recipe R --qlora` in this process, with its peak memory."""
    from gpu_measure import DevicePeak, device_name, peak_memory, reset_peak_memory

    with DevicePeak() as device:
        from typer.testing import CliRunner

        from alignkit.cli import app

        reset_peak_memory()
        result = CliRunner().invoke(app, ["sft", "--recipe", str(recipe), "--qlora"])
        if result.exit_code != 0:
            raise SystemExit(f"alignkit sft --qlora failed (exit {result.exit_code}):\n{result.output[-3000:]}")
    return {**peak_memory(), "device_peak_bytes": device.peak_above_start(), "device": device_name()}


def measure(shape: str, steps: int, root: Path, timeout: float | None) -> dict:
    built = built_model(root, shape, timeout)
    out = root / "qlora"
    shutil.rmtree(out, ignore_errors=True)
    recipe = write_recipe(built, out, steps)
    report = {"section": "qlora_memory", "shape": shape, "parameters": built["parameters"], "steps": steps}
    report["batch"], report["max_length"] = BATCH, MAX_LENGTH
    report["plan"] = planned(recipe, timeout)
    report.update(spawn(__file__, str(recipe), timeout=timeout))
    planned_total = report["plan"].get("planned_total")
    if planned_total:
        report["plan_over_peak"] = planned_total / report["peak_memory_bytes"]
        if report["device_peak_bytes"]:
            report["plan_over_device_peak"] = planned_total / report["device_peak_bytes"]
        # A CPU's peak RSS holds the imports too (benchmarks/memory_plan.py subtracts them): no verdict there.
        closest = report.get("plan_over_device_peak", report["plan_over_peak"])
        report["within_25pct"] = 0.75 <= closest <= 1.25 if report["device"] != "cpu" else None
    return report


def print_report(report: dict) -> None:
    gib = 2**30
    print(f"qlora memory, {report['shape']} shape ({report['parameters'] / 1e9:.3g}B parameters), {report['device']}")
    print(f"measured: {report['peak_memory_bytes'] / gib:.2f} GiB ({report['peak_memory_kind']})", end="")
    device_peak = report.get("device_peak_bytes")
    print(f", {device_peak / gib:.2f} GiB nvidia-smi peak over start" if device_peak else "")
    plan = report["plan"]
    if "skipped" in plan:
        print(f"plan: skipped: {plan['skipped']}")
        return
    print(f"plan: {plan['planned_total'] / gib:.2f} GiB (checkpointing {plan.get('checkpointing')})")
    ratios = [f"{report['plan_over_peak']:.2f} ({report['peak_memory_kind']})"]
    if "plan_over_device_peak" in report:
        ratios.append(f"{report['plan_over_device_peak']:.2f} (nvidia-smi peak)")
    verdict = {True: "yes", False: "no", None: "not judged on a CPU (peak RSS holds the imports)"}
    print(f"plan/measured: {', '.join(ratios)}; within 25%: {verdict[report['within_25pct']]}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return answer(_train(Path(sys.argv[2])))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="7b", choices=["tiny", "1b", "7b"])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps (the peak comes early)")
    parser.add_argument("--timeout", type=float, help="seconds each process may take")
    parser.add_argument("--workdir", type=Path, help="keep the model and run here (a model built there is reused)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        report = measure(args.shape, args.steps, root, args.timeout)
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
