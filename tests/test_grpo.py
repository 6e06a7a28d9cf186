"""`alignkit grpo`: the recipe's rules and refusals (exit 2, before weights load), the prompt rows with the
columns the rewards read carried beside them, and an end-to-end run on the tiny local Llama with TRL's
GRPOTrainer (rewards logged, a finished run never clobbered, a killed run resumed)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml
from test_data_formats import prepare

from alignkit.errors import UserError
from alignkit.methods import METHODS
from alignkit.methods.grpo import GrpoLoss, GrpoSection
from alignkit.recipe.automatic import Facts

GRPO = METHODS["grpo"]
PROMPTS = [
    {"prompt": "what is 2 + 3?", "answer": "5"},
    {"prompt": [{"role": "user", "content": "what is 4 + 4?"}], "answer": 8},
    {"prompt": "what is 7 + 1?", "answer": "8"},
    {"prompt": "red or blue?", "answer": "blue"},
]


def _recipe(tmp_path: Path, model, out: Path, *, grpo=None, training=None, rows=PROMPTS) -> Path:
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"datasets": [{"path": str(data)}]},
        "training": {
            "output_dir": str(out),
            "learning_rate": 1e-2,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "save_strategy": "no",
            "seed": 0,
            **(training or {}),
        },
        "logging": {"logging_steps": 1},
        "grpo": {
            "num_generations": 4,
            "max_completion_length": 6,
            "rewards": [{"exact_match": "answer"}, {"regex": "e", "weight": 0.5}],
            **(grpo or {}),
        },
    }
    path = tmp_path / f"grpo-{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


# The recipe: rules, refusals, the TRL mapping.


def test_section_defaults_and_trl_mapping():
    section = GrpoSection(rewards=[{"exact_match": "answer"}, {"regex": "x", "weight": -2}], top_k=0, vllm="off")
    settings = GRPO.trl_settings(section)
    assert settings["num_generations"] == 8 and settings["max_completion_length"] == 256
    assert settings["reward_weights"] == [1.0, -2.0]
    assert settings["top_k"] == 0 and settings["use_vllm"] is False
    assert settings["loss_type"] == "dapo" and settings["beta"] == 0.0 and settings["scale_rewards"] == "group"
    assert GRPO.data.passthrough(section) == {"answer": "grpo.rewards.0.exact_match"}
    assert dict(GRPO.card_rows(section))["rewards"] == "exact_match:answer, regex x -2"


CPU = Facts(device="cpu", bf16=False, flash_attn=False, liger=False, vllm=False)
GPU_WITH_VLLM = Facts(device="cuda", bf16=True, flash_attn=True, liger=False, vllm=True)
GPU_WITHOUT_VLLM = Facts(device="cuda", bf16=True, flash_attn=True, liger=False, vllm=False)


@pytest.mark.parametrize(
    ("fields", "facts", "mode", "automatic", "reason"),
    [
        ({}, GPU_WITH_VLLM, "colocate", True, "vLLM generates on the training GPUs with 0.3 of their memory"),
        ({}, CPU, "off", True, "there is no CUDA device and vllm is not installed: generating with transformers"),
        ({}, GPU_WITHOUT_VLLM, "off", True, "vllm is not installed: generating with transformers"),
        ({"vllm_server": "http://gpu7:8001/"}, GPU_WITH_VLLM, "server", True, "generating on http://gpu7:8001"),
        ({"vllm": "colocate"}, GPU_WITH_VLLM, "colocate", False, "set in the recipe"),
        ({"vllm": "off"}, GPU_WITH_VLLM, "off", False, "set in the recipe"),
        (
            {"vllm": "server"},
            CPU,
            "off",
            True,
            "the recipe asks for vllm server, but there is no CUDA device and vllm is not installed (install it with"
            " `pip install 'alignkit[vllm]'` on a CUDA machine): generating with transformers",
        ),
    ],
)
def test_generation_is_vllm_where_it_can_run(fields, facts, mode, automatic, reason):
    (setting,) = GRPO.automatic(GrpoSection(**fields), facts)
    assert (setting.path, setting.value, setting.automatic) == ("grpo.vllm", mode, automatic)
    assert reason in setting.reason


def test_vllm_modes_map_onto_trl():
    colocate = GrpoSection(vllm="colocate", vllm_gpu_memory_utilization=0.5, vllm_sleep_mode=True)
    assert {key: value for key, value in GRPO.trl_settings(colocate).items() if "vllm" in key} == {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": 0.5,
        "vllm_tensor_parallel_size": 1,
        "vllm_enable_sleep_mode": True,
        "vllm_max_model_length": None,
    }
    server = GRPO.trl_settings(GrpoSection(vllm="server", vllm_server="http://gpu7:8001/"))
    assert (server["use_vllm"], server["vllm_mode"], server["vllm_server_base_url"]) == (
        True,
        "server",
        "http://gpu7:8001",
    )
    assert GRPO.trl_settings(GrpoSection(vllm="server"))["vllm_server_base_url"] == "http://localhost:8000"
    with pytest.raises(ValueError, match="undecided"):
        GRPO.trl_settings(GrpoSection())
    # YAML reads a bare off as false; TRL's use_vllm true is its default mode.
    assert (GrpoSection(vllm=False).vllm, GrpoSection(vllm=True).vllm) == ("off", "colocate")
    assert dict(GRPO.card_rows(GrpoSection(vllm="server")))["generation"] == "vLLM server at http://localhost:8000"


def test_defaults_and_loss_types_are_trl_s():
    import dataclasses

    from trl import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    section = GrpoSection()
    for name in ("num_generations", "temperature", "top_p", "top_k", "beta", "loss_type", "epsilon"):
        assert getattr(section, name) == defaults[name], name
    for name in ("epsilon_high", "scale_rewards", "num_iterations", "mask_truncated_completions"):
        assert getattr(section, name) == defaults[name], name
    for loss in typing.get_args(GrpoLoss):
        extra = {"importance_sampling_level": "sequence"} if loss == "luspo" else {}
        GRPOConfig(output_dir="/tmp/alignkit-grpo-check", loss_type=loss, report_to="none", bf16=False, **extra)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"num_generations": 1}, "must be a whole number from 2 to 65,536"),
        ({"epsilon": 0.2, "epsilon_high": 0.1}, "0.1 is below epsilon (0.2)"),
        ({"top_p": 0}, "greater than 0"),
        ({"vllm": "colocate", "vllm_server": "http://a:8000"}, "but vllm is colocate: set vllm: server to use it"),
        ({"vllm_server": "gpu7:8000"}, "'gpu7:8000' is not a server address; write it as http://HOST:PORT"),
        ({"vllm": "server", "vllm_sleep_mode": True}, "applies to vllm: colocate"),
        ({"vllm": "always"}, "should be 'auto', 'off', 'colocate' or 'server'"),
        ({"vllm_gpu_memory_utilization": 1.5}, "less than or equal to 1"),
    ],
)
def test_section_refusals(section, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GrpoSection(**section)


def test_generation_batch_must_hold_whole_groups(cli, tiny_model_dir, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, tmp_path / "out", training={"gradient_accumulation_steps": 3})
    result = cli("grpo", "--recipe", recipe, "--dry-run", "--set", "training.per_device_train_batch_size=2")
    assert result.exit_code == 2
    assert (
        "grpo.num_generations: is 4, but each process generates for training.per_device_train_batch_size x"
        " training.gradient_accumulation_steps = 2 x 3 = 6 completions at a time, which must hold whole groups:"
        " make that product a multiple of 4 (e.g. per_device_train_batch_size 4), or set num_generations to a"
        " divisor of 6"
    ) in " ".join(result.stderr.split())
    assert cli("grpo", "--recipe", recipe, "--dry-run", "--set", "grpo.num_generations=3").exit_code == 0


def test_rewards_are_required_and_must_import(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    none = cli("grpo", "--recipe", _recipe(tmp_path, tiny_model_dir, out, grpo={"rewards": []}), "--dry-run")
    assert none.exit_code == 2
    assert "grpo.rewards: give at least one reward (reward_model, exact_match, regex, python" in none.stderr
    broken = _recipe(tmp_path, tiny_model_dir, out, grpo={"rewards": [{"regex": "e"}, {"python": "nope.mod:fn"}]})
    result = cli("grpo", "--recipe", broken, "--dry-run")
    assert result.exit_code == 2
    assert "grpo.rewards.1.python: cannot import nope.mod" in result.stderr
    assert not out.exists()


def test_luspo_needs_sequence_level_ratios():
    recipe = {"model": {"name_or_path": "m"}, "data": {"datasets": [{"path": "d"}]}}
    with pytest.raises(ValueError, match="importance_sampling_level=sequence"):
        GRPO.recipe.model_validate({**recipe, "grpo": {"loss_type": "luspo", "num_generations": 8}})


@pytest.mark.parametrize(("generations", "batch"), [({"num_generations": 12}, 12), ({}, 8)])
def test_qlora_generates_one_whole_group_per_step(tmp_path, generations, batch):
    """--qlora's batch on one GPU is the recipe's group (TRL's default of 8 where it gives none)."""
    from alignkit.recipe.resolve import resolve_recipe

    recipe = {
        "model": {"name_or_path": "m"},
        "data": {"datasets": [{"path": "d"}]},
        "training": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 6},
        "grpo": {"rewards": [{"exact_match": "answer"}], **generations},
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    training = resolve_recipe("grpo", str(path), qlora=True).recipe.training
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (batch, 1)


# The data: prompt rows and the columns the rewards read.

REWARDS = {"rewards": [{"exact_match": "answer"}]}


def test_prompt_rows_carry_the_reward_columns(tmp_path):
    rows = [
        {"prompt": "what is 2 plus 3?", "answer": "5", "id": 1},
        {"prompt": [{"role": "user", "content": "hello"}], "answer": 7, "id": 2},
    ]
    prepared, _ = prepare(tmp_path, rows, method="grpo", section=REWARDS, system_prompt="be brief")
    assert prepared.report.sources[0].format == "prompt"
    assert prepared.train.column_names == ["prompt", "answer"]
    got = sorted(((row["prompt"], row["answer"]) for row in prepared.train), key=str)
    system = {"role": "system", "content": "be brief"}
    # The column goes on as the loader read it (here "5" and 7 as numbers); exact_match compares numbers as numbers.
    assert got == [
        ([system, {"role": "user", "content": "hello"}], 7),
        ([system, {"role": "user", "content": "what is 2 plus 3?"}], 5),
    ]


def test_conversations_lose_their_final_assistant_turn(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "answer": "a"}]
    prepared, _ = prepare(tmp_path, rows, method="grpo", section=REWARDS)
    assert prepared.report.sources[0].format == "messages"
    assert prepared.train[0]["prompt"] == [{"role": "user", "content": "hi"}]
    sharegpt = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "answer": 1}]
    prepared, _ = prepare(tmp_path / "s", sharegpt, method="grpo", section=REWARDS)
    assert prepared.report.sources[0].format == "sharegpt"
    assert prepared.train[0]["prompt"] == [{"role": "user", "content": "hi"}] and prepared.train[0]["answer"] == 1


