"""Parity: alignkit's losses (SFT, DPO, reward modelling, GRPO, RLOO, ...) equal those of a plain TRL trainer
given the same model, data, seed and settings, so the wrapper adds no hidden divergence.

Each step's batch is the whole (small) dataset, which makes the loss independent of row order: the data
layer may shuffle the mixture, TRL's sampler does its own, and the comparison still holds exactly.

DPO is compared on plain-text pairs. For conversational pairs alignkit deliberately differs from TRL: it ends
each rendered response at the end-of-turn token, where TRL's conversational path also trains on the
newline the template writes after it (and TRL's plain-text path would then append a second end token).

GRPO and RLOO are compared on conversational prompts, and TRL gets the rows in the order alignkit's data layer hands
them to its trainer: alignkit shuffles the pooled rows with the seed, and each sampled completion depends on
where its prompt sits in the generation batch (which random draws it gets), so the same rows in the file's
order would generate other completions. Both sides then log the same figures to the last bit.
"""

from __future__ import annotations

import json
import re

import pytest
from test_train import CHAT, _jsonl, write_recipe

pytestmark = pytest.mark.slow

STEPS = 3


def _alignkit_losses(cli, recipe, out) -> list[float]:
    result = cli(*recipe)
    assert result.exit_code == 0, result.output
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [row["loss"] for row in history if "loss" in row]


def _assert_same_losses(ours: list[float], trainer, *, falling: bool) -> None:
    """Train the plain TRL trainer and compare its logged losses with alignkit's, step by step."""
    trainer.train()
    theirs = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(ours) == len(theirs) == STEPS
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    if falling:
        assert ours[-1] < ours[0]


def _trl_kwargs(out) -> dict:
    return {
        "output_dir": str(out),
        "learning_rate": 1e-2,
        "max_steps": STEPS,
        "per_device_train_batch_size": len(CHAT),
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "seed": 0,
        "data_seed": 0,
        # alignkit's default optimizer (the Alignment Handbook's); transformers 5 defaults to the fused AdamW,
        # whose updates can differ in the last bit.
        "optim": "adamw_torch",
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "max_length": 48,
        "disable_tqdm": True,
    }


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _jsonl(
        folder / "sft.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHAT],
    )
    _jsonl(
        folder / "dpo.jsonl",
        [{"prompt": f"question: {q} answer:", "chosen": f" {a}", "rejected": " no bad wrong"} for q, a in CHAT],
    )
    return folder


