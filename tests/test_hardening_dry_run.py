"""A dry run that says "valid" is followed by a run that starts: whatever the run refuses without loading weights
or data rows, the dry run refuses too, with the same message and exit 2, and still imports no training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MINIMAL_SFT, chat_file

from alignkit.methods import METHODS
from alignkit.run_record import RunRecord

# The chat fine-tuning method: its recipes render conversations with a chat template.
METHOD = next(name for name, method in METHODS.items() if method.data.rows == "tokens")
NOT_TRL = "alignkit_no_such_field"


@pytest.fixture
def fake_training(monkeypatch):
    """The worker's `train` replaced by one that finishes at once: what happens before training is tested."""
    import alignkit.train.worker as worker

    def train(out: Path, **kwargs) -> dict:
        RunRecord.load(out).mark_finished({"train_loss": 1.0})
        return {}

    monkeypatch.setattr(worker, "setup_logging", lambda out: out / "alignkit.log")
    monkeypatch.setattr(worker, "train", train)


def _recipe(write_recipe, tmp_path, extra: str = "", data: Path | str | None = None) -> Path:
    data = chat_file(tmp_path) if data is None else data
    return write_recipe(MINIMAL_SFT.format(output_dir=tmp_path / "run", data=data) + extra)


def _both_refuse(cli, recipe: Path, *flags: str) -> str:
    """Run the dry run and the run: both exit 2 with the same error lines; returns them."""
    dry = cli(METHOD, "--recipe", recipe, "--dry-run", *flags)
    real = cli(METHOD, "--recipe", recipe, *flags)
    assert dry.exit_code == 2, dry.output
    assert real.exit_code == 2, real.output
    assert dry.stderr == real.stderr
    return dry.stderr


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (NOT_TRL, f"not a field of TRL's {METHOD} config"),
        ("learning_rate", "alignkit sets this from the recipe; use the recipe's own field instead"),
        ("trust_remote_code", "alignkit sets this from the recipe; use the recipe's own field instead"),
    ],
)
def test_training_extra_keys_the_run_refuses_are_refused_by_the_dry_run(cli, write_recipe, tmp_path, key, message):
    recipe = _recipe(write_recipe, tmp_path, f"  extra:\n    {key}: 1\n")
    assert _both_refuse(cli, recipe) == f"error: {recipe}: training.extra.{key}: {message}\n"
    assert not (tmp_path / "run").exists()


def test_a_missing_local_data_file_is_refused_by_the_dry_run(cli, write_recipe, tmp_path):
    missing = tmp_path / "nowhere" / "train.jsonl"
    recipe = _recipe(write_recipe, tmp_path, data=missing)
    assert _both_refuse(cli, recipe) == f"error: {missing}: data.datasets.0: file or folder not found: {missing}\n"


def test_data_files_that_cannot_load_are_refused_by_the_dry_run(cli, write_recipe, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    odd = tmp_path / "rows.xlsx"
    odd.write_text("x")
    recipe = _recipe(write_recipe, tmp_path, data=f"{empty}\n    - path: {odd}")
    assert _both_refuse(cli, recipe) == (
        f"error: {empty}: data.datasets.0: {empty} is empty: no rows\n"
        f"error: {odd}: data.datasets.1: unsupported data file rows.xlsx; use one of .arrow, .csv, .json, .jsonl,"
        " .parquet, .tsv, .txt files\n"
    )


def test_an_output_dir_that_is_a_file_is_refused_by_the_dry_run(cli, write_recipe, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    recipe = _recipe(write_recipe, tmp_path)
    assert _both_refuse(cli, recipe).startswith(f"error: {tmp_path / 'run'}: ")


def test_a_finished_run_is_refused_by_the_dry_run_unless_overwrite(cli, write_recipe, tmp_path, fake_training):
    recipe = _recipe(write_recipe, tmp_path)
    assert cli(METHOD, "--recipe", recipe).exit_code == 0
    refused = _both_refuse(cli, recipe)
    assert refused.startswith(f"error: {tmp_path / 'run'}: holds a finished {METHOD} run (")
    assert "Pass --overwrite to replace it" in refused
    allowed = cli(METHOD, "--recipe", recipe, "--dry-run", "--overwrite")
    assert allowed.exit_code == 0, allowed.output


def test_a_chat_template_with_a_jinja_syntax_error_is_refused_by_the_dry_run(cli, write_recipe, tmp_path):
    template = "{% for m in messages %}{{ m['content'] }"
    recipe = _recipe(write_recipe, tmp_path)
    recipe.write_text(recipe.read_text().replace("data:\n", f"data:\n  chat_template: {json.dumps(template)}\n"))
    assert _both_refuse(cli, recipe) == (
        f"error: {recipe}: data.chat_template: the chat template is not valid Jinja: unexpected '}}'"
        " (line 1 of the template)\n"
    )


def test_every_problem_is_reported_at_once(cli, write_recipe, tmp_path):
    missing = tmp_path / "gone.jsonl"
    recipe = _recipe(write_recipe, tmp_path, f"  extra:\n    {NOT_TRL}: 1\n", data=missing)
    (tmp_path / "run").write_text("a file")
    extra, data, output = _both_refuse(cli, recipe).splitlines()
    assert extra == f"error: {recipe}: training.extra.{NOT_TRL}: not a field of TRL's {METHOD} config"
    assert data == f"error: {missing}: data.datasets.0: file or folder not found: {missing}"
    assert output.startswith(f"error: {tmp_path / 'run'}: ")


def test_the_dry_run_with_every_check_still_imports_no_training_stack(write_recipe, tmp_path):
    recipe = _recipe(write_recipe, tmp_path, "  extra:\n    adam_beta2: 0.95\n")
    code = (
        "import sys\nfrom alignkit.cli import app\n"
        f"try:\n    app([{METHOD!r}, '--recipe', {str(recipe)!r}, '--dry-run'], standalone_mode=False)\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(sorted({'torch', 'transformers', 'trl', 'datasets'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
