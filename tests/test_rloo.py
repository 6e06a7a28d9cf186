"""`alignkit rloo`: REINFORCE Leave-One-Out on TRL's RLOOTrainer, everything but the algorithm shared with grpo
(alignkit.methods.online). Its own fields and defaults against TRL's, the mapping, the refusals; the loss
parity with plain RLOOTrainer is in test_parity.py."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from alignkit.methods import METHODS
from alignkit.methods.rloo import RlooSection

RLOO = METHODS["rloo"]


def test_defaults_are_trl_s():
    from trl import RLOOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RLOOConfig)}
    section = RlooSection()
    for name in ("num_generations", "temperature", "top_p", "top_k", "beta", "epsilon", "epsilon_high"):
        assert getattr(section, name) == defaults[name], name
    for name in ("num_iterations", "mask_truncated_completions", "normalize_advantages", "reward_clip_range"):
        assert getattr(section, name) == defaults[name], name
    assert RLOO.default_learning_rate == defaults["learning_rate"]


def test_the_section_maps_onto_rloo_config():
    from trl import RLOOConfig

    section = RlooSection(
        rewards=[{"exact_match": "answer"}, {"regex": "x", "weight": 0.5}],
        reward_clip_range=[-1, 2],
        normalize_advantages=True,
        vllm="off",
    )
    settings = RLOO.trl_settings(section)
    assert settings["reward_clip_range"] == (-1.0, 2.0) and settings["normalize_advantages"] is True
    assert settings["reward_weights"] == [1.0, 0.5] and settings["beta"] == 0.05 and settings["use_vllm"] is False
    config = RLOOConfig(output_dir="/tmp/alignkit-rloo-check", report_to="none", bf16=False, **settings)
    assert config.reward_clip_range == (-1.0, 2.0)
    assert dict(RLOO.card_rows(section))["advantages"] == "leave-one-out, normalised; reward clip -1 to 2"
    assert RLOO.data.passthrough(section) == {"answer": "rloo.rewards.0.exact_match"}
    assert RLOO.reference_model(section) and not RLOO.reference_model(RlooSection(beta=0))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reward_clip_range": [2, 1]}, "is [low, high]; 2 is not below 1"),
        ({"reward_clip_range": [1]}, "at least 2 items"),
        ({"num_generations": 1}, "must be a whole number from 2 to 65,536"),
        ({"vllm": "off", "vllm_server": "http://a:8000"}, "but vllm is off: set vllm: server to use it"),
    ],
)
def test_refusals(fields, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RlooSection(**fields)


def test_a_batch_that_cannot_hold_whole_groups_names_rloo(cli, tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "what is 2 + 3?", "answer": "5"}\n', encoding="utf-8")
    recipe = tmp_path / "rloo.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{datasets: [{{path: {data}}}]}}\n"
        "training: {per_device_train_batch_size: 3}\nrloo: {num_generations: 2, rewards: [{exact_match: answer}]}\n",
        encoding="utf-8",
    )
    result = cli("rloo", "--recipe", recipe, "--dry-run")
    assert result.exit_code == 2
    assert "rloo.num_generations: is 2, but each process generates for training.per_device_train_batch_size" in (
        " ".join(result.stderr.split())
    )
    assert (
        cli("rloo", "--recipe", recipe, "--dry-run", "--set", "training.per_device_train_batch_size=4").exit_code == 0
    )
