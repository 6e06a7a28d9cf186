"""simpo: Simple Preference Optimization, reference-free, through TRL's CPOTrainer (`trl.experimental.cpo`)
with `loss_type="simpo"`.

The reward is the length-normalised log-likelihood scaled by `beta`, and the loss asks the chosen reward to
beat the rejected one by the margin `simpo_gamma`; `cpo_alpha` adds CPO's NLL term on the chosen response
(0 is pure SimPO, above 0 is CPO-SimPO). No reference model is loaded. Rows are rendered pairs like dpo's;
CPOTrainer tokenizes them without special tokens and puts BOS before a prompt that lacks it, as ORPO does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignkit.methods.dpo import PREFERENCE_METRICS, PREFERENCE_PANELS, pair_data
from alignkit.methods.method import Method, imported
from alignkit.recipe.bounds import TokenLength
from alignkit.recipe.sections import Section, check_prompt_length
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# CPOConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "alpha",
        "beta",
        "cpo_alpha",
        "dataset_num_proc",
        "disable_dropout",
        "generate_during_eval",
        "is_encoder_decoder",
        "label_smoothing",
        "loss_type",
        "max_completion_length",
        "max_length",
        "model_init_kwargs",
        "simpo_gamma",
        "trust_remote_code",
    }
)


class SimpoSection(Section):
    """SimPO: a length-normalised, reference-free preference loss with a target reward margin."""

    loss_type: Literal["simpo"] = "simpo"
    """Always simpo (CPOTrainer's other losses are not SimPO); present so a `trl cpo` config converts."""
    beta: float = Field(2.0, gt=0)
    """Scale of the length-normalised reward (the SimPO paper uses 2.0 to 10)."""
    simpo_gamma: float = Field(1.0, ge=0)
    """Target reward margin between chosen and rejected (the paper's gamma; gamma/beta is usually 0.3-0.8)."""
    cpo_alpha: float = Field(0.0, ge=0)
    """Weight of the NLL loss on chosen responses: 0 is pure SimPO, above 0 is CPO-SimPO."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    max_length: TokenLength = 1024
    max_prompt_length: TokenLength | None = 512
    """Prompts longer than this are cut from the left before the pair is truncated to max_length."""

    @model_validator(mode="after")
    def _lengths(self) -> SimpoSection:
        check_prompt_length(self.max_prompt_length, self.max_length)
        return self


def _trl_settings(section: SimpoSection) -> dict[str, Any]:
    completion = section.max_length - (section.max_prompt_length or 0)
    return {
        "loss_type": section.loss_type,
        "beta": section.beta,
        "simpo_gamma": section.simpo_gamma,
        "cpo_alpha": section.cpo_alpha,
        "label_smoothing": section.label_smoothing,
        "max_length": section.max_length,
        "max_completion_length": completion if section.max_prompt_length else None,
    }


def _card_rows(section: SimpoSection) -> list[tuple[str, str]]:
    variant = "SimPO" if section.cpo_alpha == 0 else f"CPO-SimPO (cpo_alpha {section.cpo_alpha:g})"
    return [
        ("beta / gamma", f"{section.beta:g} / {section.simpo_gamma:g} ({variant})"),
        ("max length", str(section.max_length)),
    ]


METHOD = Method(
    name="simpo",
    title="Simple Preference Optimization (SimPO)",
    section=SimpoSection,
    # The SimPO paper's learning rates run from 3e-7 to 1e-6 for 7-8B models.
    default_learning_rate=5.0e-7,
    qlora_training={"learning_rate": 5.0e-6, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
    trl_fields=TRL_FIELDS,
    trl_config=imported("trl.experimental.cpo", "CPOConfig"),
    trl_settings=_trl_settings,
    trainer=imported("trl.experimental.cpo", "CPOTrainer"),
    data=pair_data(trainer_adds_bos="unless_present"),
    card_rows=_card_rows,
    defining_keys=frozenset({"simpo_gamma", "cpo_alpha", "beta", "max_prompt_length"}),
    flat_key_reasons={"max_seq_length": "its length limit is max_length"},
    progress_metrics=PREFERENCE_METRICS,
    curve_panels=PREFERENCE_PANELS,
)
