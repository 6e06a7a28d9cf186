"""CLI latency: median wall time of the light commands, against `python -c pass` in the same run.

    .venv/bin/python benchmarks/cli_latency.py [--runs 7]

Targets (issue 2, 2-core machine): --help, recipes list and sft --help under 0.3 s; a QLoRA dry run of
zephyr-7b-gemma under 1.5 s. Each command runs in a fresh interpreter, as a user would run it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALIGNKIT = [sys.executable, "-m", "alignkit"]
COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "alignkit --help": [*ALIGNKIT, "--help"],
    "alignkit recipes list": [*ALIGNKIT, "recipes", "list"],
    "alignkit sft --help": [*ALIGNKIT, "sft", "--help"],
    "alignkit sft --recipe zephyr-7b-gemma --qlora --dry-run": [
        *ALIGNKIT,
        "sft",
        "--recipe",
        "zephyr-7b-gemma",
        "--qlora",
        "--dry-run",
    ],
}
TARGETS = {"alignkit --help": 0.3, "alignkit recipes list": 0.3, "alignkit sft --help": 0.3}
TARGETS["alignkit sft --recipe zephyr-7b-gemma --qlora --dry-run"] = 1.5


def measure(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    failed = False
    print(f"{'command':<60} {'median':>8} {'min':>8} {'target':>8}")
    for label, command in COMMANDS.items():
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
        times = measure(command, args.runs)
        median = statistics.median(times)
        target = TARGETS.get(label)
        mark = "" if target is None else ("ok" if median < target else "SLOW")
        failed |= mark == "SLOW"
        shown = f"{target:.1f}s" if target else "-"
        print(f"{label:<60} {median:>7.3f}s {min(times):>7.3f}s {shown:>8} {mark}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
