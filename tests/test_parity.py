"""Parity: alignkit's SFT and DPO losses equal those of a plain TRL trainer given the same model, data, seed
and settings, so the wrapper adds no hidden divergence.

Each step's batch is the whole (small) dataset, which makes the loss independent of row order: the data
layer may shuffle the mixture, TRL's sampler does its own, and the comparison still holds exactly.

DPO is compared on plain-text pairs. For conversational pairs alignkit deliberately differs from TRL: it ends
each rendered response at the end-of-turn token, where TRL's conversational path also trains on the
newline the template writes after it (and TRL's plain-text path would then append a second end token).
"""

from __future__ import annotations

import json

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
