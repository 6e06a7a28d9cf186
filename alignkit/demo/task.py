"""The demo's synthetic task: two-digit addition, whose answers can be checked exactly.

Training and held-out problems never share a pair of operands. DPO pairs put the right sum against a
plausible wrong one (off by a little, or with two digits swapped), so preference accuracy means something.
The prompts file holds training questions with their answer in a column of its own, as `alignkit sample`'s
exact-match scorer reads a reference.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MAX_OPERAND = 100


def question(a: int, b: int) -> str:
    return f"what is {a} + {b}?"


def wrong_answer(a: int, b: int, rng: random.Random) -> str:
    right = a + b
    text = str(right)
    if len(text) > 1 and text[0] != text[-1] and rng.random() < 0.3:
        return text[::-1]
    offset = rng.choice([-10, -2, -1, 1, 2, 10])
    return str(max(0, right + offset) if right + offset != right else right + 1)


def split_pairs(seed: int, n_test: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All operand pairs, shuffled and cut into (train, test)."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(MAX_OPERAND) for b in range(MAX_OPERAND)]
    rng.shuffle(pairs)
    return pairs[n_test:], pairs[:n_test]


def write_task(
    folder: Path, *, seed: int = 0, n_test: int = 200, n_dpo: int = 2000, n_prompts: int = 4000
) -> dict[str, Path]:
    """Write sft/dpo train and test jsonl files, the sampling prompts and the held-out prompts (the sft test
    questions with their answers, for `alignkit eval`) into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    train, test = split_pairs(seed, n_test)

    def sft_row(a: int, b: int) -> dict:
        return {
            "messages": [
                {"role": "user", "content": question(a, b)},
                {"role": "assistant", "content": str(a + b)},
            ]
        }

    def dpo_row(a: int, b: int) -> dict:
        return {
            "prompt": [{"role": "user", "content": question(a, b)}],
            "chosen": [{"role": "assistant", "content": str(a + b)}],
            "rejected": [{"role": "assistant", "content": wrong_answer(a, b, rng)}],
        }

    files = {
        "sft": [sft_row(a, b) for a, b in train],
        "sft_test": [sft_row(a, b) for a, b in test],
        "dpo": [dpo_row(a, b) for a, b in rng.sample(train, min(n_dpo, len(train)))],
        "dpo_test": [dpo_row(a, b) for a, b in test],
        "prompts": [{"prompt": question(a, b), "answer": str(a + b)} for a, b in train[:n_prompts]],
        "heldout": [{"prompt": question(a, b), "answer": str(a + b)} for a, b in test],
    }
    paths = {}
    for name, rows in files.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        paths[name] = path
    return paths
