"""`alignkit sample`: the recipe's rules, reading prompts from every layout, selection, and whole runs on the
tiny local Llama (outputs, reproducibility, resume, never-clobber, and the errors a user can cause)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignkit.sampling.select import select_best, select_best_worst, select_threshold

USER = [{"role": "user", "content": "what is 2 + 3?"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _record(*totals: float) -> dict:
    return {
        "prompt": USER,
        "row": {},
        "candidates": [{"completion": f"c{i}", "total": t, "scores": {}} for i, t in enumerate(totals)],
    }


# --- selection ---------------------------------------------------------------------------------------------


def test_best_keeps_the_top_candidate_as_a_conversation_and_drops_prompts_whose_candidates_all_tie():
    chosen = select_best([_record(0.1, 0.9, 0.5), _record(1.0, 1.0), _record(0.0, 0.0, 0.0)], None)
    assert chosen.rows == [{"messages": [*USER, {"role": "assistant", "content": "c1"}]}]
    assert dict(chosen.dropped) == {"all candidates tied": 2}


def test_best_with_min_score_drops_a_prompt_whose_top_candidate_falls_short_and_ties_go_to_the_first():
    chosen = select_best([_record(0.2, 0.4), _record(1.0, 0.0, 1.0)], 0.5)
    assert chosen.rows == [{"messages": [*USER, {"role": "assistant", "content": "c0"}]}]
    assert dict(chosen.dropped) == {"best below min_score": 1}


def test_best_worst_pairs_the_highest_with_the_lowest_when_the_margin_is_enough():
    chosen = select_best_worst([_record(0.5, 2.0, -1.0), _record(0.3, 0.2), _record(4.0, 4.0)], 0.5)
    assert chosen.rows == [
        {
            "prompt": USER,
            "chosen": [{"role": "assistant", "content": "c1"}],
            "rejected": [{"role": "assistant", "content": "c2"}],
        }
    ]
    assert dict(chosen.dropped) == {"margin below min_margin": 1, "all candidates tied": 1}


def test_threshold_keeps_every_candidate_at_or_above_min_score():
    chosen = select_threshold([_record(0.5, 0.7, 0.2), _record(0.9, 0.9)], 0.7)
    assert [row["messages"][-1]["content"] for row in chosen.rows] == ["c1", "c0", "c1"]
    assert dict(chosen.dropped) == {"candidates below min_score": 2}


# --- prompts -----------------------------------------------------------------------------------------------


def _recipe(data: list[dict], **sample):
    from alignkit.sampling.recipe import SampleRecipe

    return SampleRecipe.model_validate(
        {
            "model": {"name_or_path": "m"},
            "data": {"datasets": data},
            "sample": {"scorers": [{"regex": "."}], **sample},
        }
    )


def test_prompts_are_read_from_every_common_layout_and_keep_the_other_columns(tmp_path):
    from alignkit.sampling.prompts import load_prompts

    files = [
        _jsonl(tmp_path / "prompt.jsonl", [{"prompt": "hi there", "answer": 5}]),
        _jsonl(
            tmp_path / "messages.jsonl",
            [
                {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": "q1"},
                        {"role": "assistant", "content": "old answer"},
                    ],
                    "answer": 6,
                }
            ],
        ),
        _jsonl(
            tmp_path / "sharegpt.jsonl",
            [{"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a"}], "answer": 7}],
        ),
        _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "add", "input": "1 2", "output": "3", "answer": 3}]),
        _jsonl(tmp_path / "gsm.jsonl", [{"question": "q3", "answer": 8}]),
    ]
    found = load_prompts(_recipe([{"path": str(f)} for f in files]), "r.yaml")
    assert [p.messages for p in found.prompts] == [
        [{"role": "user", "content": "hi there"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"}],
        [{"role": "user", "content": "q2"}],
        [{"role": "user", "content": "add\n\n1 2"}],
        [{"role": "user", "content": "q3"}],
    ]
    assert found.prompts[0].row == {"answer": 5}
    assert found.prompts[3].row == {"answer": 3, "output": "3"}
    assert found.columns == {"answer"}


def test_test_sources_are_not_read_and_max_prompts_cuts_the_mixture(tmp_path):
    from alignkit.sampling.prompts import load_prompts

    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": f"p{i}"} for i in range(5)])
    test = _jsonl(tmp_path / "test.jsonl", [{"prompt": "held out"}])
    recipe = _recipe([{"path": str(train)}, {"path": str(test), "role": "test"}], max_prompts=3)
    assert [p.messages[0]["content"] for p in load_prompts(recipe, "r.yaml").prompts] == ["p0", "p1", "p2"]


def test_a_source_without_a_prompt_column_and_a_bad_row_are_named(tmp_path):
    from alignkit.errors import UserError
    from alignkit.sampling.prompts import load_prompts

    plain = _jsonl(tmp_path / "plain.jsonl", [{"text": "just text"}])
    with pytest.raises(UserError) as err:
        load_prompts(_recipe([{"path": str(plain)}]), "r.yaml")
    assert str(err.value) == (
        "r.yaml: data.datasets.0: no prompt column among text; sample reads one of prompt, messages, conversations,"
        " instruction, question, problem, or the column sample.prompt_column names"
    )
    only_answer = _jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "assistant", "content": "a"}]}])
    with pytest.raises(UserError, match=r"bad\.jsonl, row 0: messages leaves no user turn to answer"):
        load_prompts(_recipe([{"path": str(only_answer)}]), "r.yaml")
    with pytest.raises(UserError, match=r"sample.prompt_column: data.datasets.0 has no column 'query'"):
        load_prompts(_recipe([{"path": str(plain)}], prompt_column="query"), "r.yaml")


# --- the recipe's rules ------------------------------------------------------------------------------------

BASE = {
    "model": {"name_or_path": "some/model"},
    "data": {"datasets": [{"path": "prompts.jsonl"}]},
    "sample": {"num_samples": 4, "scorers": [{"exact_match": {"column": "answer"}}], "select": "best"},
    "training": {"output_dir": "runs/sample"},
}


def _dry_run(cli, tmp_path, recipe: dict, *extra: str):
    _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "what is 2 + 3?", "answer": "5"}])
    path = tmp_path / "sample.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return cli("sample", "--recipe", path, "--dry-run", *extra)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"scorers": []},
            "sample.scorers: give at least one scorer (reward_model, exact_match, regex, python, math, think_format or"
            " overlong) to select by",
        ),
        ({"num_samples": 1}, "sample.num_samples: select best compares candidates: generate at least 2 per prompt"),
        ({"temperature": 0}, "sample.temperature: 0 is greedy decoding, which gives num_samples identical"),
        ({"select": "threshold"}, "sample.min_score: select threshold keeps candidates scoring at least min_score"),
        ({"min_margin": 0.5}, "sample.min_margin: applies to select best_worst, not best; remove it"),
        ({"stop": [""]}, "sample.stop: an empty stop string would end every completion at once"),
        ({"num_sample": 4}, "sample.num_sample: unknown key; did you mean num_samples?"),
    ],
)
def test_a_wrong_sample_section_is_refused_naming_the_field(cli, tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    result = _dry_run(cli, tmp_path, {**BASE, "sample": {**BASE["sample"], **change}})
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_training_settings_in_a_sample_recipe_are_refused(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _dry_run(cli, tmp_path, {**BASE, "training": {"output_dir": "x", "learning_rate": 1e-5}})
    assert result.exit_code == 2
    assert "training.learning_rate: unknown key; valid keys here: output_dir, overwrite_output_dir" in result.output


def test_dry_run_shows_the_plan_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _dry_run(cli, tmp_path, BASE, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["method"] == "sample"
    assert document["output_action"] == "new"
    assert document["scorers"] == [{"label": "exact_match:answer", "weight": 1.0}]
    assert document["recipe"]["sample"]["num_samples"] == 4
    assert not (tmp_path / "runs").exists()


# --- whole runs on the tiny Llama --------------------------------------------------------------------------

PROMPTS = [{"prompt": f"what is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2)]]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama with a one-output score head (untrained): a sequence classifier as `alignkit rm` saves."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm") / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _sample_recipe(tmp_path: Path, model: Path, scorers: list, out: Path, **sample) -> Path:
    data = _jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    recipe = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"datasets": [{"path": str(data)}]},
        "sample": {
            "num_samples": 3,
            "max_new_tokens": 5,
            "temperature": 1.0,
            "scorers": scorers,
            "select": "best",
            "shard_size": 2,
            "batch_size": 2,
            **sample,
        },
        "training": {"output_dir": str(out)},
    }
    path = tmp_path / "sample.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _train_on_selected(cli, tmp_path: Path, method: str, model: Path, sampled: Path) -> None:
    """One training step of `method` on a sample run's selected.jsonl, exactly as a user would point at it."""
    recipe = tmp_path / f"{method}.yaml"
    content = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"datasets": [{"path": str(sampled / "selected.jsonl")}]},
        "training": {"output_dir": str(tmp_path / method), "max_steps": 1, "save_strategy": "no"},
    }
    recipe.write_text(yaml.safe_dump(content), encoding="utf-8")
    trained = cli(method, "--recipe", recipe)
    assert trained.exit_code == 0, trained.output


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_sample_scores_every_candidate_selects_the_best_and_the_rows_train_sft(
    cli, tmp_path, tiny_model_dir, reward_model_dir
):
    out = tmp_path / "runs" / "sample"
    scorers = [{"reward_model": str(reward_model_dir)}, {"exact_match": {"column": "answer"}, "weight": 2}]
    result = cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, out))
    assert result.exit_code == 0, result.output
    records = _read(out / "candidates.jsonl")
    assert [r["prompt"][-1]["content"] for r in records] == [p["prompt"] for p in PROMPTS]
    assert [r["row"] for r in records] == [{"answer": p["answer"]} for p in PROMPTS]
    for record in records:
        assert sum(c["copies"] for c in record["candidates"]) == 3
        for c in record["candidates"]:
            assert set(c["scores"]) == {"reward_model", "exact_match:answer"}
            assert c["total"] == pytest.approx(c["scores"]["reward_model"] + 2 * c["scores"]["exact_match:answer"])
    selected = _read(out / "selected.jsonl")
    tops = [max(r["candidates"], key=lambda c: c["total"])["completion"] for r in records]
    assert [row["messages"][-1]["content"] for row in selected] == tops  # an untrained reward model never ties
    summary = json.loads((out / "alignkit_sample.json").read_text())
    assert summary["counts"]["prompts"] == 5 and summary["counts"]["completions"] == 15
    assert summary["counts"]["selected_rows"] == 5 and summary["backend"] == "transformers"
    assert summary["generation"]["prompts"] == 5 and summary["generation"]["completions_per_second"] > 0
    assert json.loads((out / "alignkit_run.json").read_text())["finished"] is True
    assert (out / "scores.png").stat().st_size > 0 and "selected.jsonl" in (out / "README.md").read_text()
    assert "sample done: 5 prompts, 15 completions" in result.output

    _train_on_selected(cli, tmp_path, "sft", tiny_model_dir, out)
    assert (tmp_path / "sft" / "model.safetensors").is_file()


