"""The memory plan against measured peak memory on the CPU (issue #14: within 25%).

    .venv/bin/python benchmarks/memory_plan.py [--workloads tiny reference] [--steps 4] [--out FILE.json]

Two workloads, both built here with no hub: the offline demo's (a 3-layer Llama of hidden size 128, its
addition task, max length 64, batch 64 for sft and 16 for dpo, as in the tiny-demo recipes) and the reference
workload of issue #14 (benchmarks/reference_workload.py: hidden 256, 4 layers, batch 8, max length 1,024).
Each runs `alignkit sft` (full fine-tuning without and with activation checkpointing, and LoRA) and
`alignkit dpo` (whole batches, and batches split into micro-batches by length) for a few steps, in float32
(`mixed_precision: "no"`: the plan's float32 formulas are what is checked; bf16 autocast on CPUs that have it
changes the activation bytes) and with every row padded or cut to max_length (so the batches reach the length
the plan assumes: the plan is a worst case over max_length).

Measured: the peak resident memory (ru_maxrss) of the training process, minus that of a process that only
imported the training stack (torch, transformers, TRL's trainers, peft, datasets) and exited. Planned: the
plan's total for the run's checkpointing, runtime allowance included. The script prints both, their ratio,
and the plan's parts. Run it alone: it trains small models on the CPU for a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

BASELINE = "import torch, transformers, trl, peft, datasets\nfrom trl import SFTTrainer, DPOTrainer\n"
CASES = (
    ("sft", "full", {}),
    ("sft", "full, checkpointing", {"training": {"gradient_checkpointing": True}}),
    ("sft", "LoRA", {"peft": {"r": 16, "alpha": 16, "dropout": 0.05}}),
    # dpo's automatic sampling splits batches into micro-batches only where the data pays for it (decided at
    # the start of the run): each way is measured against the plan's figure for it.
    ("dpo", "full, whole batches", {"training": {"train_sampling_strategy": "random"}}),
    ("dpo", "full, split", {"training": {"train_sampling_strategy": "split_by_length"}}),
)


def _peak_rss(command: list[str], cwd: Path) -> tuple[int, str]:
    """Peak RSS in bytes of one child process, and its output."""
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return usage.ru_maxrss * 1024, output


def _workloads(root: Path, names: list[str]) -> dict[str, dict]:
    """name -> model folder, the data file of each method, and the recipe values each method's run uses."""
    found = {}
    if "tiny" in names:
        from alignkit.demo.__main__ import MODEL_SHAPE
        from alignkit.demo.task import write_task
        from alignkit.demo.tiny import build_tiny_model

        model = build_tiny_model(root / "tiny" / "model", **MODEL_SHAPE)
        files = write_task(root / "tiny" / "data")
        found["tiny"] = {
            "model": model,
            "data": {"sft": files["sft"], "dpo": files["dpo"]},
            "batch": {"sft": 64, "dpo": 16},
            "max_length": 64,
        }
    if "reference" in names:
        from reference_workload import build_workload

        files = build_workload(root / "reference")
        found["reference"] = {
            "model": files["model"],
            "data": {"sft": files["sft"], "dpo": files["dpo"]},
            "batch": {"sft": 8, "dpo": 8},
            "max_length": 1024,
        }
    return found


def _recipe(workload: dict, method: str, extra: dict, steps: int, out: Path) -> dict:
    recipe = {
        "model": {"name_or_path": str(workload["model"])},
        "data": {"datasets": [{"path": str(workload["data"][method])}]},
        "training": {
            "per_device_train_batch_size": workload["batch"][method],
            "max_steps": steps,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "save_strategy": "no",
            "output_dir": str(out),
        },
        method: {"max_length": workload["max_length"]},
    }
    if method == "dpo":
        recipe[method]["max_prompt_length"] = workload["max_length"] // 2
    for section, values in extra.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def _planned(recipe_path: Path, method: str):
    from alignkit.launch.memory import memory_plan
    from alignkit.launch.plan import LaunchOptions, plan_launch
    from alignkit.recipe.resolve import resolve_recipe

    resolved = resolve_recipe(method, str(recipe_path))
    return memory_plan(resolved.recipe, plan_launch(resolved.recipe, LaunchOptions(launch="none")))


def _measure(root: Path, name: str, workload: dict, method: str, label: str, extra: dict, steps: int) -> dict:
    import yaml

    out = root / "runs" / f"{name}-{method}-{label.replace(', ', '-').replace(' ', '-')}"
    recipe = _recipe(workload, method, extra, steps, out)
    # Every batch padded to max_length: the plan is a worst case over max_length, so the batches must reach it.
    recipe["training"]["extra"] = {"pad_to_multiple_of": workload["max_length"]}
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    plan = _planned(path, method)
    peak, _ = _peak_rss([sys.executable, "-m", "alignkit", method, "--recipe", str(path)], cwd=root)
    return {"workload": name, "method": method, "case": label, "peak_rss": peak, "plan": plan.as_dict()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["tiny", "reference"], choices=["tiny", "reference"])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the peak comes early)")
    parser.add_argument("--out", type=Path, help="also write every run to this JSON file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["ALIGNKIT_DATA_CACHE"] = str(root / "cache")
        baseline, _ = _peak_rss([sys.executable, "-c", BASELINE], cwd=root)
        print(f"baseline (imports only): {baseline / 2**20:.0f} MiB", flush=True)
        for name, workload in _workloads(root, args.workloads).items():
            for method, label, extra in CASES:
                row = _measure(root, name, workload, method, label, extra, args.steps)
                row["measured"] = row["peak_rss"] - baseline
                row["ratio"] = row["plan"]["planned_total"] / row["measured"]
                rows.append(row)
                print(_line(row), flush=True)
    print(f"\n{'workload':<10} {'method':<6} {'case':<20} {'planned':>9} {'measured':>9} {'plan/measured':>14}")
    for row in rows:
        mib = 2**20
        print(
            f"{row['workload']:<10} {row['method']:<6} {row['case']:<20} {row['plan']['planned_total'] / mib:>7.0f}M"
            f" {row['measured'] / mib:>8.0f}M {row['ratio']:>14.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps({"baseline": baseline, "runs": rows}, indent=2), encoding="utf-8")
    return 0


def _line(row: dict) -> str:
    plan, mib = row["plan"], 2**20
    parts = ("weights", "gradients", "optimizer_states", "activations", "activations_checkpointed", "logits", "runtime")
    shown = ", ".join(f"{part} {plan[part] / mib:.0f}M" for part in parts)
    return (
        f"{row['workload']} {row['method']} {row['case']}: planned {plan['planned_total'] / mib:.0f}M ({shown}),"
        f" measured {row['measured'] / mib:.0f}M, ratio {row['ratio']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
