"""orpo: Odds-Ratio Preference Optimization with TRL's ORPOTrainer (`trl.experimental.orpo`): SFT and
preference in one loss, no reference model.

Rows arrive as rendered strings like dpo's; ORPOTrainer tokenizes without special tokens and puts BOS before
a prompt that does not start with one, which the data layer accounts for when it cuts prompts.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from alignkit.methods.dpo import PREFERENCE_METRICS, PREFERENCE_PANELS, pair_data
from alignkit.methods.method import Method, imported
from alignkit.recipe.bounds import TokenLength
from alignkit.recipe.sections import Section, check_prompt_length
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# ORPOConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "beta",
        "dataset_num_proc",
        "disable_dropout",
        "generate_during_eval",
        "is_encoder_decoder",
        "max_completion_length",
        "max_length",
        "model_init_kwargs",
        "padding_value",
        "trust_remote_code",
    }
)


class OrpoSection(Section):
    """Odds-Ratio Preference Optimization: SFT and preference in one loss, no reference model."""

    beta: float = Field(0.1, gt=0)
    max_length: TokenLength = 1024
    max_prompt_length: TokenLength | None = 512

    @model_validator(mode="after")
    def _lengths(self) -> OrpoSection:
        check_prompt_length(self.max_prompt_length, self.max_length)
        return self


def _trl_settings(section: OrpoSection) -> dict[str, Any]:
    completion = section.max_length - (section.max_prompt_length or 0)
    return {
        "beta": section.beta,
        "max_length": section.max_length,
        "max_completion_length": completion if section.max_prompt_length else None,
    }


def _card_rows(section: OrpoSection) -> list[tuple[str, str]]:
    return [("beta", f"{section.beta:g}"), ("max length", str(section.max_length))]


METHOD = Method(
    name="orpo",
    title="Odds-Ratio Preference Optimization (ORPO)",
    section=OrpoSection,
    default_learning_rate=1.0e-6,
    qlora_training={"learning_rate": 5.0e-6, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
    trl_fields=TRL_FIELDS,
    trl_config=imported("trl.experimental.orpo", "ORPOConfig"),
    trl_settings=_trl_settings,
    trainer=imported("trl.experimental.orpo", "ORPOTrainer"),
    data=pair_data(trainer_adds_bos="unless_present"),
    card_rows=_card_rows,
    defining_keys=frozenset({"beta", "max_prompt_length"}),
    flat_key_reasons={"max_seq_length": "its length limit is max_length"},
    progress_metrics=PREFERENCE_METRICS,
    curve_panels=(*PREFERENCE_PANELS, ("log odds ratio", ("log_odds_ratio",))),
)
