"""Held-out metrics of the demo task: exact-match accuracy of greedy answers, preference accuracy (how often
the model gives the right sum a higher likelihood than the wrong one), and a reward model's pairwise accuracy
(how often it scores the right sum above the wrong one)."""

from __future__ import annotations

import json
from pathlib import Path


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def exact_match(model_dir: Path, test_path: Path, *, batch_size: int = 50) -> float:
    """Fraction of held-out questions answered exactly right by greedy decoding."""
    import torch

    model, tokenizer = _load(model_dir)
    rows = _rows(test_path)
    tokenizer.padding_side = "left"
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(row["messages"][:1], tokenize=False, add_generation_prompt=True)
            for row in batch
        ]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for row, tokens in zip(batch, out, strict=True):
            answer = tokenizer.decode(tokens[encoded["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            correct += answer == row["messages"][1]["content"]
    return correct / len(rows)


def preference_accuracy(model_dir: Path, pairs_path: Path) -> float:
    """Fraction of held-out pairs where log p(chosen | prompt) > log p(rejected | prompt)."""
    import torch

    model, tokenizer = _load(model_dir)
    wins = 0
    rows = _rows(pairs_path)
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for key in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(ids[1:])
            token_scores = logprobs[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :]
            scores.append(float(token_scores.sum()))
        wins += scores[0] > scores[1]
    return wins / len(rows)


def reward_accuracy(model_dir: Path, pairs_path: Path, *, batch_size: int = 100) -> float:
    """Fraction of held-out pairs where the reward model scores chosen above rejected (ties count as misses)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.methods.rm import reward_text

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.eval()
    rows = _rows(pairs_path)
    wins = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        texts = [reward_text(tokenizer, row["prompt"] + row[key]) for key in ("chosen", "rejected") for row in batch]
        # Padded on the right, as in training: the model reads each reward at the last token before the padding.
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            rewards = model(**encoded).logits[:, 0]
        chosen, rejected = rewards[: len(batch)], rewards[len(batch) :]
        wins += int((chosen > rejected).sum())
    return wins / len(rows)
