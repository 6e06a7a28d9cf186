"""GPU check, grpo section: `alignkit grpo` on a GPU generating with transformers and, when vLLM is installed,
with vLLM colocated on the training GPU (`grpo.vllm: colocate`).

    python benchmarks/gpu_grpo.py --shape 1b --workdir DIR --out FILE [--steps 6] [--generations 8]

The model is the check's Llama-3.2-1B shape with random weights (gpu_models.py), the prompts the offline
demo's addition questions, the reward exact match against the sum (a random model earns about none: this
checks that the path runs and how fast, not that it learns; benchmarks/grpo_learning.py measures learning on
the CPU). Each arm runs the real command (`python -m alignkit grpo`) into its own folder; its figures come from
that run's trainer state: TRL's seconds per step (median; the first step, which warms vLLM up, excluded) and
the completion lengths, and the run's own word on where it generated (an `auto:` line when it fell back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from gpu_models import built_model  # beside this script: python puts its folder first on sys.path
from gpu_sample import _prompts


def run_arm(mode: str, model: str, prompts: Path, work: Path, args) -> dict:
    """Run `alignkit grpo` with `grpo.vllm: mode`; its step times, memory and decided generation."""
    import yaml

    out = work / f"grpo-{mode}"
    recipe = {
        "model": {"name_or_path": model, "dtype": "bfloat16"},
        "data": {"datasets": [{"path": str(prompts)}]},
        "training": {
            "output_dir": str(out),
            "learning_rate": 1e-6,
            "max_steps": args.steps,
            "per_device_train_batch_size": args.generations * args.prompts_per_step,
            "gradient_checkpointing": True,
            "save_strategy": "no",
            "seed": 0,
        },
        "logging": {"logging_steps": 1},
        "grpo": {
            "vllm": mode,
            "num_generations": args.generations,
            "max_completion_length": args.max_completion_length,
            "max_length": 512,
            "rewards": [{"exact_match": "answer"}],
        },
    }
    path = work / f"grpo-{mode}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "alignkit", "grpo", "--recipe", str(path), "--overwrite"],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    log = done.stdout + done.stderr
    if done.returncode != 0:
        return {"error": log.strip().splitlines()[-3:], "wall_s": round(wall, 1)}
    decided = re.search(r"grpo\.vllm = (\w+): (.*)", log)
    history = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    steps = [row for row in history if "step_time" in row or "completions/mean_length" in row]
    step_times = [row["step_time"] for row in steps if "step_time" in row][1:]
    return {
        "wall_s": round(wall, 1),
        # An explicit mode is echoed only when the run overrides it (no vLLM here: transformers instead).
        "generation": decided.group(1) if decided else mode,
        "why": decided.group(2) if decided else "as the recipe asks",
        "seconds_per_step": round(sorted(step_times)[len(step_times) // 2], 2) if step_times else None,
        "mean_completion_length": steps[-1].get("completions/mean_length") if steps else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = built_model(args.workdir, args.shape)["model"]
    prompts = _prompts(args.workdir / "data", 64)
    figures = {"shape": args.shape, "steps": args.steps, "generations": args.generations}
    figures["transformers"] = run_arm("off", model, prompts, args.workdir, args)
    if importlib.util.find_spec("vllm") is None:
        figures["vllm"] = {"skipped": "vllm is not installed"}
    else:
        figures["vllm"] = run_arm("colocate", model, prompts, args.workdir, args)
    off, colocate = figures["transformers"], figures["vllm"]
    if off.get("seconds_per_step") and colocate.get("seconds_per_step"):
        figures["vllm_speedup"] = round(off["seconds_per_step"] / colocate["seconds_per_step"], 2)
    args.out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return 1 if any("error" in figures[key] for key in ("transformers", "vllm")) else 0


if __name__ == "__main__":
    sys.exit(main())
