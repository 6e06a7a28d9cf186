"""No secret on disk, no code run unasked: tokens in a recipe are refused, remote code needs the recipe's
word and is announced, and a YAML alias bomb is refused before it grows."""

from __future__ import annotations

import json
import time

import pytest

from alignkit.methods import METHODS
from alignkit.recipe.secrets import find_secrets, redact

# The chat fine-tuning method (conversations as token rows); the job writers take any method.
METHOD = next(name for name, method in METHODS.items() if method.data.rows == "tokens")
SHORT_HF = "hf_" + "Xq7ZpL2mN4vRt"  # 13 characters: shorter than a real token, still one
WANDB = "0123456789abcdef" * 2 + "01234567"
SHA = "fedcba9876543210" * 2 + "fedcba98"


def _recipe(write_recipe, tmp_path, extra: str = "", model: str = ""):
    """A recipe of an existing data file; `model` adds lines to the model section, `extra` other sections."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    text = f"model:\n  name_or_path: HuggingFaceH4/zephyr-7b-beta\n{model}data:\n  datasets:\n    - path: {data}\n"
    return write_recipe(text + extra)


EXTRA = "training:\n  extra:\n    {key}: {value}\n"


@pytest.mark.parametrize(
    ("extra", "field", "what", "env"),
    [
        (EXTRA.format(key="hub_token", value="abc123"), "training.extra.hub_token", "is a secret field (hub_token)",
         "HF_TOKEN"),
        (f"logging:\n  run_name: {SHORT_HF}\n", "logging.run_name", "looks like a Hugging Face token", "HF_TOKEN"),
        (f"logging:\n  wandb_entity: {WANDB}\n", "logging.wandb_entity", "looks like a W&B API key", "WANDB_API_KEY"),
        (f"description: 'mine, key {SHORT_HF}'\n", "description", "looks like a Hugging Face token", "HF_TOKEN"),
        (EXTRA.format(key="wandb_api_key", value="xyz"), "training.extra.wandb_api_key",
         "is a secret field (wandb_api_key)", "WANDB_API_KEY"),
    ],
)  # fmt: skip
def test_a_recipe_field_holding_a_secret_is_refused(cli, write_recipe, tmp_path, extra, field, what, env):
    recipe = _recipe(write_recipe, tmp_path, extra)
    result = cli(METHOD, "--recipe", recipe, "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {recipe}: {field}: {what}; secrets come from the environment only (a run writes its recipe into"
        f" its files): remove it and set {env} in the environment instead"
    )
    for secret in (SHORT_HF, WANDB, "abc123", "xyz"):
        assert secret not in result.output


def test_a_secret_in_set_is_refused_without_repeating_it(cli, write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path)
    result = cli(METHOD, "--recipe", recipe, "--set", f"hub.hub_model_id={SHORT_HF}", "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --set hub.hub_model_id=...: hub.hub_model_id: looks like a Hugging Face")
    assert SHORT_HF not in result.output


def test_the_run_refuses_a_secret_before_writing_anything(cli, write_recipe, tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(write_recipe, tmp_path, f"training:\n  output_dir: {out}\n  extra:\n    hub_token: abc\n")
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 2, result.output
    assert "training.extra.hub_token: is a secret field (hub_token)" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("writer", ["slurm", "dstack"])
def test_job_writers_check_the_recipe_file_the_same_way(cli, write_recipe, tmp_path, writer):
    recipe = _recipe(write_recipe, tmp_path, f"logging:\n  run_name: {SHORT_HF}\n")
    out = tmp_path / "job.txt"
    flags = ["--nodes", "1", "--gpus-per-node", "1"] if writer == "slurm" else ["--gpu", "L4:1"]
    result = cli(writer, METHOD, "--recipe", recipe, *flags, "--output", out)
    assert result.exit_code == 2, result.output
    assert f"error: {recipe}: logging.run_name: looks like a Hugging Face token" in result.stderr
    assert not out.exists()
    assert SHORT_HF not in result.output


def test_normal_values_are_not_taken_for_secrets(cli, write_recipe, tmp_path):
    extra = (
        "description: Zephyr 7B beta on UltraChat, hf_datasets export\n"
        "logging:\n  run_name: hf_experiments-2024\n"
        f"training:\n  output_dir: {tmp_path}/hub/models--x/snapshots/{SHA}/out\n"
    )
    recipe = _recipe(write_recipe, tmp_path, extra, model=f"  revision: {SHA}\n")
    result = cli(METHOD, "--recipe", recipe, "--dry-run", "--set", "logging.wandb_entity=my-team")
    assert result.exit_code == 0, result.output
    assert find_secrets({"sft_like": {"eos_token": "<|im_end|>", "pad_token": "<pad>"}}) == []


def test_the_recorded_command_hides_short_tokens_and_keeps_revisions():
    assert redact(f"hub.hub_model_id={SHORT_HF}") == "hub.hub_model_id=<redacted>"
    assert redact("training.extra.hub_token=abc") == "training.extra.hub_token=<redacted>"
    assert redact(f"model.revision={SHA}") == f"model.revision={SHA}"


# YAML alias bombs


def _bomb(levels: int = 9) -> str:
    """Nested aliases: about 500 bytes standing for 9**levels values."""
    lines = ["l0: &l0 [" + ",".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly(cli, write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path, _bomb() + "training:\n  extra:\n    bomb: *l8\n")
    assert len(recipe.read_bytes()) < 800
    # The recipe's own lines come first (5); l5 on line 11 is the first to stand for more than 100,000 values.
    started = time.monotonic()
    result = cli(METHOD, "--recipe", recipe, "--dry-run")
    assert time.monotonic() - started < 10
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {recipe}:11: its aliases expand to more than 100,000 values (a recipe holds a few hundred);"
        " write the values out instead of nesting aliases"
    )


def test_an_alias_bomb_in_set_is_refused(cli, write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path)
    # 40 x 40 x 40 x 40 values from a few hundred bytes.
    nested = ["&a [" + ",".join(["x"] * 40) + "]"]
    nested += [f"&{name} [" + ",".join([f"*{inner}"] * 40) + "]" for inner, name in ("ab", "bc", "cd")]
    levels = "[" + ", ".join(nested) + "]"
    result = cli(METHOD, "--recipe", recipe, "--set", f"training.extra.bomb={levels}", "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --set training.extra.bomb=[&a")
    assert "its aliases expand to more than 100,000 values" in result.stderr


def test_an_alias_that_contains_itself_is_refused(cli, write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path, "training:\n  extra:\n    loop: &loop [1, *loop]\n")
    result = cli(METHOD, "--recipe", recipe, "--dry-run")
    assert result.exit_code == 2, result.output
    assert "an alias refers to a value that contains it" in result.stderr


def test_aliases_of_ordinary_size_still_work(cli, write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path, "training:\n  lr_scheduler_kwargs: &kw {min_lr_rate: 0.1}\n")
    result = cli(METHOD, "--recipe", recipe, "--set", "training.extra.adam_beta1=0.9", "--dry-run")
    assert result.exit_code == 0, result.output


# Remote code


REMOTE = (
    "model.trust_remote_code is on: loading the model runs the Python code of {repo} on this machine; turn it off"
    " unless the model needs it"
)


def test_the_dry_run_names_the_repository_whose_code_would_run(cli, write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path, model="  trust_remote_code: true\n")
    result = cli(METHOD, "--recipe", recipe, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"note: {REMOTE.format(repo='HuggingFaceH4/zephyr-7b-beta')}" in result.stderr.splitlines()
    document = cli(METHOD, "--recipe", recipe, "--dry-run", "--json")
    assert REMOTE.format(repo="HuggingFaceH4/zephyr-7b-beta") in json.loads(document.stdout)["notices"]
    plain = cli(METHOD, "--recipe", _recipe(write_recipe, tmp_path), "--dry-run")
    assert "trust_remote_code" not in plain.stderr


def test_the_run_names_the_repository_whose_code_runs(cli, write_recipe, tmp_path, monkeypatch):
    import alignkit.train.worker as worker
    from alignkit.run_record import RunRecord

    def train(out, **kwargs):
        RunRecord.load(out).mark_finished({})
        return {}

    monkeypatch.setattr(worker, "setup_logging", lambda out: out / "alignkit.log")
    monkeypatch.setattr(worker, "train", train)
    extra = f"training:\n  output_dir: {tmp_path / 'run'}\n"
    recipe = _recipe(
        write_recipe, tmp_path, extra, model="  trust_remote_code: true\n  tokenizer_name_or_path: org/tok\n"
    )
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert f"note: {REMOTE.format(repo='HuggingFaceH4/zephyr-7b-beta and org/tok')}" in result.stdout.splitlines()


def test_the_data_preview_never_runs_a_repositorys_code(cli, write_recipe, tmp_path):
    from alignkit.demo.tiny import build_tokenizer

    folder = tmp_path / "custom-tokenizer"
    build_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": [None, "custom.CustomTokenizer"]}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ran = tmp_path / "code-ran"
    (folder / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\nclass CustomTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    recipe = _recipe(write_recipe, tmp_path, model=f"  tokenizer_name_or_path: {folder}\n  trust_remote_code: true\n")
    result = cli("data", METHOD, "--recipe", recipe)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {folder}: model.tokenizer_name_or_path: this tokenizer loads only by running the repository's own"
        " Python code, which a data preview never does (model.trust_remote_code is for training runs); set"
        " model.tokenizer_name_or_path to a tokenizer that loads without it to preview the data"
    )
    assert not ran.exists()