@pytest.mark.slow
def test_sampling_with_the_cpu_attention_kernel_named_in_the_recipe_gives_sdpas_candidates(
    cli, tmp_path, tiny_model_dir
):
    scorers = [{"regex": "[0-9]"}]
    candidates = []
    for kernel in ("sdpa", "blocked_matmul"):
        out = tmp_path / kernel
        recipe = _sample_recipe(tmp_path, tiny_model_dir, scorers, out)
        result = cli("sample", "--recipe", recipe, "--set", f"model.attn_implementation={kernel}")
        assert result.exit_code == 0, result.output
        candidates.append([[c["completion"] for c in r["candidates"]] for r in _read(out / "candidates.jsonl")])
    assert candidates[0] == candidates[1]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_candidates_and_a_killed_run_resumes_at_its_unfinished_shard(
    cli, tmp_path, tiny_model_dir
):
    scorers = [{"regex": "[0-9]"}]
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, first)).exit_code == 0
    assert cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, second)).exit_code == 0
    completions = [[c["completion"] for c in r["candidates"]] for r in _read(first / "candidates.jsonl")]
    assert completions == [[c["completion"] for c in r["candidates"]] for r in _read(second / "candidates.jsonl")]

    # As a run killed while generating its second shard leaves it: shard 0 written, the run not finished.
    info = json.loads((second / "alignkit_run.json").read_text())
    (second / "alignkit_run.json").write_text(json.dumps({**info, "finished": False}))
    for name in ("shards/shard-00001.jsonl", "shards/shard-00002.jsonl", "candidates.jsonl", "selected.jsonl"):
        (second / name).unlink()
    kept = (second / "shards" / "shard-00000.jsonl").stat().st_mtime_ns
    resumed = cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, second))
    assert resumed.exit_code == 0, resumed.output
    assert "1 of 3 shards are finished; resuming at shard 1" in resumed.output
    assert (second / "shards" / "shard-00000.jsonl").stat().st_mtime_ns == kept
    assert [[c["completion"] for c in r["candidates"]] for r in _read(second / "candidates.jsonl")] == completions

    changed = cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, first, seed=1))
    assert changed.exit_code == 2
    assert "holds a finished sample run" in changed.output and "Pass --overwrite" in changed.output
    replaced = cli(
        "sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, first, seed=1), "--overwrite"
    )
    assert replaced.exit_code == 0, replaced.output
    assert [[c["completion"] for c in r["candidates"]] for r in _read(first / "candidates.jsonl")] != completions


