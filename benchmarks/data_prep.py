"""Data preprocessing speed: a 100k-row synthetic chat dataset through `prepare_data`, 1 and 2 workers, then cached.

    .venv/bin/python benchmarks/data_prep.py [--rows 100000]

Each first run starts from an empty cache folder (so the JSON-to-Arrow conversion of `datasets` is
included, as a user's first run pays it). The cached run repeats the 1-worker recipe against its filled
cache. The tokenizer is a byte-level BPE trained here on the same text (8k vocabulary, ChatML tokens and
template), so tokenization costs what a real BPE tokenizer costs; no hub access. Target (issue 4): the
cached run under 5% of the first. Everything is written under a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

WORDS = (
    "the a of and to in is you that it he was for on are as with his they at be this have from or one had by"
    " word but not what all were we when your can said there use an each which she do how their if will up"
    " other about out many then them these so some her would make like him into time has look two more write"
    " go see number no way could people my than first water been call who oil its now find long down day did"
).split()


def synthetic_chats(rows: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(rows):
        turns = rng.choice((1, 2, 3))
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 15)))})
        for _ in range(turns):
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(8, 40))) + "?"})
            messages.append(
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(20, 120))) + "."}
            )
        yield {"messages": messages}


def bpe_tokenizer(sample_texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from alignkit.chat_templates import CHATML

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    core.train_from_iterator(sample_texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def timed_run(data_file: Path, cache: Path, tokenizer, num_proc: int, assistant_only: bool) -> tuple[float, object]:
    from alignkit.data.prepare import prepare_data
    from alignkit.methods import METHODS

    os.environ["ALIGNKIT_DATA_CACHE"] = str(cache)
    recipe = METHODS["sft"].recipe.model_validate(
        {
            "model": {"name_or_path": "bench"},
            "data": {"datasets": [{"path": str(data_file)}], "num_proc": num_proc},
            "sft": {"assistant_only_loss": assistant_only, "max_length": 1024},
        }
    )
    start = time.perf_counter()
    prepared = prepare_data(recipe, tokenizer)
    return time.perf_counter() - start, prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="alignkit-bench-") as folder:
        root = Path(folder)
        data_file = root / "chats.jsonl"
        with data_file.open("w", encoding="utf-8") as handle:
            for row in synthetic_chats(args.rows):
                handle.write(json.dumps(row) + "\n")
        sample = [m["content"] for row in synthetic_chats(5000, seed=1) for m in row["messages"]]
        tokenizer = bpe_tokenizer(sample)
        results = []
        load_before = f"{os.getloadavg()[0]:.2f}"
        for label, num_proc, assistant_only, cache in (
            ("assistant-only masks, 1 worker", 1, True, root / "cache-1"),
            ("assistant-only masks, 2 workers", 2, True, root / "cache-2"),
            ("all tokens (default), 1 worker", 1, False, root / "cache-3"),
        ):
            seconds, prepared = timed_run(data_file, cache, tokenizer, num_proc, assistant_only)
            assert not prepared.report.cached
            results.append((label, seconds, prepared.report))
        seconds, prepared = timed_run(data_file, root / "cache-1", tokenizer, 1, True)
        assert prepared.report.cached
        cached = seconds
        first = results[0][1]
        lengths = results[0][2].train_lengths
        print(f"rows: {args.rows}, tokens per row: mean {lengths.mean}, max {lengths.max}, total {lengths.total}")
        print(f"load average before/after: {load_before} / {os.getloadavg()[0]:.2f}")
        print("| run | wall time | rows/s |")
        print("|---|---|---|")
        for label, seconds, _ in results:
            print(f"| {label} | {seconds:.1f} s | {args.rows / seconds:,.0f} |")
        share = f"{cached / first:.2%} of the first"
        print(f"| second run, cached (assistant-only, 1 worker) | {cached * 1000:.0f} ms | {share} |")


if __name__ == "__main__":
    main()