def test_a_missing_reward_column_names_the_reward(tmp_path):
    rows = [{"prompt": "hi", "solution": "5"}]
    with pytest.raises(UserError) as err:
        prepare(tmp_path, rows, method="grpo", section={"rewards": [{"regex": "x"}, {"exact_match": "answer"}]})
    problem = err.value.problems[0]
    assert problem.path == "grpo.rewards.1.exact_match"
    assert "reads the column 'answer', which data.datasets.0" in problem.message
    assert "(its columns: prompt, solution)" in problem.message


def test_a_named_prompt_column_is_the_prompt_whatever_else_the_rows_hold(tmp_path):
    rows = [
        {"problem": "what is 2 + 3?", "solution": "5", "messages": [{"role": "user", "content": "other"}]},
        {"problem": [{"role": "user", "content": "what is 4 + 4?"}], "solution": "8", "messages": []},
    ]
    section = {"prompt_column": "problem", "rewards": [{"math": "solution"}]}
    prepared, _ = prepare(tmp_path, rows, method="grpo", section=section)
    # The data seed shuffles the rows; the prompts are the problem column's, not the messages'.
    assert sorted(row["prompt"][-1]["content"] for row in prepared.train) == ["what is 2 + 3?", "what is 4 + 4?"]
    assert all(len(row["prompt"]) == 1 for row in prepared.train)
    assert prepared.report.sources[0].format == "prompt"
    with pytest.raises(UserError) as missing:
        prepare(tmp_path / "m", rows, method="grpo", section={**section, "prompt_column": "question"})
    assert (
        "grpo.prompt_column names column 'question', which this source does not have (its columns: messages,"
        " problem, solution); name one of them, or unset it to detect the format"
    ) in str(missing.value)


