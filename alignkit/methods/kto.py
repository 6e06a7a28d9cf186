"""kto: Kahneman-Tversky Optimization with TRL's KTOTrainer, on completions labelled desirable or undesirable.

Each row is one prompt and one completion with a boolean label; preference pairs are split into a desirable
row (chosen) and an undesirable one (rejected) by the data layer (`alignkit.data.unpaired`). The loss pushes a
desirable completion's reward (beta times its log-ratio to the reference model) above a reference point, an
undesirable one's below it; the reference point is a KL estimate made from mismatched prompt/completion rows of
the same per-device batch, so a per-device batch of 1 is refused. `apo_zero_unpaired` drops the KL term.
Rows arrive as rendered strings; KTOTrainer tokenizes them with the tokenizer's own special tokens (as DPO).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignkit.data import formats
from alignkit.methods.dpo import cached_reference
from alignkit.methods.method import UNPAIRED_ROWS, DataNeeds, Method, imported
from alignkit.recipe.bounds import TokenLength
from alignkit.recipe.sections import Section, at, check_prompt_length
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# KTOConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "activation_offloading",
        "beta",
        "dataset_num_proc",
        "desirable_weight",
        "disable_dropout",
        "loss_type",
        "max_length",
        "model_init_kwargs",
        "pad_to_multiple_of",
        "precompute_ref_batch_size",
        "precompute_ref_log_probs",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
        "router_aux_loss_coef",
        "sync_ref_model",
        "trust_remote_code",
        "undesirable_weight",
    }
)

BALANCE = (1.0, 4 / 3)
"""The range of desirable_weight * desirable rows : undesirable_weight * undesirable rows the KTO paper asks for."""


class KtoSection(Section):
    """Kahneman-Tversky Optimization: desirable and undesirable completions, no pairs needed."""

    beta: float = Field(0.1, gt=0)
    """How far the model may move from the reference model (higher: less far)."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the KTO paper's loss with its KL reference point; apo_zero_unpaired: APO-zero, no KL term."""
    desirable_weight: float = Field(1.0, gt=0)
    """Weight of the desirable rows' losses; with undesirable_weight, balances unequal numbers of rows."""
    undesirable_weight: float = Field(1.0, gt=0)
    """Weight of the undesirable rows' losses."""
    max_length: TokenLength = 1024
    """Prompt and completion together; longer rows are cut from the right by the trainer."""
    max_prompt_length: TokenLength | None = 512
    """Prompts longer than this are cut from the left by the data layer (KTOConfig has no such field)."""
    precompute_ref_log_probs: bool | None = None
    """Compute the reference model's log-probs (the KL term's too) once before training, cached on disk.
    Unset: on."""

    @model_validator(mode="after")
    def _lengths(self) -> KtoSection:
        check_prompt_length(self.max_prompt_length, self.max_length)
        return self


def _trl_settings(section: KtoSection) -> dict[str, Any]:
    settings = {
        "beta": section.beta,
        "loss_type": section.loss_type,
        "desirable_weight": section.desirable_weight,
        "undesirable_weight": section.undesirable_weight,
        "max_length": section.max_length,
        "precompute_ref_log_probs": section.precompute_ref_log_probs,
    }
    if _fixed_order(section):
        # Set here rather than refused in the recipe: a frozen recipe spells out the training section's default.
        settings["train_sampling_strategy"] = "sequential"
    return settings


def _automatic(section: KtoSection, facts) -> list:
    # The KL term's partner rows are part of that pass; TRL keys the cache by the whole config, so only a rerun
    # or resumed run with the same settings finds it (dpo's narrower key lets scan arms share it too).
    reused = ", with the KL term's; a rerun or a resumed run with the same settings reuses them"
    return [cached_reference(section.precompute_ref_log_probs, "kto", reused)]


def _fixed_order(section: KtoSection) -> str | None:
    if section.loss_type != "kto":
        return None  # apo_zero_unpaired has no KL term
    return (
        "TRL's kto trainer estimates its KL term by pairing each row with its batch neighbours in dataset order,"
        " so it reads the rows in order; the data layer has already shuffled them (data.seed)"
    )


