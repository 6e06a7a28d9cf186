"""`alignkit data`: tokenizer only, nothing written to the output directory, exit 2 on bad data."""

from __future__ import annotations

import json

import pytest

from alignkit.demo.tiny import build_tokenizer

CHAT = [
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and 4?"},
    {"role": "assistant", "content": "7"},
]


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A folder with only a tokenizer: `alignkit data` must not need weights."""
    folder = tmp_path / "tokenizer-only"
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def recipe(tmp_path, tokenizer_dir, write_recipe):
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": CHAT, "id": i}) for i in range(10)), encoding="utf-8")
    return write_recipe(
        f"""\
model:
  name_or_path: {tokenizer_dir}
data:
  datasets:
    - path: {data}
      weight: 0.5
  test_split_size: 1
sft:
  assistant_only_loss: true
  max_length: 20
training:
  output_dir: {tmp_path / "out"}
"""
    )


def test_json_report(cli, recipe, tmp_path):
    result = cli("data", "sft", "--recipe", recipe, "--show", "1", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["train_rows"], document["test_rows"]) == (4, 1)
    assert [(s["path"], s["split"], s["rows_in"], s["rows_out"], s["weight"]) for s in document["sources"]] == [
        (str(tmp_path / "chat.jsonl"), "train", 10, 5, 0.5)
    ]
    assert document["sources"][0]["format"] == "messages"
    assert document["truncated"] == 4  # every chat is 27 tokens, max_length 20
    example = document["examples"][0]
    assert example["text"] == "<|im_start|>user\nwhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>"
    assert example["trained"] == ["5<|im_end|>"]  # cut at 20 tokens: the second turn is gone
    assert document["loss"] == "conversations: assistant turns only"
    assert not (tmp_path / "out").exists()


def test_text_report_highlights_and_counts(cli, recipe, tmp_path):
    result = cli("data", "sft", "--recipe", recipe, "--show", "2", "--set", "sft.max_length=64")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # Piped output is not wrapped: the header and the source row each stay on one line, paths whole.
    assert f"sft data of recipe recipe ({recipe}), prepared and cached" in lines
    assert any(f"{tmp_path / 'chat.jsonl'} [train]" in line for line in lines)  # split printed literally
    assert any("train / test rows" in line and "4 / 1" in line for line in lines)
    assert any("rows over max_length" in line and "0 of 4 (max_length 64)" in line for line in lines)
    assert any("example 2 (green: trained on)" in line for line in lines)
    assert max(len(line) for line in lines if "example 1" in line) <= 80  # rules stay terminal-sized
    again = cli("data", "sft", "--recipe", recipe, "--show", "0", "--set", "sft.max_length=64", "--json")
    assert json.loads(again.stdout)["cached"] is True
    again = cli("data", "sft", "--recipe", recipe, "--show", "0", "--set", "sft.max_length=64")
    assert f"sft data of recipe recipe ({recipe}), from the cache" in again.stdout.splitlines()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("columns", ["", "100"])
def test_text_report_width(cli, recipe, monkeypatch, columns):
    """Piped: one line per row however long the path; an explicit COLUMNS is the width, as for rich itself."""
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    result = cli("data", "sft", "--recipe", recipe, "--show", "0")
    assert result.exit_code == 0, result.output
    widest = max(len(line) for line in result.stdout.splitlines())
    assert widest <= int(columns) if columns else widest > 80


def test_bad_data_exits_2_with_the_message(cli, recipe, tmp_path):
    (tmp_path / "chat.jsonl").write_text('{"messages": []}\n{"messages": \n', encoding="utf-8")
    result = cli("data", "sft", "--recipe", recipe, "--json")
    assert result.exit_code == 2
    path = tmp_path / "chat.jsonl"
    assert result.stderr == f"error: {path}: data.datasets.0: {path}:2: not valid JSON (Expecting value at column 14)\n"
    assert "Traceback" not in result.output


def test_format_that_fits_no_method_exits_2(cli, recipe):
    result = cli("data", "dpo", "--recipe", recipe)
    assert result.exit_code == 2
    assert "this is a sft recipe" in result.stderr  # the recipe has an sft section


def test_missing_tokenizer_exits_2(cli, recipe, tmp_path):
    result = cli("data", "sft", "--recipe", recipe, "--set", f"model.name_or_path={tmp_path / 'nothing'}")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: {tmp_path / 'nothing'}: model.name_or_path: could not load the tokenizer: no local folder of that"
        " name, and from the Hub:"
    )


def test_unknown_method_exits_2(cli, recipe):
    result = cli("data", "ppo", "--recipe", recipe)
    assert result.exit_code == 2
    assert "unknown method 'ppo'" in result.stderr


def test_handbook_config_on_save_to_disk_folders_sharegpt_and_alpaca(cli, tmp_path, tokenizer_dir, write_recipe):
    from datasets import Dataset, DatasetDict

    sharegpt = [
        {"conversations": [{"from": "human", "value": f"what is {i}?"}, {"from": "gpt", "value": f"{i}"}]}
        for i in range(40)
    ]
    alpaca = [{"instruction": "add the numbers", "input": f"{i} and {i}", "output": f"{2 * i}"} for i in range(10)]
    DatasetDict({"train_sft": Dataset.from_list(sharegpt), "test_sft": Dataset.from_list(sharegpt[:6])}).save_to_disk(
        str(tmp_path / "sharegpt")
    )
    DatasetDict({"train_sft": Dataset.from_list(alpaca), "test_sft": Dataset.from_list(alpaca[:2])}).save_to_disk(
        str(tmp_path / "alpaca")
    )
    path = write_recipe(
        f"""\
model_name_or_path: {tokenizer_dir}
dataset_mixer:
  {tmp_path / "sharegpt"}: 0.5
  {tmp_path / "alpaca"}: 1.0
dataset_splits: [train_sft, test_sft]
max_seq_length: 64
output_dir: {tmp_path / "out"}
""",
        name="config_full.yaml",
    )
    result = cli("data", "sft", "--recipe", path, "--json", "--show", "0")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["train_rows"], document["test_rows"]) == (30, 8)  # 20 of 40 + 10; test splits whole: 6 + 2
    assert [(s["format"], s["split"], s["rows_out"]) for s in document["sources"]] == [
        ("sharegpt", "train_sft", 20),
        ("sharegpt", "test_sft", 6),
        ("alpaca", "train_sft", 10),
        ("alpaca", "test_sft", 2),
    ]
    assert document["loss"] == "conversations: every token; prompt-completion: the completion only"
    assert not (tmp_path / "out").exists()
