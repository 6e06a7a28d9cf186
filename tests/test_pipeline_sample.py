"""Pipelines with data-making stages: `data:` and `inputs:` wiring, repeated blocks (iterative DPO), and a
whole sft -> rm -> (sample -> dpo) x 2 run of the tiny Llama through `alignkit run`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from alignkit.pipeline.spec import PipelineSpec


def _names(spec: dict) -> list[tuple]:
    return [(s.name, s.from_stage, s.data_stage, s.inputs) for s in PipelineSpec.model_validate(spec).flat]


def _iterative(rounds: int, dpo_set: tuple[str, ...] = ()) -> list[dict]:
    """sft, rm, then `rounds` rounds of sampling from the newest policy (scored by rm) and DPO on the pairs."""
    sample = {"name": "sample", "method": "sample", "from": "dpo", "inputs": {"sample.scorers.0.reward_model": "rm"}}
    dpo = {
        "name": "dpo",
        "method": "dpo",
        "from": "dpo",
        "data": "sample",
        **({"set": list(dpo_set)} if dpo_set else {}),
    }
    return [
        {"name": "sft", "method": "sft"},
        {"name": "rm", "method": "rm", "from": "sft"},
        {"repeat": rounds, "start": {"dpo": "sft"}, "stages": [sample, dpo]},
    ]


ITERATIVE = {"stages": [*_iterative(3), {"name": "final", "method": "sft", "from": "dpo"}]}


def test_a_repeated_block_expands_into_rounds_each_reading_the_previous_round():
    rm = {"sample.scorers.0.reward_model": "rm"}
    assert _names(ITERATIVE) == [
        ("sft", None, None, {}),
        ("rm", "sft", None, {}),
        ("sample-1", "sft", None, rm),
        ("dpo-1", "sft", "sample-1", {}),
        ("sample-2", "dpo-1", None, rm),
        ("dpo-2", "dpo-1", "sample-2", {}),
        ("sample-3", "dpo-2", None, rm),
        ("dpo-3", "dpo-2", "sample-3", {}),
        ("final", "dpo-3", None, {}),
    ]


def test_a_null_start_lets_round_one_use_the_recipes_own_model():
    spec = {
        "stages": [
            {
                "repeat": 2,
                "start": {"dpo": None},
                "stages": [
                    {"name": "sample", "method": "sample", "from": "dpo"},
                    {"name": "dpo", "method": "dpo", "from": "dpo", "data": "sample"},
                ],
            }
        ]
    }
    assert _names(spec) == [
        ("sample-1", None, None, {}),
        ("dpo-1", None, "sample-1", {}),
        ("sample-2", "dpo-1", None, {}),
        ("dpo-2", "dpo-1", "sample-2", {}),
    ]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [{"repeat": 2, "stages": [{"name": "s", "method": "sample", "from": "d"}, {"name": "d", "method": "dpo"}]}],
            "in round 1, stage 's' reads 'd', which has not run yet; add start: {d: STAGE}",
        ),
        (
            [{"name": "s", "method": "sample"}, {"name": "d", "method": "dpo", "from": "s"}],
            "stage 'd' starts from 's', a sample stage, which makes data, not a model; read its rows with data:",
        ),
        (
            [{"name": "a", "method": "sft"}, {"name": "d", "method": "dpo", "data": "a"}],
            "stage 'd' reads data from 'a', a sft stage, which makes a model, not data; start from it with from:",
        ),
        (
            [{"name": "s", "method": "sample", "inputs": {"sample.scorers.0.reward_model": "rm"}}],
            "stage 's' sets sample.scorers.0.reward_model from 'rm', which is not an earlier stage",
        ),
        (
            [{"name": "x", "method": "ppo"}],
            "unknown method 'ppo'; one of cpt, sft, dpo, orpo, simpo, kto, rm, grpo, rloo, sample, eval",
        ),
        (
            [{"name": "a", "method": "sft"}, {"name": "e", "method": "eval", "from": "a"}],
            "stage 'e' is a eval stage, which names its models itself; point them at earlier stages with inputs:"
            " {FIELD: STAGE} (such as eval.models.1.path: STAGE) instead of from:",
        ),
        (
            [{"name": "e", "method": "eval"}, {"name": "d", "method": "sft", "data": "e"}],
            "stage 'd' reads data from 'e', a eval stage, which makes no training rows; read rows from a stage that"
            " makes them, such as sample",
        ),
    ],
)
def test_wiring_that_cannot_work_is_refused(stages, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PipelineSpec.model_validate({"stages": stages})


# --- a whole run on the tiny Llama -------------------------------------------------------------------------

QUESTIONS = [("what is 2 + 3?", "5"), ("what is 4 + 4?", "8"), ("what is 7 + 1?", "8"), ("hello", "hello world")]


def _family(folder: Path, model: Path) -> Path:
    """A recipe folder with sft, rm, sample and dpo files and an iterative pipeline of two rounds."""
    folder.mkdir()
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QUESTIONS]
    pairs = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for q, a in QUESTIONS
    ]
    (folder / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats), encoding="utf-8")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in QUESTIONS), encoding="utf-8"
    )
    short = {"max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "no", "learning_rate": 1e-3}
    model_section = {"name_or_path": str(model), "dtype": "float32"}
    files = {
        "sft": {"model": model_section, "data": {"datasets": [{"path": "chats.jsonl"}]}, "training": short},
        "rm": {"model": model_section, "data": {"datasets": [{"path": "pairs.jsonl"}]}, "training": short},
        "dpo": {"model": model_section, "data": {"datasets": [{"path": "pairs.jsonl"}]}, "training": short},
        "sample": {
            "model": model_section,
            "data": {"datasets": [{"path": "prompts.jsonl"}]},
            "sample": {
                "num_samples": 3,
                "max_new_tokens": 4,
                "scorers": [{"reward_model": "set-by-the-pipeline"}],
                "select": "best_worst",
            },
        },
        "pipeline": {"description": "iterative dpo on the tiny Llama", "stages": _iterative(2, ("dpo.beta=0.2",))},
    }
    for name, content in files.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return folder


def test_the_dry_run_shows_every_round_wired_to_the_one_before(cli, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    family = _family(tmp_path / "iterative", tiny_model_dir)
    result = cli("run", "--recipe", family, "--output-dir", tmp_path / "runs", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    stages = {s["stage"]: s for s in json.loads(result.stdout)["stages"]}
    assert list(stages) == ["sft", "rm", "sample-1", "dpo-1", "sample-2", "dpo-2"]
    root = tmp_path / "runs"
    assert stages["sample-2"]["model"] == str(root / "dpo-1")
    assert stages["dpo-2"]["reads"] == ["dpo-1", "sample-2"] and stages["sample-1"]["launch"] is None

    from alignkit.pipeline.spec import plan_pipeline

    planned = {s.name: s.resolved.recipe for s in plan_pipeline(str(family), output_root=root)}
    assert planned["sample-1"].sample.scorers[0].path == str(root / "rm")
    assert planned["dpo-1"].data.datasets[0].path == str(root / "sample-1" / "selected.jsonl")
    assert planned["dpo-2"].dpo.beta == 0.2 and planned["dpo-1"].model.name_or_path == str(root / "sft")


def test_repeated_stages_without_an_output_root_get_a_folder_per_round(tmp_path, tiny_model_dir, monkeypatch):
    from alignkit.pipeline.spec import plan_pipeline

    monkeypatch.chdir(tmp_path)
    family = _family(tmp_path / "iterative", tiny_model_dir)
    folders = {s.name: str(s.output_dir) for s in plan_pipeline(str(family))}
    assert folders["dpo-1"] == "outputs/iterative-dpo-1" and folders["dpo-2"] == "outputs/iterative-dpo-2"
    assert folders["sample-2"] == "outputs/iterative-sample-2" and folders["sft"] == "outputs/iterative-sft"


@pytest.mark.slow
def test_an_iterative_pipeline_runs_every_round_and_a_rerun_skips_them(cli, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    family = _family(tmp_path / "iterative", tiny_model_dir)
    root = tmp_path / "runs"
    result = cli("run", "--recipe", family, "--output-dir", root)
    assert result.exit_code == 0, result.output
    for stage in ("sft", "rm", "sample-1", "dpo-1", "sample-2", "dpo-2"):
        assert json.loads((root / stage / "alignkit_run.json").read_text())["finished"] is True
    pairs = (root / "sample-2" / "selected.jsonl").read_text().splitlines()
    assert pairs and all(set(json.loads(line)) == {"prompt", "chosen", "rejected"} for line in pairs)
    frozen = yaml.safe_load((root / "sample-2" / "alignkit_recipe.yaml").read_text())
    assert frozen["model"]["name_or_path"] == str(root / "dpo-1")
    assert frozen["sample"]["scorers"][0]["reward_model"]["path"] == str(root / "rm")
    again = cli("run", "--recipe", family, "--output-dir", root)
    assert again.exit_code == 0, again.output
    assert "stage sample-2: finished, skipped" in again.output and "all 6 stages finished" in again.output


def _write_family(folder: Path, model: Path, stages: list) -> Path:
    folder.mkdir()
    (folder / "chats.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n",
        encoding="utf-8",
    )
    (folder / "prompts.jsonl").write_text(json.dumps({"prompt": "hi", "answer": "yo"}) + "\n", encoding="utf-8")
    sample = {"num_samples": 2, "scorers": [{"exact_match": "answer"}], "select": "best"}
    files = {
        "sft": {"model": {"name_or_path": str(model)}, "data": {"datasets": [{"path": "chats.jsonl"}]}},
        "sample": {
            "model": {"name_or_path": str(model)},
            "data": {"datasets": [{"path": "prompts.jsonl"}]},
            "sample": sample,
        },
        "pipeline": {"stages": stages},
    }
    for name, content in files.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(content), encoding="utf-8")
    return folder


def test_a_second_stage_of_one_method_gets_its_own_folder_and_two_stages_in_one_folder_are_refused(
    tmp_path, tiny_model_dir, monkeypatch
):
    from alignkit.errors import UserError
    from alignkit.pipeline.spec import plan_pipeline

    monkeypatch.chdir(tmp_path)
    stages = [
        {"name": "sft", "method": "sft"},
        {"name": "sample", "method": "sample", "from": "sft"},
        {"name": "sft-bon", "method": "sft", "from": "sft", "data": "sample", "set": ["training.learning_rate=1e-5"]},
    ]
    family = _write_family(tmp_path / "bon", tiny_model_dir, stages)
    plan = {s.name: s for s in plan_pipeline(str(family))}
    assert str(plan["sft"].output_dir) == "outputs/bon-sft"
    assert str(plan["sft-bon"].output_dir) == "outputs/bon-sft-bon"
    assert plan["sft-bon"].resolved.recipe.training.learning_rate == 1e-5
    with pytest.raises(UserError) as err:
        plan_pipeline(str(family), overrides=["sft-bon:training.output_dir=outputs/bon-sft"])
    assert str(err.value) == (
        "outputs/bon-sft: stages sft and sft-bon would both write here; give one of them its own folder"
        " (--set sft-bon:training.output_dir=DIR, or --output-dir ROOT for one folder per stage)"
    )


def test_round_in_a_repeated_stages_set_is_the_rounds_number(tmp_path, tiny_model_dir, monkeypatch):
    from alignkit.pipeline.spec import plan_pipeline

    monkeypatch.chdir(tmp_path)
    for r in (1, 2):
        (tmp_path / f"prompts-{r}.jsonl").write_text(json.dumps({"prompt": "q", "answer": "a"}) + "\n")
    stages = [
        {"name": "sft", "method": "sft"},
        {
            "repeat": 2,
            "start": {"sft2": "sft"},
            "stages": [
                {
                    "name": "sample",
                    "method": "sample",
                    "from": "sft2",
                    "set": [f"data.datasets.0.path={tmp_path}/prompts-{{round}}.jsonl"],
                },
                {"name": "sft2", "method": "sft", "from": "sft2", "data": "sample"},
            ],
        },
    ]
    family = _write_family(tmp_path / "loop", tiny_model_dir, stages)
    plan = {s.name: s.resolved.recipe for s in plan_pipeline(str(family))}
    assert [plan[f"sample-{r}"].data.datasets[0].path for r in (1, 2)] == [
        str(tmp_path / "prompts-1.jsonl"),
        str(tmp_path / "prompts-2.jsonl"),
    ]
