"""`alignkit eval`: the recipe's rules, and a scorecard of two tiny local models on generative checks, a
reward-model judge and held-out loss, through the CLI: values checked against independent computations, the
cache reused and invalidated, each run's card updated, bad input refused before anything loads.
(The lm-evaluation-harness part is tested in test_eval_harness.py.)"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from alignkit.evaluation.judge import head_to_head
from alignkit.evaluation.recipe import EvalRecipe, EvalSection

HELDOUT = [{"prompt": f"what is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (4, 4), (7, 1), (5, 9), (6, 6)]]
CHATS = [
    {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["answer"]}]}
    for row in HELDOUT
] + [{"messages": [{"role": "user", "content": "say hello to the world"}, {"role": "assistant", "content": "hello"}]}]


def _models(section: dict) -> dict:
    return {"models": [{"name": "a", "path": "x"}, {"name": "b", "path": "y"}], **section}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (_models({}), "give at least one of harness, generate, judge, loss to measure"),
        (_models({"judge": {"reward_model": "rm"}}), "compares the completions eval.generate makes: add eval.generate"),
        (
            {"models": ["runs/a"], "generate": {}, "judge": {"reward_model": "rm"}},
            "compares models against a baseline: give at least two models",
        ),
        (_models({"baseline": "c", "generate": {}}), "'c' is none of the models (a, b)"),
        ({"models": ["runs/sft", "old/sft"], "generate": {}}, "two models are named sft; give each a name of its own"),
        (_models({"harness": {"tasks": []}}), "at least 1 item"),
    ],
)
def test_section_refusals(section, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EvalSection.model_validate(section)


def test_models_are_named_after_their_folders_and_data_goes_with_generate():
    section = EvalSection.model_validate(
        {"models": ["runs/sft/", {"path": "org/model-7b"}], "loss": {"datasets": [{"path": "a"}]}}
    )
    assert [m.name for m in section.models] == ["sft", "model-7b"]
    assert section.baseline_name == "sft"
    with pytest.raises(ValidationError, match=r"only eval\.generate reads data"):
        EvalRecipe.model_validate(
            {"eval": {"models": ["m"], "loss": {"datasets": [{"path": "a"}]}}, "data": {"datasets": [{"path": "p"}]}}
        )
    with pytest.raises(ValidationError, match=r"eval\.generate needs held-out prompts: add data\.datasets"):
        EvalRecipe.model_validate({"eval": {"models": ["m"], "generate": {}}})


def test_head_to_head_counts_ties_apart():
    found = head_to_head([1.0, 0.5, 0.2, 0.7], [0.5, 0.5, 0.9, 0.1], [False, False, False, True])
    assert (found["wins"], found["ties"], found["losses"]) == (1, 2, 1)
    assert found["win_rate"] + found["tie_rate"] + found["loss_rate"] == 1.0


# --- end to end on two tiny models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tiny_model_dir, tmp_path_factory):
    """Two tiny Llamas (the second a finished alignkit run with a card), a reward model, prompts and chats."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("eval")
    other = root / "tuned"
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    model.save_pretrained(other)
    (other / "alignkit_run.json").write_text(json.dumps({"method": "sft", "finished": True}), encoding="utf-8")
    (other / "README.md").write_text("# tuned\n\nA card.\n", encoding="utf-8")
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm.config.pad_token_id = tokenizer.pad_token_id
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    rm.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    for name, rows in {"heldout.jsonl": HELDOUT, "chats.jsonl": CHATS}.items():
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return root


def _recipe(workspace: Path, tiny_model_dir, out: Path, **changes) -> Path:
    section = {
        "models": [{"name": "base", "path": str(tiny_model_dir)}, {"name": "tuned", "path": str(workspace / "tuned")}],
        "dtype": "float32",
        "generate": {"scorers": [{"exact_match": "answer"}, {"regex": "[0-9]"}], "max_new_tokens": 6},
        "judge": {"reward_model": str(workspace / "rm"), "batch_size": 2},
        "loss": {"datasets": [{"path": str(workspace / "chats.jsonl")}], "max_length": 64, "batch_size": 4},
        **changes,
    }
    recipe = {"eval": section, "data": {"datasets": [{"path": str(workspace / "heldout.jsonl")}]}}
    recipe["training"] = {"output_dir": str(out)}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _results(out: Path) -> dict[tuple[str, str, str], float | None]:
    document = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    return {(r["part"], r["metric"], r["model"]): r["value"] for r in document["results"]}


