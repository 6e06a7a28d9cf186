"""Smaller things a new user met: `recipes show` of an unknown name, recipe folders, data paths taken from the
recipe's folder, job files never silently replaced, and no library chatter on the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import MINIMAL_SFT, REPO

from alignkit.library import registry
from alignkit.methods import METHODS
from alignkit.pipeline.spec import StageSpec, has_pipeline, load_pipeline

# The chat fine-tuning method (token rows) and the first preference method (pairs).
CHAT = next(name for name, method in METHODS.items() if method.data.rows == "tokens")
# A library family whose stages are plain (none pinned, repeated or given settings of its own), and one whose
# pipeline pins a variant.
FAMILY = next(
    n
    for n in registry.discover()
    if ":" not in n
    and has_pipeline(n)
    and all(isinstance(s, StageSpec) and not s.recipe and not s.overrides for s in load_pipeline(n).stages)
)
PINNED = next(
    n
    for n in registry.discover()
    if has_pipeline(n) and any(s.recipe and ":" in s.recipe for s in load_pipeline(n).flat)
)


def _dry_run(cli, *args) -> dict:
    result = cli(*args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- recipes show ----


def test_recipes_show_of_an_unknown_file_name_says_it_is_unknown_and_names_the_close_ones(cli):
    result = cli("recipes", "show", f"{FAMILY}.yaml")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: alignkit recipes show: unknown recipe '{FAMILY}.yaml'; did you mean {FAMILY}"
    )
    assert result.stderr.rstrip().endswith("(see `alignkit recipes list`; no file by that name either)")
    assert "give --method" not in result.stderr


def test_recipes_show_of_a_file_takes_the_method_from_its_name_and_asks_only_when_it_cannot(cli, tmp_path):
    folder = tmp_path / "mine"
    cli("recipes", "cp", "tiny-demo", folder, "--method", CHAT)
    shown = cli("recipes", "show", folder / f"{CHAT}.yaml")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"# mine: {CHAT}\n")
    unnamed = tmp_path / "recipe.yaml"
    unnamed.write_text(MINIMAL_SFT.format(output_dir=tmp_path / "out", data="data/train.jsonl"))
    asked = cli("recipes", "show", unnamed)
    assert asked.exit_code == 2
    assert asked.stderr.strip() == (
        f"error: alignkit recipes show: {unnamed} does not say which method it is for (no method section);"
        " give --method"
    )


# ---- recipe folders ----


def test_a_copied_recipe_folder_runs_as_a_pipeline_named_after_the_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copied = cli("recipes", "cp", FAMILY, "my-copy/")
    assert copied.exit_code == 0, copied.output
    assert copied.stdout.strip().splitlines()[-1].endswith("run it with: alignkit run --recipe my-copy/")
    plan = _dry_run(cli, "run", "--recipe", "my-copy")
    stages = load_pipeline(FAMILY).stages
    assert [(s["stage"], s["output_dir"]) for s in plan["stages"]] == [
        (s.name, f"outputs/my-copy-{s.method}") for s in stages
    ]
    # One stage of the folder, given as the folder or as its file: named after the folder, not the method.
    for ref in ("my-copy", f"my-copy/{stages[0].method}.yaml"):
        doc = _dry_run(cli, stages[0].method, "--recipe", ref)
        assert (doc["recipe_name"], doc["recipe"]["training"]["output_dir"]) == (
            "my-copy",
            f"outputs/my-copy-{stages[0].method}",
        )


def test_a_copied_folder_runs_its_own_copy_of_a_pinned_stage(cli, tmp_path):
    folder = tmp_path / "pinned"
    assert cli("recipes", "cp", PINNED, folder).exit_code == 0
    plan = _dry_run(cli, "run", "--recipe", folder)
    assert all(stage["recipe"].startswith(str(folder)) for stage in plan["stages"]), plan["stages"]


def test_a_folder_without_recipe_files_is_refused(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(CHAT, "--recipe", empty, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {empty}: this folder holds no recipe (none of ")
    assert f"copy one into it with `alignkit recipes cp NAME {empty}`" in result.stderr


# ---- data paths ----


@pytest.fixture
def recipe_with_data(tmp_path):
    """A recipe in recipes/ naming data beside it, a benchmark file, and a Hub id; the current directory elsewhere."""
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text("{}\n")
    (folder / "more.jsonl").write_text("{}\n")
    (folder / "bench.txt").write_text("a question\n")
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"""\
model:
  name_or_path: some/model
data:
  decontaminate: [bench.txt]
  datasets:
    - path: data/train.jsonl
    - path: org/hub-dataset
    - path: ./more.jsonl
training:
  output_dir: {tmp_path / "run"}
