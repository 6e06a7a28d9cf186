"""alignkit's own defaults against plain TRL's defaults on the reference workload of issue #14.

    .venv/bin/python benchmarks/reference_workload.py [--rounds 3] [--methods sft dpo] [--out FILE.json]
        [--sides trl alignkit] [--seed 42] [--same-seed] [--set KEY=VALUE ...]
    # --set: an alignkit override, to see what one default buys

The workload is built here, with no hub: a Llama of hidden size 256 and 4 layers (about 4M parameters) with
the demo's word-level tokenizer, 1,024 synthetic chats whose lengths are log-normal (a few long ones hit the
1,024-token limit, most are a few hundred tokens), and 512 preference pairs built the same way, whose chosen
answers draw a tenth of their words from the first third of the vocabulary and rejected ones from the last
third (a preference there is to learn, so the final losses measure learning, not drift; noisy pair by pair, so
one epoch does not learn it completely and the final losses stay comparable). Both sides get
only what a user would write: the model, the data, learning rate 2e-5, batch 8, max length 1,024 and one
epoch. Everything else is the side's own default: TRL's `SFTConfig`/`DPOConfig`, or alignkit's automatic
settings.

Each side runs in a fresh process, alternating within a round (TRL first), so both meet the same machine
state; the script prints every run, then the medians, the speed ratio (TRL's median `train_runtime` over
alignkit's) and the difference of the final train loss. Run it alone: a second job on the machine's cores
makes the ratio meaningless.

The train loss TRL reports is the mean over steps of each batch's mean token loss, so it depends on how rows
are batched: length-grouped batches weigh long and short rows differently from random ones. The script
therefore also scores both final models by one function, in float32: the final train loss (sft: token-weighted
next-token loss over the training chats; dpo: the sigmoid DPO loss at beta 0.1 over the training pairs, the
built model as reference) and, for sft, the same loss on 128 held-out chats. The loss target reads these.

Round r runs both sides with seed 42 + r (`--seed`; `--same-seed` keeps one), and the seed decides the order
of the rows. One epoch over the noisy dpo pairs lands 10% apart from one order to the next, so a loss read
from one order says little; the medians over the rounds compare, and the summary shows each side's range.
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
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {"learning_rate": 2e-5, "per_device_train_batch_size": 8, "num_train_epochs": 1, "max_length": 1024}
MODEL_SHAPE = {"hidden_size": 256, "intermediate_size": 1024, "num_layers": 4, "num_heads": 4}
CHATS, PAIRS, HELD_OUT = 1024, 512, 128
LEANING = 0.1


def _words(rng: random.Random, vocabulary: list[str], mean_words: float, leaning: list[str] | None = None) -> str:
    # Log-normal lengths: most texts are short, a long tail reaches the length limit (as in real chat data).
    count = max(1, min(600, int(rng.lognormvariate(math.log(mean_words), 0.8))))
    # A tenth of the words drawn from `leaning`: a preference that is there to learn but noisy pair by pair.
    pools = [leaning if leaning and rng.random() < LEANING else vocabulary for _ in range(count)]
    return " ".join(rng.choice(pool) for pool in pools)


def build_workload(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the model, the SFT chats and the DPO pairs under `root`."""
    from alignkit.demo.tiny import WORDS, build_tiny_model

    model = build_tiny_model(root / "model", **MODEL_SHAPE, max_position_embeddings=1024, seed=seed)
    rng = random.Random(seed)
    sft = root / "sft.jsonl"
    _write_chats(sft, rng, CHATS, WORDS)
    # Its own generator: the training data stay exactly what they were before the held-out set existed.
    _write_chats(root / "sft_held_out.jsonl", random.Random(seed + 1000), HELD_OUT, WORDS)
    dpo = root / "dpo.jsonl"
    third = len(WORDS) // 3
    good, bad = WORDS[:third], WORDS[-third:]
    with dpo.open("w", encoding="utf-8") as out:
        for _ in range(PAIRS):
            row = {
                "prompt": [{"role": "user", "content": _words(rng, WORDS, 40)}],
                "chosen": [{"role": "assistant", "content": _words(rng, WORDS, 60, good)}],
                "rejected": [{"role": "assistant", "content": _words(rng, WORDS, 60, bad)}],
            }
            out.write(json.dumps(row) + "\n")
    return {"model": model, "sft": sft, "dpo": dpo}


