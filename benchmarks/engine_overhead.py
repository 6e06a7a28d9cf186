"""Wrapper overhead: alignkit's SFT and DPO against plain TRL trainers on the same model, data and settings.

    .venv/bin/python benchmarks/engine_overhead.py [--runs 3] [--steps 60]

Both sides train the same tiny local Llama for the same steps; alignkit's time covers the whole in-process
run (data preparation, training, saving, card and curves), TRL's the trainer's construction and training
only, so the ratio is an upper bound on alignkit's overhead. It also compares the trainers' own
`train_runtime` (the training loop alone). Prints medians and the ratios per method.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [(f"what is {a} + {b}?", str(a + b)) for a in range(20) for b in range(10)]


def _data(folder: Path) -> dict[str, Path]:
    sft = folder / "sft.jsonl"
    dpo = folder / "dpo.jsonl"
    sft.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in QUESTIONS
        )
    )
    dpo.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": q}],
                    "chosen": [{"role": "assistant", "content": a}],
                    "rejected": [{"role": "assistant", "content": a + "1"}],
                }
            )
            + "\n"
            for q, a in QUESTIONS
        )
    )
    return {"sft": sft, "dpo": dpo}


def _settings(steps: int) -> dict:
    return {
        "learning_rate": 1e-3,
        "max_steps": steps,
        "per_device_train_batch_size": 16,
        "seed": 0,
        "gradient_checkpointing": False,
        "save_strategy": "no",
    }


def run_alignkit(method: str, model: Path, data: Path, out: Path, steps: int) -> tuple[float, float]:
    import yaml
    from typer.testing import CliRunner

    from alignkit.cli import app

    section = {"max_length": 64} if method == "sft" else {"max_length": 64, "max_prompt_length": None}
    recipe = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"datasets": [{"path": str(data)}]},
        "training": {**_settings(steps), "output_dir": str(out), "mixed_precision": "no"},
        method: section,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    start = time.perf_counter()
    result = CliRunner().invoke(app, [method, "--recipe", str(path)])
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(result.output)
    metrics = json.loads((out / "all_results.json").read_text())
    return elapsed, metrics["train_runtime"]


def run_trl(method: str, model_dir: Path, data: Path, out: Path, steps: int) -> tuple[float, float]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=str(data), split="train")
    common = {**_settings(steps), "output_dir": str(out), "use_cpu": True, "bf16": False, "report_to": "none"}
    common |= {"max_length": 64, "disable_tqdm": True, "logging_steps": 10}
    if method == "sft":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer)
    else:
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    return time.perf_counter() - start, result.metrics["train_runtime"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from alignkit.demo.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", hidden_size=128, intermediate_size=512, num_layers=3)
        files = _data(root)
        print(f"{'method':<6} {'what':<14} {'alignkit (median)':>18} {'plain TRL (median)':>19} {'ratio':>7}")
        for method in ("sft", "dpo"):
            ours, theirs = [], []
            for run in range(args.runs):
                theirs.append(run_trl(method, model, files[method], root / f"trl-{method}-{run}", args.steps))
                ours.append(run_alignkit(method, model, files[method], root / f"ak-{method}-{run}", args.steps))
            for index, what in enumerate(("whole run", "training loop")):
                a = statistics.median(r[index] for r in ours)
                t = statistics.median(r[index] for r in theirs)
                print(f"{method:<6} {what:<14} {a:>17.2f}s {t:>18.2f}s {a / t:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
