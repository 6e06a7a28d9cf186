"""The command line: every command, flag and error path, with exit codes and message text."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import MINIMAL_SFT, chat_file

from alignkit import __version__
from alignkit.methods import METHODS


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"alignkit {__version__}"


# The commands besides one per training method.
OTHER_COMMANDS = {"recipes", "run", "sample", "eval", "env", "slurm", "dstack", "data", "plan"}


def _command_table(help_text: str) -> list[str]:
    """The command names in the "Commands" panel of a rich `--help` (a row's name starts right after the border)."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("╭─ Commands "))
    names = []
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            return names
        row = line.removeprefix("│").removesuffix("│")
        if row[:1] == " " and row[1:2].strip():  # a continuation line is indented further
            names.append(row.split()[0])
    raise AssertionError("the Commands panel is not closed")


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    names = _command_table(result.stdout)
    assert len(names) == len(set(names)), names
    assert set(names) == set(METHODS) | OTHER_COMMANDS


@pytest.mark.parametrize("method", list(METHODS))
def test_method_help_has_examples_and_launch_flags(cli, method):
    result = cli(method, "--help")
    assert result.exit_code == 0
    text = result.stdout
    assert "Examples" in text
    assert f"alignkit {method} --recipe" in text
    for flag in ("--recipe", "--qlora", "--set", "--output-dir", "--dry-run", "--json", "--launch"):
        assert flag in text
    for flag in ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port"):
        assert flag in text


def test_recipes_list_table(cli):
    result = cli("recipes", "list")
    assert result.exit_code == 0
    assert "zephyr-7b-gemma" in result.stdout
    assert "tiny-demo" in result.stdout
    assert "google/gemma-7b" in result.stdout


def test_recipes_list_json_and_method_filter(cli):
    rows = json.loads(cli("recipes", "list", "--json").stdout)
    gemma = next(r for r in rows if r["name"] == "zephyr-7b-gemma")
    assert gemma["methods"] == ["sft", "dpo"]
    assert gemma["base_model"] == "google/gemma-7b"
    assert gemma["gpus"] == 8
    assert gemma["profile"] == "zero3"
    assert gemma["size"] == "7B"
    only_cpt = json.loads(cli("recipes", "list", "--method", "cpt", "--json").stdout)
    assert all("cpt" in r["methods"] for r in only_cpt)
    assert not any(r["name"] == "zephyr-7b-gemma" for r in only_cpt)


def test_recipes_list_unknown_method(cli):
    result = cli("recipes", "list", "--method", "ppo")
    assert result.exit_code == 2
    assert "error: --method: unknown method 'ppo'; one of cpt, sft, dpo, orpo" in result.stderr


def test_recipes_show_qlora(cli):
    result = cli("recipes", "show", "zephyr-7b-gemma", "--method", "sft", "--qlora")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["quantization"]["load_in_4bit"] is True
    assert shown["peft"]["r"] == 16
    assert shown["model"]["name_or_path"] == "google/gemma-7b"


def test_recipes_show_all_stages(cli):
    result = cli("recipes", "show", "zephyr-7b-gemma")
    assert result.exit_code == 0
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["model"]["name_or_path"] for d in documents] == [
        "google/gemma-7b",
        "HuggingFaceH4/zephyr-7b-gemma-sft-v0.1",
    ]