@pytest.mark.slow
def test_best_worst_pairs_train_dpo(cli, tmp_path, tiny_model_dir, reward_model_dir):
    out = tmp_path / "pairs"
    scorers = [{"reward_model": str(reward_model_dir)}]
    recipe = _sample_recipe(tmp_path, tiny_model_dir, scorers, out, select="best_worst")
    assert cli("sample", "--recipe", recipe).exit_code == 0
    pairs = _read(out / "selected.jsonl")
    assert len(pairs) == 5 and all(set(row) == {"prompt", "chosen", "rejected"} for row in pairs)
    _train_on_selected(cli, tmp_path, "dpo", tiny_model_dir, out)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scorer", "message"),
    [
        ({"exact_match": {"column": "solution"}}, "sample.scorers.0.exact_match"),
        ({"python": "no_such_module_here:score"}, "sample.scorers.0.python"),
        ("causal", "sample.scorers.0.reward_model"),
    ],
)
def test_a_scorer_the_run_cannot_use_exits_2_before_generating_and_leaves_nothing(
    cli, tmp_path, tiny_model_dir, scorer, message
):
    out = tmp_path / "refused"
    if scorer == "causal":
        scorer = {"reward_model": str(tiny_model_dir)}
    result = cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, [scorer], out))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_share_the_shards_and_give_the_candidates_one_process_gives(cli, tmp_path, tiny_model_dir):
    scorers = [{"regex": "[0-9]"}]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, one)).exit_code == 0
    result = cli("sample", "--recipe", _sample_recipe(tmp_path, tiny_model_dir, scorers, two), "--num-processes", "2")
    assert result.exit_code == 0, result.output
    assert "2 processes share the 3 unfinished shards" in result.output
    assert _read(two / "candidates.jsonl") == _read(one / "candidates.jsonl")
    assert (two / "selected.jsonl").read_text() == (one / "selected.jsonl").read_text()
    generation = json.loads((two / "alignkit_sample.json").read_text())["generation"]
    assert generation["processes"] == 2 and generation["prompts"] == 5
    assert generation["completions_per_second"] > 0 and generation["tokens_per_second"] > 0