"""
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return recipe, elsewhere


def test_relative_data_paths_are_taken_from_the_recipe_folder(cli, recipe_with_data, monkeypatch):
    recipe, elsewhere = recipe_with_data
    monkeypatch.chdir(elsewhere)
    data = _dry_run(cli, CHAT, "--recipe", recipe)["recipe"]["data"]
    assert [d["path"] for d in data["datasets"]] == [
        str(recipe.parent / "data" / "train.jsonl"),
        "org/hub-dataset",  # a Hub id stays as written
        str(recipe.parent / "more.jsonl"),  # ./ marks a local path
    ]
    assert data["decontaminate"] == [str(recipe.parent / "bench.txt")]


def test_a_set_data_path_is_taken_from_the_current_directory(cli, recipe_with_data, monkeypatch):
    recipe, elsewhere = recipe_with_data
    monkeypatch.chdir(elsewhere)
    (elsewhere / "mine.jsonl").write_text("{}\n")
    doc = _dry_run(cli, CHAT, "--recipe", recipe, "--set", "data.datasets.1.path=mine.jsonl")
    assert doc["recipe"]["data"]["datasets"][1]["path"] == str(elsewhere / "mine.jsonl")


def test_a_path_only_the_current_directory_has_is_still_found(cli, tmp_path, monkeypatch):
    """Recipes written when paths were the current directory's (the offline demo's copy) keep working."""
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "recipe.yaml"
    recipe.write_text(MINIMAL_SFT.format(output_dir=tmp_path / "run", data="data/train.jsonl"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    doc = _dry_run(cli, CHAT, "--recipe", recipe)
    assert doc["recipe"]["data"]["datasets"][0]["path"] == str(tmp_path / "data" / "train.jsonl")


def test_the_frozen_recipe_holds_absolute_data_paths_and_reruns_from_anywhere(cli, recipe_with_data, monkeypatch):
    import alignkit.train.worker as worker

    recipe, elsewhere = recipe_with_data
    monkeypatch.setattr(worker, "setup_logging", lambda out: out / "alignkit.log")
    monkeypatch.setattr(worker, "train", lambda out, **kwargs: {})
    monkeypatch.chdir(elsewhere)
    cli(CHAT, "--recipe", recipe)
    frozen = recipe.parent.parent / "run" / "alignkit_recipe.yaml"
    paths = [d["path"] for d in yaml.safe_load(frozen.read_text())["data"]["datasets"]]
    assert paths[0] == str(recipe.parent / "data" / "train.jsonl")
    monkeypatch.chdir(recipe.parent.parent)
    again = _dry_run(cli, CHAT, "--recipe", frozen)
    assert [d["path"] for d in again["recipe"]["data"]["datasets"]] == paths


# ---- job files ----


def _job_args(kind: str, output: Path) -> list[str]:
    counts = ["--nodes", "1", "--gpus-per-node", "1"] if kind == "slurm" else ["--gpu", "H100:8", "--nodes", "2"]
    return [kind, CHAT, "--recipe", "tiny-demo", *counts, "--output", str(output)]


@pytest.mark.parametrize("kind", ["slurm", "dstack"])
def test_a_job_file_is_replaced_only_with_overwrite(cli, tmp_path, kind):
    output = tmp_path / "job.dstack.yml"
    output.write_text("# edited by hand\n")
    refused = cli(*_job_args(kind, output))
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {output}: already exists; not overwriting it (pass --overwrite to replace it, or another --output)"
    )
    assert output.read_text() == "# edited by hand\n"
    assert [p.name for p in tmp_path.iterdir()] == ["job.dstack.yml"]  # nothing else written either
    replaced = cli(*_job_args(kind, output), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert output.read_text() != "# edited by hand\n"


def test_a_dstack_fleet_file_is_checked_before_the_task_is_written(cli, tmp_path):
    fleet = tmp_path / "job-fleet.dstack.yml"
    fleet.write_text("# mine\n")
    result = cli(*_job_args("dstack", tmp_path / "job.dstack.yml"))
    assert result.exit_code == 2
    assert f"error: {fleet}: already exists" in result.stderr
    assert not (tmp_path / "job.dstack.yml").exists()


# ---- no library chatter ----

QUIET_PROBE = """
import logging, warnings
from alignkit.quiet import quiet_libraries
quiet_libraries()
warnings.warn_explicit("library deprecation", FutureWarning, "m.py", 1, module="transformers.modeling_utils")
warnings.warn_explicit("own warning", FutureWarning, "a.py", 1, module="alignkit.recipe.resolve")
logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check for 'x'")
logging.getLogger("bitsandbytes.backends").warning("Failed to load CPU gemm_4bit_forward")
logging.getLogger("kernels").error("a real kernel error")
import datasets
print(datasets.is_progress_bar_enabled())
"""


def test_library_chatter_is_silenced_but_alignkit_warnings_and_errors_are_not():
    result = subprocess.run(
        [sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True, cwd=REPO, env=os.environ, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert "own warning" in result.stderr
    assert "a real kernel error" in result.stderr
    for chatter in ("library deprecation", "publisher trust", "gemm_4bit"):
        assert chatter not in result.stderr


@pytest.mark.slow
def test_a_preference_run_and_the_data_preview_print_no_library_chatter(tiny_model_dir, tmp_path):
    pairs = next(name for name, method in METHODS.items() if method.data.rows == "pairs")
    rows = [
        {
            "prompt": [{"role": "user", "content": f"question {n}"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for n in range(8)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {tiny_model_dir}, dtype: float32}}\n"
        "data: {datasets: [{path: pairs.jsonl}]}\n"
        f"training: {{output_dir: {tmp_path / 'out'}, max_steps: 2, per_device_train_batch_size: 4,"
        " save_strategy: 'no'}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for args in (["data", pairs, "--recipe", str(recipe), "--show", "0"], [pairs, "--recipe", str(recipe)]):
        result = subprocess.run(
            [sys.executable, "-m", "alignkit", *args], capture_output=True, text=True, env=env, check=False
        )
        assert result.returncode == 0, result.stderr
        # datasets' bars say "examples/s"; TRL's one bar over the reference log-probs (a long step) may stay.
        for chatter in ("publisher trust", "FutureWarning", "examples/s"):
            assert chatter not in result.stderr, (args, result.stderr)


# ---- what the fuzzer found (tests/test_fuzz.py): each was a traceback or a crash, now exit 2 ----


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model_name_or_path: m\ndataset_mixer: {a/b: 1.0}\ndataset_splits: null\n",
            "dataset_splits: must be a list of split names, got None",
        ),
        ("model: {name_or_path: m}\ndata: {datasets: [{path: a/b}]}\n'a b': 1\n", "a b: unknown key"),
        ("model: {name_or_path: m}\n[a, b]: 1\n", ":2: YAML syntax error: a key must be a plain value, not a list"),
    ],
)
def test_recipes_that_crashed_the_dry_run_are_refused(cli, write_recipe, text, message):
    result = cli(CHAT, "--recipe", write_recipe(text), "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_a_null_test_split_of_a_trl_config_is_the_default_split(cli, write_recipe):
    recipe = write_recipe("model_name_or_path: m\ndataset_name: a/b\ndataset_test_split: null\neval_strategy: epoch\n")
    datasets = _dry_run(cli, CHAT, "--recipe", recipe)["recipe"]["data"]["datasets"]
    assert [(d["split"], d["role"]) for d in datasets] == [("train", "train"), ("test", "test")]


@pytest.fixture
def preview(tmp_path):
    """Run `alignkit data METHOD` on rows written as given, in a fresh process (a crash must not end the tests)."""
    from alignkit.demo.tiny import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "tokenizer")

    def run(method: str, text: str) -> subprocess.CompletedProcess:
        (tmp_path / "rows.jsonl").write_text(text, encoding="utf-8")
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"model: {{name_or_path: {tmp_path / 'tokenizer'}}}\ndata: {{datasets: [{{path: rows.jsonl}}]}}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "alignkit", "data", method, "--recipe", str(recipe), "--show", "0"]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    return run


def test_data_rows_that_crashed_the_preview_are_refused(preview, tmp_path):
    text_method = next(name for name, method in METHODS.items() if method.data.rows == "text")
    pairs = next(name for name, method in METHODS.items() if method.data.rows == "pairs")
    rows = tmp_path / "rows.jsonl"
    cases = [
        # pyarrow's JSON reader died of a segfault on these
        (CHAT, "null\nnull\n", f"{rows}:1: each line must be a JSON object, found NoneType"),
        (CHAT, "\n  \n", f"{rows} holds only blank lines: no rows"),
        (text_method, '{"text": "hello"}\n{"text": []}\n', "text must be a string (found list)"),
        # datasets cannot read back a key with a NUL character (a KeyError from inside it)
        (
            pairs,
            '{"chosen": [{"role": "assistant", "content": "5", "k\\u0000": {}}], "rejected": "7", "prompt": "q"}\n',
            "the key 'k\\x00' holds a NUL character (\\x00); rename it",
        ),
    ]
    for method, text, message in cases:
        result = preview(method, text)
        assert result.returncode == 2, (text, result.stderr)
        assert message in result.stderr, (text, result.stderr)
