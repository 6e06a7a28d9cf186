"""Online RL learns on the CPU: the offline demo's task, a short SFT, then `alignkit grpo` (or `alignkit rloo`)
with an exact-match reward.

    .venv/bin/python benchmarks/grpo_learning.py [--method grpo|rloo] [--steps 300] [--json]

In a scratch folder it builds the demo's tiny Llama and addition task (alignkit.demo), runs the real commands
`alignkit sft --recipe tiny-demo` (3 epochs: deliberately short of perfect) and `alignkit METHOD --recipe
tiny-demo` (8 questions x 8 answers per step, reward 1 when the answer equals the sum), and reports held-out
exact match (200 questions never trained on, greedy) after SFT and after the RL stage, and the mean training
reward over the first and the last 50 steps (sampled at temperature 1.0, so below the greedy exact match).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_SHAPE = {"hidden_size": 128, "intermediate_size": 512, "num_layers": 3, "num_heads": 4}
WINDOW = 50


def _run(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "alignkit", *args], check=True, capture_output=True)
    return time.monotonic() - started


def measure(steps: int, method: str) -> dict:
    from alignkit.demo.evaluate import exact_match
    from alignkit.demo.task import write_task
    from alignkit.demo.tiny import build_tiny_model
    from alignkit.quiet import quiet_libraries

    quiet_libraries()
    build_tiny_model(Path("alignkit-demo/tiny-llama"), **MODEL_SHAPE)
    files = write_task(Path("alignkit-demo/data"))
    sft_seconds = _run("sft", "--recipe", "tiny-demo")
    before = exact_match(Path("outputs/tiny-demo-sft"), files["sft_test"])
    rl_seconds = _run(
        method, "--recipe", "tiny-demo", "--set", f"training.max_steps={steps}", "--set", "logging.logging_steps=1"
    )
    after = exact_match(Path(f"outputs/tiny-demo-{method}"), files["sft_test"])
    history = json.loads(Path(f"outputs/tiny-demo-{method}/trainer_state.json").read_text())["log_history"]
    rewards = [row["reward"] for row in history if "reward" in row]
    return {
        "method": method,
        "steps": steps,
        "exact_match_after_sft": before,
        "exact_match_after_rl": after,
        "reward_first_steps": statistics.mean(rewards[:WINDOW]),
        "reward_last_steps": statistics.mean(rewards[-WINDOW:]),
        "sft_seconds": round(sft_seconds, 1),
        "rl_seconds": round(rl_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--method", choices=("grpo", "rloo"), default="grpo")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        result = {**measure(args.steps, args.method), "load_average": load}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"load average (1 min) at start: {load:.2f}")
    print(
        f"held-out exact match: after SFT {result['exact_match_after_sft']:.1%}, after {args.method}"
        f" {result['exact_match_after_rl']:.1%} ({args.steps} steps)"
    )
    print(
        f"mean training reward: first {WINDOW} steps {result['reward_first_steps']:.3f}, last {WINDOW} steps"
        f" {result['reward_last_steps']:.3f}"
    )
    print(f"wall: sft {result['sft_seconds']} s, {args.method} {result['rl_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
