"""Reward modelling (`alignkit rm`) end to end on the tiny local Llama: full fine-tuning, LoRA (score head
trained in full), QLoRA and a start from an SFT LoRA adapter; each result reloads as a sequence classifier
and scores the chosen response of every training pair above the rejected one. Also the data preview, a flat
`trl reward` config, and the errors a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_train import CHAT, _assert_finished_run, _jsonl, write_recipe

from alignkit.methods.rm import reward_text

pytestmark = pytest.mark.slow

PAIRS = [
    {
        "prompt": [{"role": "user", "content": q}],
        "chosen": [{"role": "assistant", "content": a}],
        "rejected": [{"role": "assistant", "content": "no bad wrong"}],
    }
    for q, a in CHAT
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rm-data")
    _jsonl(folder / "dpo.jsonl", PAIRS)
    _jsonl(folder / "sft.jsonl", [{"messages": row["prompt"] + row["chosen"]} for row in PAIRS])
    _jsonl(folder / "held_out.jsonl", PAIRS)  # the same pairs, read as a test source: eval_* metrics
    _jsonl(folder / "completions.jsonl", [{"prompt": q, "completion": a} for q, a in CHAT])
    return folder


def _rm_recipe(tmp_path, model, data_dir, out, **sections) -> Path:
    """A recipe that trains 4 steps on all 8 pairs at a high learning rate and evaluates on them."""
    training = {"max_steps": 4, "per_device_train_batch_size": 8, "eval_strategy": "steps", "eval_steps": 2}
    path = write_recipe(tmp_path, "rm", model, data_dir, out, training=training, **sections)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["datasets"].append({"path": str(data_dir / "held_out.jsonl"), "role": "test"})
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _rewards(model, tokenizer, rows) -> list[tuple[float, float]]:
    """(reward of chosen, reward of rejected) per pair, each conversation scored as the trainer saw it."""
    import torch

    model.eval()
    scores = []
    for row in rows:
        pair = []
        for key in ("chosen", "rejected"):
            encoded = tokenizer(reward_text(tokenizer, row["prompt"] + row[key]), return_tensors="pt")
            with torch.no_grad():
                pair.append(float(model(**encoded).logits[0, 0]))
        scores.append(tuple(pair))
    return scores


def _assert_ranks_pairs(out: Path, *, adapter: bool, evaluated: bool = True) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    if adapter:
        from peft import AutoPeftModelForSequenceClassification

        # The adapter's base is the causal LM it started from: its config says nothing of the one-output head.
        model = AutoPeftModelForSequenceClassification.from_pretrained(
            out, num_labels=1, pad_token_id=tokenizer.pad_token_id
        )
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    scores = _rewards(model, tokenizer, PAIRS)
    assert all(chosen > rejected for chosen, rejected in scores), scores
    card = (out / "README.md").read_text()
    assert "reward modelling (RM)" in card and "| loss | Bradley-Terry |" in card
    if not evaluated:
        return
    metrics = json.loads((out / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_margin", "eval_min_reward", "eval_mean_reward", "eval_max_reward"):
        assert key in metrics, sorted(metrics)
    assert metrics["eval_accuracy"] == 1.0 and metrics["eval_margin"] > 0
    assert "| eval_accuracy | 1 |" in card


def test_full_fine_tuning_ranks_chosen_above_rejected(cli, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "rm-full"
    result = cli("rm", "--recipe", _rm_recipe(tmp_path, tiny_model_dir, data_dir, out))
    assert result.exit_code == 0, result.output
    assert "rm data: 8 train rows, 8 test rows" in result.output.splitlines()
    assert "accuracy" in result.output and "margin" in result.output  # the progress lines show them
    _assert_finished_run(out, "rm")
    _assert_ranks_pairs(out, adapter=False)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]


def test_lora_trains_the_score_head_in_full(cli, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "rm-lora"
    peft = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    training = {"learning_rate": 5e-2}
    recipe = _rm_recipe(tmp_path, tiny_model_dir, data_dir, out, peft=peft)
    result = cli("rm", "--recipe", recipe, "--set", f"training.learning_rate={training['learning_rate']}")
    assert result.exit_code == 0, result.output
    _assert_finished_run(out, "rm", adapter=True)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    assert any(name.startswith("base_model.model.score") for name in saved), sorted(saved)
    _assert_ranks_pairs(out, adapter=True)


def test_pad_token_moves_the_reading_to_the_answers_last_token(cli, tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm-pad"
    recipe = _rm_recipe(tmp_path, tiny_model_dir, data_dir, out)
    result = cli("rm", "--recipe", recipe, "--set", "rm.pad_token=<|im_end|>")
    assert result.exit_code == 0, result.output
    _assert_ranks_pairs(out, adapter=False)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token == "<|im_end|>" and model.config.pad_token_id == end
    assert "read at its last token before the pad token '<|im_end|>'" in (out / "README.md").read_text()
    import torch

    # Read at the answer's last token: the end marker after it changes nothing (the model is causal), up to
    # float rounding (SDPA sums in an order that depends on the length); read at the end marker it would differ.
    text = reward_text(tokenizer, PAIRS[0]["prompt"] + PAIRS[0]["chosen"])
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0, -1] == end
    with torch.no_grad():
        whole, cut = model(input_ids=ids).logits[0, 0], model(input_ids=ids[:, :-1]).logits[0, 0]
        at_marker = model.score(model.model(input_ids=ids).last_hidden_state[0, -1])[0]
    torch.testing.assert_close(whole, cut, rtol=0, atol=1e-5)
    assert abs(float(at_marker) - float(whole)) > 1e-3


def test_qlora_and_a_start_from_an_sft_adapter(cli, tiny_model_dir, data_dir, tmp_path):
    sft_out = tmp_path / "sft-lora"
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    assert (
        cli("sft", "--recipe", write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, sft_out, peft=peft)).exit_code
        == 0
    )

    out = tmp_path / "rm-qlora-from-adapter"
    recipe = _rm_recipe(tmp_path, sft_out, data_dir, out)
    # No evaluation: bitsandbytes' CPU inference kernel cannot repack a 4-bit layer 32 wide (a GPU can).
    settings = ["training.learning_rate=5e-2", "training.max_steps=4", "training.per_device_train_batch_size=8"]
    settings.append("training.eval_strategy='no'")
    result = cli("rm", "--recipe", recipe, "--qlora", *(part for s in settings for part in ("--set", s)))
    assert result.exit_code == 0, result.output
    assert f"merged the adapter {sft_out} into its base (a CAUSAL_LM adapter, and this method trains SEQ_CLS)" in (
        result.output
    )
    _assert_finished_run(out, "rm", adapter=True)
    frozen = yaml.safe_load((out / "alignkit_recipe.yaml").read_text())
    assert frozen["quantization"]["load_in_4bit"] is True
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    _assert_ranks_pairs(out, adapter=True, evaluated=False)


def test_data_preview_and_dry_run(cli, tiny_model_dir, data_dir, tmp_path):
    recipe = write_recipe(tmp_path, "rm", tiny_model_dir, data_dir, tmp_path / "never")
    result = cli("data", "rm", "--recipe", recipe, "--show", "1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["method"], document["train_rows"], document["sources"][0]["format"]) == ("rm", 8, "preference")
    dry = cli("rm", "--recipe", recipe, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    section = json.loads(dry.stdout)["recipe"]["rm"]
    assert section == {
        "max_length": 48,
        "max_prompt_length": 24,
        "center_rewards_coefficient": None,
        "disable_dropout": True,
        "pad_token": None,
    }
    assert not (tmp_path / "never").exists()


def test_a_flat_trl_reward_config_converts(cli, write_recipe, tmp_path):
    flat = write_recipe(
        f"""\