def test_prompts_that_leave_no_room_for_the_completion_are_dropped(tmp_path):
    rows = [{"prompt": "add " + "one and " * n + "two", "answer": "3"} for n in (0, 2, 40, 60)]
    section = {**REWARDS, "max_length": 64, "max_completion_length": 16}
    prepared, tokenizer = prepare(tmp_path, rows, method="grpo", section=section)
    lengths = [
        len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"])
        for r in rows
    ]  # fmt: skip
    kept = [r["prompt"] for r, n in zip(rows, lengths, strict=True) if n <= 64 - 16]
    assert 0 < len(kept) < len(rows)  # the rows straddle the budget
    assert [row["prompt"][-1]["content"] for row in prepared.train] == kept
    assert prepared.report.sources[0].dropped == len(rows) - len(kept)
    with pytest.raises(
        ValueError, match=r"\[max_completion_length\] \(64\) leaves no room for a prompt within max_length"
    ):
        GrpoSection(max_length=64, max_completion_length=64)


def test_the_cache_key_follows_the_reward_columns(tmp_path):
    from alignkit.data.prepare import prepare_data

    first, tokenizer = prepare(tmp_path, [{"prompt": "hi", "answer": "5", "solution": "6"}], "grpo", REWARDS)
    path = first.report.sources[0].path

    def again(rewards):
        recipe = GRPO.recipe.model_validate(
            {"model": {"name_or_path": "tiny"}, "data": {"datasets": [{"path": path}]}, "grpo": {"rewards": rewards}}
        )
        return prepare_data(recipe, tokenizer)

    reweighted = again([{"exact_match": "answer", "weight": 2}, {"regex": "x"}])
    assert reweighted.report.cached and reweighted.report.fingerprint == first.report.fingerprint
    other = again([{"exact_match": "solution"}])
    assert not other.report.cached and other.train.column_names == ["prompt", "solution"]


