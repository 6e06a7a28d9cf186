"""`alignkit run` chains every method after sft: a recipe folder whose pipeline trains sft, then a reward model,
KTO and SimPO, each from the sft output, on the tiny local Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignkit.methods import METHODS

pytestmark = pytest.mark.slow

QUESTIONS = [("what is 2 + 3?", "5", "6"), ("what is 4 + 4?", "8", "9"), ("hello", "hello world", "no")] * 3

TRAINING = {
    "learning_rate": 1e-3,
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "mixed_precision": "no",
    "save_strategy": "no",
    "seed": 0,
}


def _write(folder: Path, name: str, document: dict) -> None:
    (folder / name).write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


@pytest.fixture
def recipe_folder(tmp_path, tiny_model_dir) -> Path:
    folder = tmp_path / "my-preferences"
    (folder / "data").mkdir(parents=True)
    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a, _ in QUESTIONS
    ]
    pairs = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": b}],
        }
        for q, a, b in QUESTIONS
    ]
    for name, rows in (("chats.jsonl", chats), ("pairs.jsonl", pairs)):
        (folder / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    stages = [{"name": "sft", "method": "sft"}]
    for method in ("rm", "kto", "simpo"):
        stages.append({"name": method, "method": method, "from": "sft"})
    _write(folder, "pipeline.yaml", {"description": "sft, then three preference methods from it", "stages": stages})
    for stage in stages:
        method = stage["method"]
        section = {"max_length": 48}
        if "max_prompt_length" in METHODS[method].section.model_fields:
            section["max_prompt_length"] = 24
        document = {
            "model": {"name_or_path": str(tiny_model_dir), "dtype": "float32"},
            # Relative to the recipe folder.
            "data": {"datasets": [{"path": "data/chats.jsonl" if method == "sft" else "data/pairs.jsonl"}]},
            "training": dict(TRAINING),
            method: section,
        }
        _write(folder, f"{method}.yaml", document)
    return folder


def test_a_pipeline_chains_sft_into_rm_kto_and_simpo(cli, recipe_folder, tmp_path):
    root = tmp_path / "runs"
    result = cli("run", "--recipe", str(recipe_folder), "-o", str(root))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith("my-preferences: all 4 stages finished")
    for method in ("rm", "kto", "simpo"):
        info = json.loads((root / method / "alignkit_run.json").read_text())
        assert (info["finished"], info["method"]) == (True, method)
        frozen = yaml.safe_load((root / method / "alignkit_recipe.yaml").read_text())
        assert frozen["model"]["name_or_path"] == str(root / "sft"), f"{method} starts from the sft output"

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward = AutoModelForSequenceClassification.from_pretrained(root / "rm")
    tokenizer = AutoTokenizer.from_pretrained(root / "rm")
    batch = tokenizer(["what is 2 + 3? 5"], return_tensors="pt")
    with torch.no_grad():
        assert reward(**batch).logits.shape == (1, 1)