def _write_chats(path: Path, rng: random.Random, count: int, words: list[str]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            messages = [
                {"role": "user", "content": _words(rng, words, 40)},
                {"role": "assistant", "content": _words(rng, words, 80)},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")


def held_out_loss(model, tokenizer, chats: Path) -> float:
    """Token-weighted mean next-token loss of `model` over every token of the held-out chats (TRL's and
    alignkit's sft default: no prompt masking), in float32, one chat at a time (no padding)."""
    import torch

    model = model.float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for line in chats.read_text(encoding="utf-8").splitlines():
            ids = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True)
            ids = torch.tensor([ids["input_ids"][: SETTINGS["max_length"]]], device=model.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count


def _sequence_log_prob(model, tokenizer, prompt: list, answer: list) -> float:
    import torch

    def encode(messages: list, **options) -> list[int]:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)["input_ids"]

    start = len(encode(prompt, add_generation_prompt=True))
    ids = encode(prompt + answer)[: SETTINGS["max_length"]]
    ids = torch.tensor([ids], device=model.device)
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, ids[0, 1:, None])[:, 0]
    return picked[start - 1 :].sum().item()


def dpo_loss(model, reference, tokenizer, pairs: Path, beta: float = 0.1) -> float:
    """Mean sigmoid DPO loss of `model` against `reference` over every pair, in float32, one text at a time."""
    import torch

    model, reference = model.float().eval(), reference.float().eval()
    losses = []
    with torch.no_grad():
        for line in pairs.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            margin = 0.0
            for key, sign in (("chosen", 1.0), ("rejected", -1.0)):
                policy = _sequence_log_prob(model, tokenizer, row["prompt"], row[key])
                ref = _sequence_log_prob(reference, tokenizer, row["prompt"], row[key])
                margin += sign * (policy - ref)
            losses.append(-torch.nn.functional.logsigmoid(torch.tensor(beta * margin)).item())
    return sum(losses) / len(losses)


def final_losses(method: str, model, tokenizer, model_dir: Path, data: Path) -> dict:
    """The final model scored by one function for both sides: on the training data, and held out for sft."""
    if method == "sft":
        return {
            "final_train_loss": held_out_loss(model, tokenizer, data),
            "held_out_loss": held_out_loss(model, tokenizer, data.parent / "sft_held_out.jsonl"),
        }
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    return {"final_train_loss": dpo_loss(model, reference, tokenizer, data)}