def _dry_run(cli, *args):
    result = cli(*args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dry_run_json_has_recipe_and_plan(cli):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--num-processes", "8", "--launch", "zero3")
    assert doc["method"] == "sft"
    assert doc["recipe_name"] == "zephyr-7b-gemma"
    assert doc["recipe"]["training"]["learning_rate"] == 2e-5
    assert doc["recipe"]["sft"]["max_length"] == 2048
    plan = doc["launch"]
    assert plan["profile"] == "zero3"
    assert plan["world_size"] == 8
    assert plan["effective_batch_size"] == 4 * 4 * 8
    assert plan["recipe_effective_batch_size"] == 128


def test_qlora_turns_any_recipe_into_its_qlora_variant(cli):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--qlora")
    quant = doc["recipe"]["quantization"]
    assert quant == {
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "bfloat16",
    }
    peft = doc["recipe"]["peft"]
    assert (peft["r"], peft["alpha"], peft["dropout"], peft["target_modules"]) == (16, 16, 0.05, "all-linear")
    training = doc["recipe"]["training"]
    assert training["learning_rate"] == 2e-4
    assert training["per_device_train_batch_size"] == 4
    assert training["gradient_accumulation_steps"] == 2
    assert any("--qlora" in n for n in doc["notices"])


def test_qlora_dpo_uses_handbook_dpo_values_and_set_wins(cli):
    doc = _dry_run(cli, "dpo", "--recipe", "zephyr-7b-gemma", "--qlora", "--set", "training.learning_rate=1e-5")
    assert doc["recipe"]["training"]["learning_rate"] == 1e-5
    assert doc["recipe"]["training"]["gradient_accumulation_steps"] == 4


def test_qlora_storage_follows_fp16_compute(cli):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--set", "model.dtype=float16", "--qlora")
    # --set is applied after --qlora, so the quantisation dtype comes from the recipe's own dtype.
    assert doc["recipe"]["quantization"]["bnb_4bit_compute_dtype"] == "bfloat16"
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--qlora", "--set", "model.dtype=fp16")
    assert doc["recipe"]["model"]["dtype"] == "float16"


def test_set_values_are_yaml_scalars(cli):
    doc = _dry_run(
        cli,
        "dpo",
        "--recipe",
        "zephyr-7b-gemma",
        "--set",
        "training.learning_rate=3e-7",
        "--set",
        "dpo.loss_type=[sigmoid, sft]",
        "--set",
        "dpo.loss_weights=[0.8, 0.2]",
        "--set",
        "data.datasets.0.weight=0.5",
        "--set",
        "hub.hub_model_id=me/model=v2",
    )
    assert doc["recipe"]["training"]["learning_rate"] == 3e-7
    assert doc["recipe"]["dpo"]["loss_type"] == ["sigmoid", "sft"]
    assert doc["recipe"]["data"]["datasets"][0]["weight"] == 0.5
    assert doc["recipe"]["hub"]["hub_model_id"] == "me/model=v2"


def test_output_dir_flag(cli, tmp_path):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--output-dir", str(tmp_path / "run"))
    assert doc["recipe"]["training"]["output_dir"] == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_human_dry_run_prints_plan(cli):
    result = cli("dpo", "--recipe", "zephyr-7b-gemma", "--dry-run", "--num-processes", "2")
    assert result.exit_code == 0
    assert "launch plan" in result.stdout
    assert "2 per device x 8 accumulation x 2 processes = 32" in result.stdout
    assert "nothing loaded or written" in result.stdout


def _fails(result, *expected: str):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.stderr, result.stderr


def test_unknown_key_suggests_the_closest(cli, write_recipe, tmp_path):
    path = write_recipe(
        MINIMAL_SFT.format(output_dir=tmp_path / "out", data="data/train.jsonl") + "  learning_rat: 3.0e-5\n"
    )
    _fails(
        cli("sft", "--recipe", path, "--dry-run"),
        f"{path}: training.learning_rat: unknown key; did you mean learning_rate?",
    )


def test_every_problem_is_reported_once(cli, write_recipe, tmp_path):
    text = MINIMAL_SFT.format(output_dir=tmp_path / "out", data="data/train.jsonl") + (
        "  per_device_train_batch_size: 0\n  learning_rate: -1\n  lr_scheduler_type: cosin\n  optim: adam\n"
    )
    result = cli("sft", "--recipe", write_recipe(text), "--dry-run")
    _fails(
        result,
        "training.per_device_train_batch_size: must be a whole number from 1 to 100,000 (given: 0)",
        "training.learning_rate: input should be greater than 0 (given: -1)",
        "training.lr_scheduler_type: input should be 'linear', 'cosine'",
        "(given: 'cosin')",
        "training.optim: input should be",
    )
    assert len(result.stderr.strip().splitlines()) == 4


def test_cross_field_rules(cli, write_recipe, tmp_path):
    base = MINIMAL_SFT.format(output_dir=tmp_path / "out", data="data/train.jsonl")
    both_bits = base + "peft: {r: 8}\nquantization: {load_in_4bit: true, load_in_8bit: true}\n"
    _fails(cli("sft", "--recipe", write_recipe(both_bits), "--dry-run"), "load_in_4bit and load_in_8bit cannot both")
    rank0 = base + "peft: {r: 0}\n"
    _fails(cli("sft", "--recipe", write_recipe(rank0), "--dry-run"), "peft.r: must be a whole number from 1 to 65,536")
    twice = base.replace(
        "    - path: data/train.jsonl\n", "    - path: data/train.jsonl\n    - path: data/train.jsonl\n    - path: x\n"
    )
    _fails(cli("sft", "--recipe", write_recipe(twice), "--dry-run"), "data.datasets.1: repeats datasets.0")
    no_peft = base + "quantization: {load_in_4bit: true}\n"
    _fails(
        cli("sft", "--recipe", write_recipe(no_peft), "--dry-run"), "quantization: quantized weights cannot be trained"
    )
    negative = base.replace("path: data/train.jsonl", "path: data/train.jsonl\n      weight: -0.5")
    _fails(
        cli("sft", "--recipe", write_recipe(negative), "--dry-run"),
        "data.datasets.0.weight: must be from 0 to 1,000 (given: -0.5)",
    )


def test_set_errors(cli):
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--set", "training.lerning_rate=1", "--dry-run"),
        "--set training.lerning_rate=1: training.lerning_rate: unknown key; did you mean learning_rate?",
    )
    _fails(cli("sft", "--recipe", "zephyr-7b-gemma", "--set", "nope", "--dry-run"), "--set nope: expected PATH=VALUE")
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--set", "sft.max_length=abc", "--dry-run"),
        "--set sft.max_length=abc: sft.max_length: input should be a valid integer",
    )
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--set", "training.learning_rate.x=1", "--dry-run"),
        "training.learning_rate is a single value, not a section",
    )


