"""Reward-model scoring throughput: alignkit's `reward_model` scorer against scoring one text at a time.

    .venv/bin/python benchmarks/reward_scoring.py [--texts 1024] [--batch-size 64] [--rounds 3] [--json]

Both sides score the same conversations (the demo's addition questions, each with a right and a wrong sum as
the answer: `alignkit.demo.task`) with the same sequence classifier: the demo's tiny Llama shape (hidden 128,
3 layers, random weights) with a one-output score head, as `alignkit rm` saves it. alignkit is
`RewardModelScorer.score` (texts rendered as reward-model training renders them, sorted by length, scored in
right-padded batches of --batch-size); the baseline renders each text the same way and runs one forward pass
per text. Loading is not timed. Rounds alternate the sides; the table gives the median seconds, texts per
second and the ratio of the medians alignkit / baseline (below 1: alignkit is faster), and checks that both
sides gave the same rewards. The 1-minute load average is printed first: above 1.5 other work shares the CPUs.
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

from timed_report import measure_and_report  # beside this script: python puts its folder first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_SHAPE = {"hidden_size": 128, "intermediate_size": 512, "num_layers": 3, "num_heads": 4}


def _conversations(folder: Path, count: int) -> tuple[list[list[dict]], list[str]]:
    from alignkit.demo.task import write_task

    rows = [json.loads(line) for line in write_task(folder)["dpo"].read_text(encoding="utf-8").splitlines()]
    prompts, answers = [], []
    for row in rows:
        for key in ("chosen", "rejected"):
            prompts.append(row["prompt"])
            answers.append(row[key][0]["content"])
    return prompts[:count], answers[:count]


def _reward_model(folder: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.demo.tiny import build_tiny_model

    causal = build_tiny_model(folder / "causal", **MODEL_SHAPE)
    tokenizer = AutoTokenizer.from_pretrained(causal)
    model = AutoModelForSequenceClassification.from_pretrained(causal, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder / "rm")
    tokenizer.save_pretrained(folder / "rm")
    return folder / "rm"


def one_at_a_time(loaded, prompts, answers) -> list[float]:
    import torch

    from alignkit.methods.rm import reward_text

    out = []
    with torch.inference_mode():
        for prompt, answer in zip(prompts, answers, strict=True):
            text = reward_text(loaded.tokenizer, [*prompt, {"role": "assistant", "content": answer}])
            encoded = loaded.tokenizer(text, return_tensors="pt").to(loaded.model.device)
            out.append(float(loaded.model(**encoded).logits[0, 0]))
    return out


def measure(args) -> dict:
    from alignkit.quiet import quiet_libraries
    from alignkit.scoring.reward_model import RewardModelScorer
    from alignkit.scoring.specs import RewardModelSpec

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        path = _reward_model(Path(tmp))
        prompts, answers = _conversations(Path(tmp) / "data", args.texts)
        scorer = RewardModelScorer(RewardModelSpec(path=str(path), batch_size=args.batch_size), "reward_model")
        loaded = scorer._loaded
        rows = [{}] * len(prompts)
        scorer.score(prompts[:4], answers[:4], rows[:4])  # untimed warm-up of both paths
        one_at_a_time(loaded, prompts[:4], answers[:4])
        times: dict[str, list[float]] = {"alignkit": [], "baseline": []}
        results: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            for side in ("alignkit", "baseline") if round_ % 2 == 0 else ("baseline", "alignkit"):
                start = time.perf_counter()
                if side == "alignkit":
                    results[side] = scorer.score(prompts, answers, rows)
                else:
                    results[side] = one_at_a_time(loaded, prompts, answers)
                times[side].append(time.perf_counter() - start)
        scorer.close()
    largest = max(abs(a - b) for a, b in zip(results["alignkit"], results["baseline"], strict=True))
    sides = {
        side: {"seconds": t, "median_s": statistics.median(t), "texts_per_s": len(prompts) / statistics.median(t)}
        for side, t in times.items()
    }
    return {
        "texts": len(prompts),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        **sides,
        "ratio": sides["alignkit"]["median_s"] / sides["baseline"]["median_s"],
        "largest_reward_difference": largest,
    }


def _table(result: dict, load: float) -> str:
    lines = [
        f"load average (1 min) at start: {load:.2f}",
        f"{result['texts']} texts, batch size {result['batch_size']}, {result['rounds']} rounds",
        f"{'side':<10} {'median':>9} {'texts/s':>10}",
    ]
    for side in ("alignkit", "baseline"):
        lines.append(f"{side:<10} {result[side]['median_s']:>8.2f}s {result[side]['texts_per_s']:>10.1f}")
    lines.append(f"ratio alignkit / baseline (median time): {result['ratio']:.2f}")
    lines.append(f"largest difference between the two sides' rewards: {result['largest_reward_difference']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    return measure_and_report(measure, args, _table)


if __name__ == "__main__":
    sys.exit(main())