def run_trl(method: str, model_dir: Path, data: Path, out: Path, seed: int) -> dict:
    """Plain TRL: its config's defaults plus the four settings a user gives (and the round's seed)."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=str(data), split="train")
    import torch

    # report_to and disable_tqdm only keep the console quiet; neither changes the training. Without use_cpu,
    # transformers refuses TRL's default bf16=True on a machine with no GPU.
    args = {**SETTINGS, "seed": seed, "output_dir": str(out), "report_to": "none", "disable_tqdm": True}
    args["use_cpu"] = not torch.cuda.is_available()
    config_class, trainer_class = (SFTConfig, SFTTrainer) if method == "sft" else (DPOConfig, DPOTrainer)
    trainer = trainer_class(model=model, args=config_class(**args), train_dataset=dataset, processing_class=tokenizer)
    metrics = trainer.train().metrics
    result = {"train_runtime": metrics["train_runtime"], "train_loss": metrics["train_loss"]}
    return result | final_losses(method, trainer.model, tokenizer, model_dir, data)


def run_alignkit(
    method: str, model_dir: Path, data: Path, out: Path, seed: int, overrides: tuple[str, ...] = ()
) -> dict:
    """`alignkit <method>` with a minimal recipe: the same four settings, alignkit's defaults for the rest
    (`overrides`: `--set` values, for ablations)."""
    import yaml
    from typer.testing import CliRunner

    from alignkit.cli import app

    settings = dict(SETTINGS)
    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"datasets": [{"path": str(data)}]},
        "training": {**{k: v for k, v in settings.items() if k != "max_length"}, "seed": seed, "output_dir": str(out)},
        method: {"max_length": settings["max_length"]},
    }
    if method == "dpo":
        # alignkit cuts dpo prompts to 512 tokens by default (the handbook's value); TRL 1.x cuts nothing but the
        # whole row at max_length. Off here, so both sides train on the same tokens and the losses compare.
        recipe[method]["max_prompt_length"] = None
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    sets = [part for value in overrides for part in ("--set", value)]
    result = CliRunner().invoke(app, [method, "--recipe", str(path), *sets])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    metrics = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
    result = {"train_runtime": metrics["train_runtime"], "train_loss": metrics["train_loss"]}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    return result | final_losses(method, model, tokenizer, model_dir, data)


def _one_side(argv: list[str]) -> int:
    side, method, model_dir, data, out, seed, *overrides = argv
    if side == "trl":
        result = run_trl(method, Path(model_dir), Path(data), Path(out), int(seed))
    else:
        result = run_alignkit(method, Path(model_dir), Path(data), Path(out), int(seed), tuple(overrides))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _spawn(side: str, method: str, files: dict[str, Path], out: Path, seed: int, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--side", side, method, str(files["model"]), str(files[method]), str(out)]
    command.append(str(seed))
    command += overrides if side == "alignkit" else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{side} {method} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    # The whole process, start-up and model loading included: alignkit computes dpo's reference log-probs before
    # training starts, outside train_runtime, while TRL's default computes them inside every step.
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "wall": wall}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        return _one_side(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    parser.add_argument("--out", type=Path, help="also write every run and the summary to this JSON file")
    parser.add_argument("--sides", nargs="+", default=["trl", "alignkit"], choices=["trl", "alignkit"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="alignkit override")
    parser.add_argument("--seed", type=int, default=42, help="both sides' seed in the first round (TRL's default)")
    parser.add_argument(
        "--same-seed", dest="vary_seed", action="store_false", help="every round with --seed (default: round r adds r)"
    )
    args = parser.parse_args()
    report: dict = {"settings": SETTINGS, "model": MODEL_SHAPE, "overrides": args.set, "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build_workload(root)
        for method in args.methods:
            for round_ in range(args.rounds):
                for side in args.sides:
                    seed = args.seed + (round_ if args.vary_seed else 0)
                    result = _spawn(side, method, files, root / f"{side}-{method}-{round_}", seed, args.set)
                    report["runs"].append({"method": method, "side": side, "round": round_ + 1, "seed": seed, **result})
                    held_out = f"  held-out loss {result['held_out_loss']:.4f}" if "held_out_loss" in result else ""
                    print(
                        f"{method} round {round_ + 1} seed {seed} {side:<8}"
                        f" train_runtime {result['train_runtime']:7.1f}s"
                        f"  wall {result['wall']:6.1f}s  train_loss {result['train_loss']:.4f}"
                        f"  final train loss {result['final_train_loss']:.4f}{held_out}",
                        flush=True,
                    )
            if len(args.sides) == 2:
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
        walls = f"TRL {s['trl_wall']:.1f}s, alignkit {s['alignkit_wall']:.1f}s ({s['wall_speedup']:.2f}x)"
        print(f"{'':<6} whole process: {walls}")
        print(
            f"{'':<6} final train loss (final model, one function): TRL {s['trl_final']:.4f},"
            f" alignkit {s['alignkit_final']:.4f} ({s['final_diff_pct']:+.2f}%); over the rounds TRL"
            f" {s['trl_final_range'][0]:.4f}-{s['trl_final_range'][1]:.4f},"
            f" alignkit {s['alignkit_final_range'][0]:.4f}-{s['alignkit_final_range'][1]:.4f}"
        )
        if "held_out_diff_pct" in s:
            print(
                f"{'':<6} held-out loss: TRL {s['trl_held_out']:.4f}, alignkit {s['alignkit_held_out']:.4f}"
                f" ({s['held_out_diff_pct']:+.2f}%)"
            )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def _summary(runs: list[dict], method: str) -> dict:
    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["method"] == method and r["side"] == side)

    trl_time, our_time = median("trl", "train_runtime"), median("alignkit", "train_runtime")
    trl_wall, our_wall = median("trl", "wall"), median("alignkit", "wall")
    trl_loss, our_loss = median("trl", "train_loss"), median("alignkit", "train_loss")
    summary = {
        "trl_runtime": trl_time,
        "alignkit_runtime": our_time,
        "speedup": trl_time / our_time,
        "trl_wall": trl_wall,
        "alignkit_wall": our_wall,
        "wall_speedup": trl_wall / our_wall,
        "trl_loss": trl_loss,
        "alignkit_loss": our_loss,
        "loss_diff_pct": 100 * (our_loss - trl_loss) / trl_loss,
    }
    trl_final, our_final = median("trl", "final_train_loss"), median("alignkit", "final_train_loss")
    summary |= {"trl_final": trl_final, "alignkit_final": our_final}
    summary["final_diff_pct"] = 100 * (our_final - trl_final) / trl_final
    for side in ("trl", "alignkit"):
        finals = [r["final_train_loss"] for r in runs if r["method"] == method and r["side"] == side]
        summary[f"{side}_final_range"] = (min(finals), max(finals))
    if all("held_out_loss" in r for r in runs if r["method"] == method):
        trl_held, our_held = median("trl", "held_out_loss"), median("alignkit", "held_out_loss")
        summary |= {"trl_held_out": trl_held, "alignkit_held_out": our_held}
        summary["held_out_diff_pct"] = 100 * (our_held - trl_held) / trl_held
    return summary


if __name__ == "__main__":
    sys.exit(main())