def test_recipe_lookup_errors(cli, tmp_path):
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gema", "--dry-run"),
        "unknown recipe 'zephyr-7b-gema'; did you mean zephyr-7b-gemma?",
    )
    missing = tmp_path / "nope.yaml"
    _fails(cli("sft", "--recipe", missing, "--dry-run"), f"{missing}: recipe file not found")
    _fails(
        cli("orpo", "--recipe", "zephyr-7b-gemma", "--dry-run"),
        "recipe 'zephyr-7b-gemma' has no orpo stage; it has sft, dpo",
    )


def test_yaml_file_errors(cli, write_recipe):
    dup = write_recipe("model:\n  name_or_path: a\nmodel:\n  name_or_path: b\n", "dup.yaml")
    _fails(cli("sft", "--recipe", dup, "--dry-run"), f"{dup}:3: duplicate key 'model' (first given on line 1)")
    syntax = write_recipe("model:\n  name_or_path: [a,\n", "syntax.yaml")
    _fails(cli("sft", "--recipe", syntax, "--dry-run"), f"{syntax}:3: YAML syntax error")
    empty = write_recipe("# only a comment\n", "empty.yaml")
    _fails(cli("sft", "--recipe", empty, "--dry-run"), f"{empty}: the file is empty")
    listed = write_recipe("- a\n- b\n", "list.yaml")
    _fails(cli("sft", "--recipe", listed, "--dry-run"), "expected a mapping of keys to values at the top, found a list")


def test_wrong_method_section(cli, write_recipe, tmp_path):
    path = write_recipe(
        MINIMAL_SFT.format(output_dir=tmp_path / "o", data="data/train.jsonl")
        + "sft: {max_length: 64}\ndpo:\n  beta: 0.1\n"
    )
    _fails(cli("sft", "--recipe", path, "--dry-run"), "dpo: a dpo section in a sft recipe; run `alignkit dpo`")
    only_dpo = write_recipe("model: {name_or_path: m}\ndata: {datasets: [{path: p}]}\ndpo: {beta: 0.2}\n", "d.yaml")
    _fails(cli("sft", "--recipe", only_dpo, "--dry-run"), "this is a dpo recipe (it has a dpo section)")


def test_launch_flag_errors(cli):
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--num-machines", "2", "--dry-run"),
        "--main-process-ip: required with --num-machines > 1",
    )
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--num-machines", "2", "--machine-rank", "2", "--dry-run"),
        "--machine-rank: must be between 0 and 1 for 2 machine(s) (given: 2)",
    )
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--launch", "zero4", "--dry-run"),
        "unknown profile 'zero4'; did you mean zero3?",
    )
    _fails(
        cli("sft", "--recipe", "zephyr-7b-gemma", "--num-processes", "0", "--dry-run"),
        "--num-processes: must be at least 1",
    )
    _fails(cli("sft", "--recipe", "zephyr-7b-gemma", "--json"), "--json: --json needs --dry-run")


def test_multi_node_plan(cli):
    doc = _dry_run(
        cli,
        "sft",
        "--recipe",
        "zephyr-7b-gemma",
        "--num-machines",
        "4",
        "--num-processes",
        "8",
        "--machine-rank",
        "3",
        "--main-process-ip",
        "10.1.2.3",
    )
    plan = doc["launch"]
    assert (plan["world_size"], plan["machine_rank"], plan["main_process_ip"]) == (32, 3, "10.1.2.3")


def test_failed_validation_creates_nothing(cli, write_recipe, tmp_path):
    out = tmp_path / "run"
    path = write_recipe(MINIMAL_SFT.format(output_dir=out, data="data/train.jsonl") + "  learning_rate: -1\n")
    result = cli("sft", "--recipe", path)
    assert result.exit_code == 2
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_debug_shows_traceback(cli, monkeypatch):
    from alignkit.errors import UserError

    monkeypatch.setenv("ALIGNKIT_DEBUG", "1")
    result = cli("sft", "--recipe", "no-such-recipe", "--dry-run")
    assert isinstance(result.exception, UserError)


def test_env_reports_versions(cli):
    result = cli("env")
    assert result.exit_code == 0
    for key in ("python:", "torch:", "transformers:", "trl:", "peft:", "accelerate:", "datasets:", "gpus:"):
        assert key in result.stdout


def test_qlora_keeps_a_recipes_own_quantisation_choices(cli, write_recipe, tmp_path):
    text = MINIMAL_SFT.format(output_dir=tmp_path / "out", data=chat_file(tmp_path)) + (
        "peft: {r: 64, alpha: 16}\nquantization: {load_in_4bit: true, bnb_4bit_use_double_quant: false}\n"
    )
    doc = _dry_run(cli, "sft", "--recipe", write_recipe(text), "--qlora")
    assert doc["recipe"]["quantization"]["bnb_4bit_use_double_quant"] is False
    assert doc["recipe"]["peft"]["r"] == 64
    assert doc["recipe"]["training"]["learning_rate"] == 2e-5  # already a QLoRA recipe: its values stay