def test_sft_loss_matches_plain_trl(cli, tiny_model_dir, data, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    out = tmp_path / "alignkit-sft"
    training = {"max_steps": STEPS, "per_device_train_batch_size": len(CHAT)}
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data, out, training=training)
    ours = _alignkit_losses(cli, ("sft", "--recipe", recipe), out)

    set_seed(0)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(**_trl_kwargs(tmp_path / "trl-sft")),
        train_dataset=load_dataset("json", data_files=str(data / "sft.jsonl"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    _assert_same_losses(ours, trainer, falling=True)


def test_dpo_loss_matches_plain_trl(cli, tiny_model_dir, data, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "alignkit-dpo"
    training = {"max_steps": STEPS, "per_device_train_batch_size": len(CHAT)}
    recipe = write_recipe(
        tmp_path, "dpo", tiny_model_dir, data, out, training=training, dpo={"max_prompt_length": None}
    )
    ours = _alignkit_losses(cli, ("dpo", "--recipe", recipe), out)

    set_seed(0)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=DPOConfig(**_trl_kwargs(tmp_path / "trl-dpo"), beta=0.1),
        train_dataset=load_dataset("json", data_files=str(data / "dpo.jsonl"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    _assert_same_losses(ours, trainer, falling=False)


def test_simpo_loss_matches_plain_trl_cpo(cli, tiny_model_dir, data, tmp_path):
    """SimPO through alignkit equals TRL's CPOTrainer with loss_type simpo (no reference model on either side)."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    out = tmp_path / "alignkit-simpo"
    training = {"max_steps": STEPS, "per_device_train_batch_size": len(CHAT)}
    section = {"max_prompt_length": None, "beta": 2.0, "simpo_gamma": 1.2, "cpo_alpha": 0.0}
    recipe = write_recipe(tmp_path, "simpo", tiny_model_dir, data, out, training=training, simpo=section)
    ours = _alignkit_losses(cli, ("simpo", "--recipe", recipe), out)

    set_seed(0)
    config = CPOConfig(
        **_trl_kwargs(tmp_path / "trl-simpo"), loss_type="simpo", beta=2.0, simpo_gamma=1.2, cpo_alpha=0.0
    )
    trainer = CPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=config,
        train_dataset=load_dataset("json", data_files=str(data / "dpo.jsonl"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    _assert_same_losses(ours, trainer, falling=True)


# One prompt for every row: KTO's KL estimate pairs each prompt with the completion of the row before it in
# the batch, and with a single prompt that set of pairs is the same in any row order (alignkit shuffles the
# rows, TRL keeps the file's order), so the whole-batch loss can be compared exactly.
KTO_PROMPT = "question: what is the answer? answer:"


@pytest.mark.parametrize("layout", ["unpaired", "pairs"])
def test_kto_loss_matches_plain_trl(cli, tiny_model_dir, tmp_path, layout):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import KTOConfig, KTOTrainer

    folder = tmp_path / "data"
    folder.mkdir()
    if layout == "unpaired":
        rows = [{"prompt": KTO_PROMPT, "completion": f" {a}", "label": n % 2 == 0} for n, (_, a) in enumerate(CHAT)]
    else:  # KTOTrainer splits the pairs itself; alignkit's data layer does it before
        rows = [{"prompt": KTO_PROMPT, "chosen": f" {a}", "rejected": f" not {a}"} for _, a in CHAT]
    _jsonl(folder / "kto.jsonl", rows)
    batch = len(CHAT) * (2 if layout == "pairs" else 1)  # the whole data set in each step
    out = tmp_path / "alignkit-kto"
    training = {"max_steps": STEPS, "per_device_train_batch_size": batch}
    section = {"max_prompt_length": None, "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    recipe = write_recipe(tmp_path, "kto", tiny_model_dir, folder, out, training=training, kto=section)
    ours = _alignkit_losses(cli, ("kto", "--recipe", recipe), out)

    set_seed(0)
    kwargs = {**_trl_kwargs(tmp_path / "trl-kto"), "per_device_train_batch_size": batch}
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=KTOConfig(**kwargs, beta=0.1, loss_type="kto"),
        train_dataset=load_dataset("json", data_files=str(folder / "kto.jsonl"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    _assert_same_losses(ours, trainer, falling=True)


def test_rm_loss_matches_plain_trl_reward_trainer(cli, tiny_model_dir, data, tmp_path):
    """A reward model through alignkit equals TRL's RewardTrainer on the same sequence classifier: the new score
    head is drawn from the same seed on both sides, and the plain-text pairs are tokenized alike."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    out = tmp_path / "alignkit-rm"
    training = {"max_steps": STEPS, "per_device_train_batch_size": len(CHAT)}
    section = {"max_prompt_length": None, "center_rewards_coefficient": 0.01}
    recipe = write_recipe(tmp_path, "rm", tiny_model_dir, data, out, training=training, rm=section)
    ours = _alignkit_losses(cli, ("rm", "--recipe", recipe), out)

    set_seed(0)
    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1),
        args=RewardConfig(**_trl_kwargs(tmp_path / "trl-rm"), center_rewards_coefficient=0.01),
        train_dataset=load_dataset("json", data_files=str(data / "dpo.jsonl"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    _assert_same_losses(ours, trainer, falling=True)


# GRPO: four prompts, each sampled GROUP times, so every step generates for the whole set.
GRPO_PROMPTS = [("what is 2 + 3?", "5"), ("what is 4 + 4?", "8"), ("red or blue?", "blue"), ("hello", "hello world")]
GROUP = 4
GRPO_STEPS = 4
# Each step's loss and rewards, and what depends on the weights: the gradient, the policy's entropy over the
# completions, their lengths, and the KL to the reference model where there is one.
GRPO_LOGGED = ("loss", "reward", "reward_std", "grad_norm", "entropy", "completions/mean_length", "kl")
GRPO_SETTINGS = {
    # alignkit's recipe gives none of these: its defaults must be what TRL is given.
    "defaults": {"loss_type": "dapo", "beta": 0.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "epsilon": 0.2},
    # A reference model for the KL term, two passes over each generated batch (a ratio other than 1),
    # clip-higher, advantages scaled across the batch, filtered sampling.
    "tuned": {
        "loss_type": "grpo",
        "beta": 0.1,
        "num_iterations": 2,
        "epsilon_high": 0.28,
        "scale_rewards": "batch",
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
    },
}


def answer_letters(completions, answer, **_):
    """The share of the reference answer's characters the completion uses: a reward that varies by prompt.

    A `python` reward of alignkit's recipe, and the same function handed to plain TRL."""
    wanted = [set(str(a)) for a in answer]
    return [len(letters & set(c[0]["content"])) / len(letters) for c, letters in zip(completions, wanted, strict=True)]


def _exact(completions, answer, **_):
    pairs = zip(completions, answer, strict=True)
    return [float(c[0]["content"].strip().casefold() == str(a).casefold()) for c, a in pairs]


def _digit(completions, **_):
    return [float(re.search(r"\d", c[0]["content"]) is not None) for c in completions]


def _in_alignkit_order(recipe, tiny_model_dir, path, method: str = "grpo"):
    """The file's rows in the order alignkit's data layer hands them to its trainer (its cached preparation)."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from alignkit.data.prepare import prepare_data
    from alignkit.recipe.resolve import resolve_recipe

    rows = load_dataset("json", data_files=str(path), split="train")
    prepared = prepare_data(resolve_recipe(method, str(recipe)).recipe, AutoTokenizer.from_pretrained(tiny_model_dir))
    # list.index also checks that alignkit kept every prompt and answer as the file has them.
    return rows.select([rows.to_list().index(row) for row in prepared.train])


def _grpo_log(history: list[dict]) -> list[dict]:
    return [{key: row[key] for key in GRPO_LOGGED if key in row} for row in history if "loss" in row]


# RLOO: the same prompts and rewards; RLOOConfig's defaults (beta 0.05, so a reference model) and a tuned set.
RLOO_SETTINGS = {
    "defaults": {"beta": 0.05, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "epsilon": 0.2},
    "tuned": {
        "beta": 0.0,
        "num_iterations": 2,
        "normalize_advantages": True,
        "reward_clip_range": [-0.5, 1.5],
        "temperature": 0.7,
        "top_k": 20,
    },
}


ONLINE_CASES = [("grpo", name) for name in GRPO_SETTINGS] + [("rloo", name) for name in RLOO_SETTINGS]
TRL_CLASSES = {"grpo": ("GRPOConfig", "GRPOTrainer"), "rloo": ("RLOOConfig", "RLOOTrainer")}


@pytest.mark.parametrize(("method", "name"), ONLINE_CASES)
def test_online_loss_and_rewards_match_plain_trl(cli, tiny_model_dir, tmp_path, method, name):
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    settings = {"grpo": GRPO_SETTINGS, "rloo": RLOO_SETTINGS}[method][name]
    path = _jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in GRPO_PROMPTS]
    )
    out = tmp_path / f"alignkit-{method}"
    batch = len(GRPO_PROMPTS) * GROUP
    rewards = [
        {"exact_match": "answer"},
        {"regex": r"\d", "weight": 0.5},
        {"python": "test_parity:answer_letters", "weight": 2},
    ]
    section = {"num_generations": GROUP, "max_completion_length": 8, "rewards": rewards}
    recipe = write_recipe(
        tmp_path,
        method,
        tiny_model_dir,
        tmp_path,
        out,
        training={"max_steps": GRPO_STEPS, "per_device_train_batch_size": batch},
        **{method: section if name == "defaults" else {**section, **settings}},
    )
    result = cli(method, "--recipe", recipe)
    assert result.exit_code == 0, result.output
    ours = _grpo_log(json.loads((out / "trainer_state.json").read_text())["log_history"])

    set_seed(0)
    config_class, trainer_class = (getattr(trl, name) for name in TRL_CLASSES[method])
    kwargs = {key: value for key, value in _trl_kwargs(tmp_path / f"trl-{method}").items() if key != "max_length"}
    # A YAML list in the recipe; RLOOConfig takes the range as a tuple.
    plain = {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
    config = config_class(
        **kwargs | {"max_steps": GRPO_STEPS, "per_device_train_batch_size": batch},
        **plain,
        num_generations=GROUP,
        max_completion_length=8,
        reward_weights=[1.0, 0.5, 2.0],
    )
    trainer = trainer_class(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=config,
        reward_funcs=[_exact, _digit, answer_letters],
        train_dataset=_in_alignkit_order(recipe, tiny_model_dir, path, method),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    trainer.train()
    theirs = _grpo_log(trainer.state.log_history)
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True), 1):
        print(f"{method} {name} step {step}: alignkit {mine} | trl {reference}")
    assert len(ours) == GRPO_STEPS
    assert ours == theirs
    # The comparison means something: rewards differ within the groups, so the policy gets a gradient (with
    # num_iterations 2 every other step reuses the last generated batch and logs no rewards of its own).
    assert all(row["grad_norm"] > 0 and row.get("reward_std", 1) > 0 for row in ours)
