"""GPU check, sample section: `alignkit sample` on a GPU with the transformers backend and, when vLLM is
installed, the vllm backend; and the batching ratio of benchmarks/generation.py on CUDA.

    python benchmarks/gpu_sample.py --shape 1b --workdir DIR --out FILE [--prompts 256] [--samples 4]

The model is the check's Llama-3.2-1B shape with random weights (gpu_models.py); the prompts are the offline
demo's addition questions. Each backend runs the real command (`python -m alignkit sample`) into its own
folder and its figures come from that run's alignkit_sample.json (completions/s and tokens/s over the
generation, model loading excluded) and from the wall time of the whole command. A random model rarely ends
a completion early, so both backends generate about max_new_tokens per completion.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_models import built_model  # beside this script: python puts its folder first on sys.path


def _prompts(folder: Path, count: int) -> Path:
    from alignkit.demo.task import write_task

    rows = [json.loads(line) for line in write_task(folder)["prompts"].read_text(encoding="utf-8").splitlines()]
    path = folder / "gpu_prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:count]), encoding="utf-8")
    return path


def run_backend(backend: str, model: str, prompts: Path, work: Path, args) -> dict:
    """Run `alignkit sample` with `backend`; its generation figures, the command's wall time and counts."""
    import yaml

    out = work / f"sample-{backend}"
    recipe = {
        "model": {"name_or_path": model, "dtype": "bfloat16"},
        "data": {"datasets": [{"path": str(prompts)}]},
        "sample": {
            "backend": backend,
            "num_samples": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "batch_size": args.batch_size if backend == "transformers" else args.prompts,
            "gpu_memory_utilization": 0.5,
            "scorers": [{"regex": "[0-9]"}],
            "select": "best",
        },
        "training": {"output_dir": str(out)},
    }
    path = work / f"sample-{backend}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "alignkit", "sample", "--recipe", str(path), "--overwrite"],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:], "wall_s": wall}
    summary = json.loads((out / "alignkit_sample.json").read_text(encoding="utf-8"))
    return {
        "wall_s": round(wall, 1),
        "counts": summary["counts"],
        "backend_reason": summary["backend_reason"],
        **summary["generation"],
    }


def batching_ratio(args) -> dict:
    """benchmarks/generation.py (the demo's tiny model, on CUDA when there is one): alignkit's batches against one
    prompt at a time."""
    script = Path(__file__).resolve().parent / "generation.py"
    done = subprocess.run(
        [
            *(sys.executable, str(script), "--prompts", str(min(64, args.prompts)), "--rounds", "3", "--json"),
            *("--max-new-tokens", str(min(32, args.max_new_tokens))),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    found = json.loads(done.stdout)
    return {
        "ratio": found["ratio"],
        "alignkit_s": found["alignkit"]["median_s"],
        "baseline_s": found["baseline"]["median_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = built_model(args.workdir, args.shape)["model"]
    prompts = _prompts(args.workdir / "data", args.prompts)
    figures = {
        "shape": args.shape,
        "prompts": args.prompts,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
    }
    figures["transformers"] = run_backend("transformers", model, prompts, args.workdir, args)
    if importlib.util.find_spec("vllm") is None:
        figures["vllm"] = {"skipped": "vllm is not installed"}
    else:
        figures["vllm"] = run_backend("vllm", model, prompts, args.workdir, args)
    figures["batching"] = batching_ratio(args)
    args.out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(json.dumps(figures, indent=2))
    failed = any("error" in figures[key] for key in ("transformers", "vllm", "batching"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
