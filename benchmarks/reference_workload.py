"""alignkit's own defaults against plain TRL's defaults on the reference workload of issue #14.

    .venv/bin/python benchmarks/reference_workload.py [--rounds 3] [--methods sft dpo] [--out FILE.json]

The workload is built here, with no hub: a Llama of hidden size 256 and 4 layers (about 4M parameters) with
the demo's word-level tokenizer, 1,024 synthetic chats whose lengths are log-normal (a few long ones hit the
1,024-token limit, most are a few hundred tokens), and 512 preference pairs built the same way. Both sides get
only what a user would write: the model, the data, learning rate 2e-5, batch 8, max length 1,024 and one
epoch. Everything else is the side's own default: TRL's `SFTConfig`/`DPOConfig`, or alignkit's automatic
settings.

Each side runs in a fresh process, alternating within a round (TRL first), so both meet the same machine
state; the script prints every run, then the medians, the speed ratio (TRL's median `train_runtime` over
alignkit's) and the difference of the final train loss. Run it alone: a second job on the machine's cores
makes the ratio meaningless.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {"learning_rate": 2e-5, "per_device_train_batch_size": 8, "num_train_epochs": 1, "max_length": 1024}
MODEL_SHAPE = {"hidden_size": 256, "intermediate_size": 1024, "num_layers": 4, "num_heads": 4}
CHATS, PAIRS = 1024, 512


def _words(rng: random.Random, vocabulary: list[str], mean_words: float) -> str:
    # Log-normal lengths: most texts are short, a long tail reaches the length limit (as in real chat data).
    count = max(1, min(600, int(rng.lognormvariate(math.log(mean_words), 0.8))))
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def build_workload(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the model, the SFT chats and the DPO pairs under `root`."""
    from alignkit.demo.tiny import WORDS, build_tiny_model

    model = build_tiny_model(root / "model", **MODEL_SHAPE, max_position_embeddings=1024, seed=seed)
    rng = random.Random(seed)
    sft = root / "sft.jsonl"
    with sft.open("w", encoding="utf-8") as out:
        for _ in range(CHATS):
            messages = [
                {"role": "user", "content": _words(rng, WORDS, 40)},
                {"role": "assistant", "content": _words(rng, WORDS, 80)},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    dpo = root / "dpo.jsonl"
    with dpo.open("w", encoding="utf-8") as out:
        for _ in range(PAIRS):
            row = {
                "prompt": [{"role": "user", "content": _words(rng, WORDS, 40)}],
                "chosen": [{"role": "assistant", "content": _words(rng, WORDS, 60)}],
                "rejected": [{"role": "assistant", "content": _words(rng, WORDS, 60)}],
            }
            out.write(json.dumps(row) + "\n")
    return {"model": model, "sft": sft, "dpo": dpo}


def run_trl(method: str, model_dir: Path, data: Path, out: Path) -> dict:
    """Plain TRL: its config's defaults plus the four settings a user gives."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=str(data), split="train")
    import torch

    # report_to and disable_tqdm only keep the console quiet; neither changes the training. Without use_cpu,
    # transformers refuses TRL's default bf16=True on a machine with no GPU.
    args = {**SETTINGS, "output_dir": str(out), "report_to": "none", "disable_tqdm": True}
    args["use_cpu"] = not torch.cuda.is_available()
    config_class, trainer_class = (SFTConfig, SFTTrainer) if method == "sft" else (DPOConfig, DPOTrainer)
    trainer = trainer_class(model=model, args=config_class(**args), train_dataset=dataset, processing_class=tokenizer)
    metrics = trainer.train().metrics
    return {"train_runtime": metrics["train_runtime"], "train_loss": metrics["train_loss"]}


def run_alignkit(method: str, model_dir: Path, data: Path, out: Path) -> dict:
    """`alignkit <method>` with a minimal recipe: the same four settings, alignkit's defaults for the rest."""
    import yaml
    from typer.testing import CliRunner

    from alignkit.cli import app

    settings = dict(SETTINGS)
    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"datasets": [{"path": str(data)}]},
        "training": {**{k: v for k, v in settings.items() if k != "max_length"}, "output_dir": str(out)},
        method: {"max_length": settings["max_length"]},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = CliRunner().invoke(app, [method, "--recipe", str(path)])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    metrics = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
    return {"train_runtime": metrics["train_runtime"], "train_loss": metrics["train_loss"]}


def _one_side(argv: list[str]) -> int:
    side, method, model_dir, data, out = argv
    run = run_trl if side == "trl" else run_alignkit
    print("RESULT " + json.dumps(run(method, Path(model_dir), Path(data), Path(out))), flush=True)
    return 0


def _spawn(side: str, method: str, files: dict[str, Path], out: Path) -> dict:
    command = [sys.executable, __file__, "--side", side, method, str(files["model"]), str(files[method]), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} {method} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        return _one_side(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    parser.add_argument("--out", type=Path, help="also write every run and the summary to this JSON file")
    args = parser.parse_args()
    report: dict = {"settings": SETTINGS, "model": MODEL_SHAPE, "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build_workload(root)
        for method in args.methods:
            for round_ in range(args.rounds):
                for side in ("trl", "alignkit"):
                    result = _spawn(side, method, files, root / f"{side}-{method}-{round_}")
                    report["runs"].append({"method": method, "side": side, "round": round_ + 1, **result})
                    print(
                        f"{method} round {round_ + 1} {side:<8} train_runtime {result['train_runtime']:7.1f}s"
                        f"  train_loss {result['train_loss']:.4f}",
                        flush=True,
                    )
            report["summary"][method] = _summary(report["runs"], method)
    print(
        f"\n{'method':<6} {'TRL defaults':>13} {'alignkit':>9} {'speed-up':>9}"
        f" {'loss TRL':>9} {'alignkit':>9} {'diff':>7}"
    )
    for method, s in report["summary"].items():
        print(
            f"{method:<6} {s['trl_runtime']:>12.1f}s {s['alignkit_runtime']:>8.1f}s {s['speedup']:>8.2f}x"
            f" {s['trl_loss']:>9.4f} {s['alignkit_loss']:>9.4f} {s['loss_diff_pct']:>+6.2f}%"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def _summary(runs: list[dict], method: str) -> dict:
    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["method"] == method and r["side"] == side)

    trl_time, our_time = median("trl", "train_runtime"), median("alignkit", "train_runtime")
    trl_loss, our_loss = median("trl", "train_loss"), median("alignkit", "train_loss")
    return {
        "trl_runtime": trl_time,
        "alignkit_runtime": our_time,
        "speedup": trl_time / our_time,
        "trl_loss": trl_loss,
        "alignkit_loss": our_loss,
        "loss_diff_pct": 100 * (our_loss - trl_loss) / trl_loss,
    }


if __name__ == "__main__":
    sys.exit(main())
