"""Each measured step of the GPU check runs in a fresh interpreter: no imports, CUDA context or allocator
state carried over from the step before, and a timeout per step. The child prints one `RESULT {json}` line."""

from __future__ import annotations

import json
import subprocess
import sys


def spawn(script: str, *args: str, timeout: float | None = None) -> dict:
    """Run `script --child ARGS` in a fresh interpreter and return the JSON of its RESULT line."""
    command = [sys.executable, script, "--child", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        raise RuntimeError(f"{args[0]}: no result after {timeout:.0f} s") from expired
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{args[0]} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def answer(result: dict) -> int:
    """What a child does last: hand its result to the parent."""
    print("RESULT " + json.dumps(result), flush=True)
    return 0