def test_a_prompt_needs_a_user_turn(tmp_path):
    with pytest.raises(UserError, match="leaves no user turn"):
        prepare(tmp_path / "bad", [{"prompt": [{"role": "assistant", "content": "x"}], "answer": "1"}], "grpo", REWARDS)


# End to end on the tiny Llama.


@pytest.mark.slow
def test_grpo_trains_logs_rewards_and_never_clobbers(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, tiny_model_dir, out)
    result = cli("grpo", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert "grpo data: 4 train rows, 0 test rows" in result.output.splitlines()
    assert "step 2/2 loss " in result.output and " reward " in result.output and "mean_length" in result.output
    for name in ("alignkit_recipe.yaml", "alignkit_run.json", "model.safetensors", "README.md", "training_curves.png"):
        assert (out / name).is_file(), name
    info = json.loads((out / "alignkit_run.json").read_text())
    assert info["finished"] is True and info["method"] == "grpo"
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in logged if "reward" in entry]
    assert len(steps) == 2
    for key in ("reward_std", "rewards/exact_match:answer/mean", "rewards/regex/mean", "completions/mean_length"):
        assert key in steps[0], sorted(steps[0])
    assert all(entry["completions/max_length"] <= 6 for entry in steps)
    card = (out / "README.md").read_text()
    assert (
        "Group Relative Policy Optimization (GRPO)" in card and "| rewards | exact_match:answer, regex x 0.5 |" in card
    )

    again = cli("grpo", "--recipe", recipe)
    assert again.exit_code == 2
    assert f"error: {out}: holds a finished grpo run" in again.stderr and "Pass --overwrite" in again.stderr


@pytest.mark.slow
def test_a_killed_grpo_run_resumes(cli, tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from alignkit.launch.plan import LaunchOptions, plan_launch
    from alignkit.launch.start import freeze
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.train.worker import train

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash")

    out = tmp_path / "killed"
    save = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    recipe = _recipe(tmp_path, tiny_model_dir, out, training=save)
    resolved = resolve_recipe("grpo", str(recipe))
    freeze(resolved, plan_launch(resolved.recipe, LaunchOptions(launch="none")), ["alignkit"], previous=None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(out, callbacks=[Crash()])
    assert (out / "checkpoint-2").is_dir()
    resumed = cli("grpo", "--recipe", recipe)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from checkpoint-2" in resumed.output
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_a_missing_reward_column_is_refused_through_the_cli_before_any_weights_load(
    cli, tiny_model_dir, tmp_path, monkeypatch
):
    import alignkit.train.factory as factory

    def no_weights(*args, **kwargs):
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr(factory, "load_model", no_weights)
    out = tmp_path / "refused"
    recipe = _recipe(tmp_path, tiny_model_dir, out, grpo={"rewards": [{"exact_match": "solution"}]})
    result = cli("grpo", "--recipe", recipe)
    assert result.exit_code == 2, result.output
    assert "grpo.rewards.0.exact_match: reads the column 'solution'" in result.output
    assert "(its columns: prompt, answer)" in result.output