model_name_or_path: Qwen/Qwen2-0.5B-Instruct
dataset_name: trl-lib/ultrafeedback_binarized
output_dir: {tmp_path / "out"}
per_device_train_batch_size: 8
num_train_epochs: 1
gradient_checkpointing: true
learning_rate: 1.0e-4
logging_steps: 25
eval_strategy: steps
eval_steps: 50
max_length: 2048
center_rewards_coefficient: 0.01
pad_token: <|im_end|>
use_peft: true
lora_task_type: SEQ_CLS
lora_r: 32
lora_alpha: 16
""",
        "reward.yaml",
    )
    result = cli("rm", "--recipe", flat, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    recipe = document["recipe"]
    assert recipe["rm"]["center_rewards_coefficient"] == 0.01 and recipe["rm"]["max_length"] == 2048
    assert recipe["rm"]["pad_token"] == "<|im_end|>"
    assert (recipe["peft"]["r"], recipe["peft"]["alpha"]) == (32, 16)
    assert [(d["split"], d["role"]) for d in recipe["data"]["datasets"]] == [("train", "train"), ("test", "test")]
    notices = [line.strip() for line in document["notices"]]
    assert "dropped lora_task_type (the method sets it: CAUSAL_LM, or SEQ_CLS for a reward model)" in notices
    # The same file given to another method names the method it was written for.
    other = cli("dpo", "--recipe", flat, "--dry-run")
    assert other.exit_code == 2
    assert "center_rewards_coefficient: a rm setting in a dpo config; run `alignkit rm --recipe" in other.stderr


def test_bad_inputs_exit_2_naming_the_field(cli, tiny_model_dir, data_dir, tmp_path):
    recipe = write_recipe(tmp_path, "rm", tiny_model_dir, data_dir, tmp_path / "out")
    completions = cli("rm", "--recipe", recipe, "--set", f"data.datasets.0.path={data_dir / 'completions.jsonl'}")
    assert completions.exit_code == 2
    assert "data.datasets.0: no rm format fits: columns found: prompt, completion" in completions.stderr
    negative = cli("rm", "--recipe", recipe, "--set", "rm.center_rewards_coefficient=-1", "--dry-run")
    assert negative.exit_code == 2 and "rm.center_rewards_coefficient" in negative.stderr
    pad = cli("rm", "--recipe", recipe, "--set", "rm.pad_token=<|eot|>")
    assert pad.exit_code == 2 and not (tmp_path / "out").exists()
    assert (
        "rm.pad_token: '<|eot|>' is not a token of the model's tokenizer: give one of its tokens, such as its"
        " end-of-sequence token '<|im_end|>', or leave it unset (the tokenizer's pad token)"
    ) in " ".join(pad.stderr.split())
    long_prompt = cli("rm", "--recipe", recipe, "--set", "rm.max_prompt_length=48", "--dry-run")
    assert long_prompt.exit_code == 2
    assert "max_prompt_length (48) must be below max_length (48)" in long_prompt.stderr