def test_the_library_lists_shows_and_copies_sample_recipes(cli, tmp_path):
    listed = cli("recipes", "list", "--method", "sample", "--json")
    assert listed.exit_code == 0, listed.output
    assert {"tiny-demo", "best-of-n-sft", "iterative-dpo"} <= {row["name"] for row in json.loads(listed.stdout)}
    shown = cli("recipes", "show", "tiny-demo", "--method", "sample")
    assert shown.exit_code == 0 and shown.stdout.startswith("# tiny-demo: sample\n")
    copied = cli("recipes", "cp", "tiny-demo", tmp_path / "mine", "--method", "sample")
    assert copied.exit_code == 0, copied.output
    assert (tmp_path / "mine" / "sample.yaml").is_file()
    unknown = cli("recipes", "show", "tiny-demo", "--method", "ppo")
    assert unknown.exit_code == 2
    assert (
        "unknown method 'ppo'; one of cpt, sft, dpo, orpo, simpo, kto, rm, grpo, rloo, sample, eval" in unknown.output
    )


def test_the_data_preview_shows_the_prompts_and_the_columns_and_checks_the_scorers(cli, tmp_path, tiny_model_dir):
    recipe = _sample_recipe(tmp_path, tiny_model_dir, [{"exact_match": "answer"}], tmp_path / "out")
    result = cli("data", "sample", "--recipe", recipe, "--show", "2", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["prompts"], document["completions"], document["scorer_columns"]) == (5, 15, ["answer"])
    assert document["read_as"] == [f"{tmp_path / 'prompts.jsonl'}: prompt column"]
    first = document["examples"][0]
    assert first["row"] == {"answer": "3"}
    assert first["rendered"] == "<|im_start|>user\nwhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
    missing = cli("data", "sample", "--recipe", recipe, "--set", "sample.scorers.0.exact_match=solution")
    assert missing.exit_code == 2
    assert "sample.scorers.0.exact_match: the prompt rows have no column 'solution'" in missing.output
    assert not (tmp_path / "out").exists()