def _recipe_rules(recipe) -> None:
    """Refuse what KTOTrainer would refuse only once the model is loaded."""
    section, training = recipe.section, recipe.training
    if section.loss_type != "kto":
        return  # apo_zero_unpaired has no KL term
    if training.per_device_train_batch_size < 2:
        raise ValueError(
            at(
                "training.per_device_train_batch_size",
                "is 1, but KTO estimates its KL reference point from the other rows of each device's batch; set"
                " it to 2 or more (lower gradient_accumulation_steps to keep the effective batch), or set"
                " kto.loss_type to apo_zero_unpaired, which has no KL term",
            )
        )


def _data_notices(section: KtoSection, report) -> list[str]:
    """Whether the weighted ratio of desirable to undesirable rows is in the paper's range, and the fix if not."""
    good, bad = report.desirable_rows, report.undesirable_rows
    if not good or not bad:
        if not good + bad:
            return []
        kind, other = ("desirable", "undesirable (label false)") if good else ("undesirable", "desirable (label true)")
        return [f"all {good + bad} training rows are {kind}, so no weight can balance the two kinds; add {other} rows"]
    weighted_good, weighted_bad = section.desirable_weight * good, section.undesirable_weight * bad
    ratio = weighted_good / weighted_bad
    low, high = BALANCE
    if low <= ratio <= high:
        return []
    if ratio < low:  # the desirable side is too light: raise its weight, or lower the other one
        first = ("desirable_weight", weighted_bad / good * low, weighted_bad / good * high)
        second = ("undesirable_weight", weighted_good / bad / high, weighted_good / bad / low)
    else:
        first = ("undesirable_weight", weighted_good / bad / high, weighted_good / bad / low)
        second = ("desirable_weight", weighted_bad / good * low, weighted_bad / good * high)
    return [
        f"the weighted ratio of desirable to undesirable rows, desirable_weight {section.desirable_weight:g} x"
        f" {good} : undesirable_weight {section.undesirable_weight:g} x {bad}, is {ratio:.3g}:1, outside the 1:1 to"
        f" 4:3 KTO asks for; set {_fix(*first)}, or else {_fix(*second)}"
    ]


def _fix(field: str, low: float, high: float) -> str:
    # The middle of the range, to three significant digits, stays inside it (the range is a third wide).
    return f"kto.{field} to {(low + high) / 2:.3g} (anything from {low:.3g} to {high:.3g})"


def _card_rows(section: KtoSection) -> list[tuple[str, str]]:
    return [
        ("beta / loss", f"{section.beta:g} / {section.loss_type}"),
        ("desirable / undesirable weight", f"{section.desirable_weight:g} / {section.undesirable_weight:g}"),
        ("max length", str(section.max_length)),
    ]


METHOD = Method(
    name="kto",
    title="Kahneman-Tversky Optimization (KTO)",
    section=KtoSection,
    # TRL's KTO guidance: 5e-7 to 5e-6 with beta 0.1.
    default_learning_rate=5.0e-7,
    # The handbook's QLoRA preference values (zephyr-7b-beta DPO), inside KTO's range; the batch is above 1.
    qlora_training={"learning_rate": 5.0e-6, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
    trl_fields=TRL_FIELDS,
    trl_config=imported("trl", "KTOConfig"),
    trl_settings=_trl_settings,
    fixed_order=_fixed_order,
    automatic=_automatic,
    trainer=imported("trl", "KTOTrainer"),
    data=DataNeeds(
        formats=(formats.UNPAIRED, formats.PREFERENCE, formats.PREFERENCE_IMPLICIT),
        rows=UNPAIRED_ROWS,
        row_fields=("max_length", "max_prompt_length"),
        # KTOTrainer encodes the prompt with the tokenizer's special tokens.
        trainer_adds_bos="on_encode",
    ),
    card_rows=_card_rows,
    defining_keys=frozenset({"desirable_weight", "undesirable_weight"}),
    flat_key_reasons={"max_seq_length": "its length limit is max_length"},
    progress_metrics=("kl", "rewards/chosen", "rewards/rejected"),
    curve_panels=(
        ("rewards (desirable / undesirable)", ("rewards/chosen", "rewards/rejected")),
        ("reward margin", ("rewards/margins",)),
        ("KL estimate", ("kl", "eval_kl")),
    ),
    recipe_rules=_recipe_rules,
    data_notices=_data_notices,
    # The reference log-probs, once precomputed, replace the reference model.
    reference_model=lambda section: not section.precompute_ref_log_probs,
)
