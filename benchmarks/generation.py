"""Generation throughput: alignkit's batched transformers backend against plain one-prompt-at-a-time generate.

    .venv/bin/python benchmarks/generation.py [--prompts 128] [--samples 4] [--rounds 3] [--max-new-tokens 32]
                                              [--batch-size 16] [--temperature 1.0] [--device cpu|cuda] [--json]

Both sides sample N completions for each of P prompts of the demo's addition task (`alignkit.demo.task`) from
the demo's tiny Llama (hidden 128, intermediate 512, 3 layers, 4 heads; random weights) with the same
settings. alignkit is `TransformersGenerator.generate`: batch_size prompts per `model.generate` call, sorted
by length, N sequences each. The baseline calls `model.generate(num_return_sequences=N)` once per prompt.
Loading is not timed, nor is one short warm-up call per side; each side's time covers encoding the prompts,
generating and decoding.

Rounds alternate the two sides, so a change in the machine's load hits both. The table gives each side's
median wall time over the rounds, completions per second (P x N / median), the mean generated tokens per
completion (the random model rarely emits its eos, so both sides do about the same work), and the ratio of
the medians alignkit / baseline: below 1 means alignkit is faster. The 1-minute load average is printed at
the start; above 1.5 other work shares the CPUs and the figures are not comparable.
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
from types import SimpleNamespace

from timed_report import measure_and_report  # beside this script: python puts its folder first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_SHAPE = {"hidden_size": 128, "intermediate_size": 512, "num_layers": 3, "num_heads": 4}


def _prompts(folder: Path, count: int) -> list[list[dict]]:
    from alignkit.demo.task import write_task

    files = write_task(folder)
    rows = []
    for name in ("sft_test", "sft"):
        rows += [json.loads(line) for line in files[name].read_text(encoding="utf-8").splitlines()]
    return [row["messages"][:1] for row in rows[:count]]


def _recipe(model_dir: Path) -> SimpleNamespace:
    from alignkit.recipe.sections import ModelSection

    return SimpleNamespace(
        model=ModelSection(name_or_path=str(model_dir), dtype="auto"),
        data=SimpleNamespace(chat_template=None),
        sample=SimpleNamespace(tensor_parallel_size=1, gpu_memory_utilization=0.9),
    )


def run_alignkit(generator, prompts, settings, seed: int) -> tuple[float, int]:
    """Seconds to generate, and the tokens generated."""
    start = time.perf_counter()
    results = generator.generate(prompts, settings, seed=seed)
    elapsed = time.perf_counter() - start
    return elapsed, sum(c.tokens for group in results for c in group)


def run_baseline(model, tokenizer, eos_ids, prompts, settings, seed: int) -> tuple[float, int]:
    """One `model.generate` per prompt with num_return_sequences; seconds and tokens generated."""
    import torch

    torch.manual_seed(seed)
    tokens = 0
    start = time.perf_counter()
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **encoded,
                max_new_tokens=settings.max_new_tokens,
                num_return_sequences=settings.num_samples,
                do_sample=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k,
                eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, encoded["input_ids"].shape[1] :].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))
            tokenizer.decode(row[:end], skip_special_tokens=True)
            tokens += end
    return time.perf_counter() - start, tokens


def _summary(times: list[float], tokens: list[int], completions: int) -> dict:
    median = statistics.median(times)
    return {
        "seconds": times,
        "median_s": median,
        "completions_per_s": completions / median,
        "tokens_per_completion": statistics.mean(tokens) / completions,
    }


def measure(args) -> dict:
    """Build the model and prompts, then time both sides, alternating, for args.rounds rounds."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.demo.tiny import build_tiny_model
    from alignkit.quiet import quiet_libraries
    from alignkit.sampling.generation import GenerationSettings, load_generator

    quiet_libraries()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = GenerationSettings(
        num_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", **MODEL_SHAPE)
        prompts = _prompts(Path(tmp) / "data", args.prompts)
        generator = load_generator(_recipe(model_dir), "transformers", device=device)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=generator.model.dtype).to(device).eval()
        # Untimed: the first generate call in a process pays for lazy imports and set-up (about a second).
        run_alignkit(generator, prompts[:2], settings, 0)
        run_baseline(model, generator.tokenizer, generator.eos_ids, prompts[:2], settings, 0)
        times: dict[str, list[float]] = {"alignkit": [], "baseline": []}
        tokens: dict[str, list[int]] = {"alignkit": [], "baseline": []}
        for round_ in range(args.rounds):
            for side in ("alignkit", "baseline") if round_ % 2 == 0 else ("baseline", "alignkit"):
                if side == "alignkit":
                    elapsed, count = run_alignkit(generator, prompts, settings, round_)
                else:
                    elapsed, count = run_baseline(
                        model, generator.tokenizer, generator.eos_ids, prompts, settings, round_
                    )
                times[side].append(elapsed)
                tokens[side].append(count)
    completions = len(prompts) * args.samples
    sides = {side: _summary(times[side], tokens[side], completions) for side in times}
    return {
        "device": device,
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("json", "device")}, "prompts": len(prompts)},
        **sides,
        "ratio": sides["alignkit"]["median_s"] / sides["baseline"]["median_s"],
    }


def _table(result: dict, load: float) -> str:
    settings = result["settings"]
    lines = [
        f"load average (1 min) at start: {load:.2f}",
        f"{settings['prompts']} prompts x {settings['samples']} samples, up to {settings['max_new_tokens']} new"
        f" tokens, temperature {settings['temperature']}, batch size {settings['batch_size']},"
        f" {settings['rounds']} rounds on {result['device']}",
        f"{'side':<10} {'median':>9} {'completions/s':>14} {'tokens/completion':>18}",
    ]
    for side in ("alignkit", "baseline"):
        row = result[side]
        lines.append(
            f"{side:<10} {row['median_s']:>8.2f}s {row['completions_per_s']:>14.1f}"
            f" {row['tokens_per_completion']:>18.1f}"
        )
    lines.append(f"ratio alignkit / baseline (median time): {result['ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        parser.error("--temperature must be above 0: the benchmark samples")
    return measure_and_report(measure, args, _table)


if __name__ == "__main__":
    sys.exit(main())