def test_a_scorecard_of_two_models(cli, workspace, tiny_model_dir, tmp_path):
    out = tmp_path / "card"
    result = cli("eval", "--recipe", _recipe(workspace, tiny_model_dir, out))
    assert result.exit_code == 0, result.output
    document = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in document["models"]] == ["base", "tuned"]
    assert document["seed"] == 0 and document["baseline"] == "base" and document["versions"]["transformers"]
    found = _results(out)
    # generate: each scorer's value is the mean of the marks in the answers file.
    for name in ("base", "tuned"):
        answers = [json.loads(line) for line in (out / "answers" / f"{name}.jsonl").read_text().splitlines()]
        assert [a["answer"] for a in answers] == [row["answer"] for row in HELDOUT]
        for label in ("exact_match:answer", "regex"):
            marks = [a["scores"][label] for a in answers]
            assert found[("generate", label, name)] == pytest.approx(sum(marks) / len(marks))
        exact = [float(a["completion"].strip() == a["answer"]) for a in answers]
        assert found[("generate", "exact_match:answer", name)] == pytest.approx(sum(exact) / len(exact))
    # judge: the rates add up, and follow the reward model's own scores of the two models' answers.
    assert sum(found[("judge", f"{r}_rate", "tuned")] for r in ("win", "tie", "loss")) == pytest.approx(1.0)
    assert ("judge", "win_rate", "base") not in found
    rewards = _rewards(workspace / "rm", out)
    same = [a == b for a, b in zip(rewards["base"][1], rewards["tuned"][1], strict=True)]
    expected = head_to_head(rewards["tuned"][0], rewards["base"][0], same)
    assert found[("judge", "win_rate", "tuned")] == pytest.approx(expected["win_rate"])
    # loss: perplexity is exp(loss); the tuned model's random change makes it worse than the base.
    for name in ("base", "tuned"):
        assert found[("loss", "perplexity", name)] == pytest.approx(math.exp(found[("loss", "loss", name)]))
    assert found[("loss", "loss", "tuned")] != found[("loss", "loss", "base")]
    assert (out / "eval_results.png").stat().st_size > 1000
    table = (out / "eval_results.md").read_text()
    assert "| generate | heldout | exact_match:answer |" in table and "| base | tuned |" in table
    assert "tuned" in result.stdout and "exact_match:answer" in result.stdout
    # The finished run's card gains its scores once, however often it is evaluated.
    card = (workspace / "tuned" / "README.md").read_text()
    assert card.startswith("# tuned\n\nA card.\n") and card.count("## Evaluation") == 1
    assert "| generate | heldout | exact_match:answer |" in card
    base_card = Path(tiny_model_dir) / "README.md"  # not an alignkit run: left as it is
    assert not base_card.exists() or "## Evaluation" not in base_card.read_text()


def _rewards(rm: Path, out: Path) -> dict[str, tuple[list[float], list[str]]]:
    from alignkit.scoring.build import build_scorers, close_scorers
    from alignkit.scoring.specs import RewardModelSpec

    (scorer,) = build_scorers([RewardModelSpec(path=str(rm), batch_size=1)], ["rm"])
    found = {}
    try:
        for name in ("base", "tuned"):
            answers = [json.loads(line) for line in (out / "answers" / f"{name}.jsonl").read_text().splitlines()]
            texts = [a["completion"] for a in answers]
            found[name] = (scorer.score([a["prompt"] for a in answers], texts, answers), texts)
    finally:
        close_scorers([scorer])
    return found


def test_batched_loss_equals_one_row_at_a_time(workspace, tiny_model_dir, tmp_path):
    from alignkit.evaluation.heldout_loss import heldout_loss
    from alignkit.recipe.resolve import resolve_recipe

    recipe = resolve_recipe("eval", str(_recipe(workspace, tiny_model_dir, tmp_path / "l"))).recipe
    model = recipe.eval.models[1]
    batched = heldout_loss(recipe, model, str(tmp_path / "l"), echo=lambda line: None)
    single = heldout_loss(
        recipe.model_copy(
            update={
                "eval": recipe.eval.model_copy(update={"loss": recipe.eval.loss.model_copy(update={"batch_size": 1})})
            }
        ),
        model,
        str(tmp_path / "l"),
        echo=lambda line: None,
    )
    assert batched["rows"] == single["rows"] == len(CHATS)
    assert batched["tokens"] == single["tokens"] > 0
    assert batched["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_a_rerun_reuses_what_did_not_change(cli, workspace, tiny_model_dir, tmp_path):
    out = tmp_path / "again"
    recipe = _recipe(workspace, tiny_model_dir, out)
    assert cli("eval", "--recipe", recipe).exit_code == 0
    first = _results(out)
    again = cli("eval", "--recipe", recipe)
    assert again.exit_code == 0, again.output
    assert again.output.count("reused from the cache") == 5  # generate and loss of each model, and the judge
    assert _results(out) == first
    changed = cli("eval", "--recipe", recipe, "--set", "eval.loss.max_length=32")
    assert changed.output.count("reused from the cache") == 3  # only the loss is measured again
    fresh = cli("eval", "--recipe", recipe, "--overwrite")
    assert "reused from the cache" not in fresh.output and _results(out) == first


def test_bad_input_is_refused_before_anything_loads(cli, workspace, tiny_model_dir, tmp_path):
    out = tmp_path / "bad"
    missing = cli(
        "eval", "--recipe", _recipe(workspace, tiny_model_dir, out), "--set", "eval.models.1.path=nowhere/at/all"
    )
    assert missing.exit_code == 2
    assert "eval.models.1.path: no such folder: nowhere/at/all; give a model folder" in missing.stderr
    column = cli(
        "eval",
        "--recipe",
        _recipe(workspace, tiny_model_dir, out),
        "--set",
        "eval.generate.scorers.0.exact_match=solution",
    )
    assert column.exit_code == 2
    assert "eval.generate.scorers.0.exact_match: the prompt rows have no column 'solution'" in column.stderr
    assert not out.exists()  # refused before anything was written
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    taken = cli("eval", "--recipe", _recipe(workspace, tiny_model_dir, foreign))
    assert taken.exit_code == 2 and "exists and holds no alignkit eval" in taken.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
