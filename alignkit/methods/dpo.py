"""dpo: Direct Preference Optimization on chosen/rejected pairs with TRL's DPOTrainer, IPO, APO and the other
losses TRL implements included (several at once, with weights).

Rows arrive as rendered strings (prompt, chosen, rejected); the trainer tokenizes them with the tokenizer's
own special tokens. The prompt is cut from the left to max_prompt_length by the data layer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alignkit.data import formats
from alignkit.methods.method import PAIR_ROWS, DataNeeds, Method, imported
from alignkit.recipe.bounds import TokenLength, within
from alignkit.recipe.sections import Section, check_prompt_length
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# The loss_type values of TRL 1.16's DPOConfig (a test compares them with the installed TRL).
DpoLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]

# DPOConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "activation_offloading",
        "beta",
        "dataset_num_proc",
        "disable_dropout",
        "discopop_tau",
        "f_alpha_divergence_coef",
        "f_divergence_type",
        "label_smoothing",
        "ld_alpha",
        "loss_type",
        "loss_weights",
        "max_length",
        "model_init_kwargs",
        "pad_to_multiple_of",
        "pad_token",
        "padding_free",
        "precompute_ref_batch_size",
        "precompute_ref_log_probs",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
        "router_aux_loss_coef",
        "sync_ref_model",
        "truncation_mode",
        "trust_remote_code",
        "use_weighting",
    }
)


_BATCH_LOSSES = {"aot", "aot_unpaired"}
"""Losses that sort the log-ratios of the whole batch: split into micro-batches, they would compare fewer rows."""


class DpoSection(Section):
    """Direct Preference Optimization and its loss variants."""

    beta: float = Field(0.1, gt=0)
    loss_type: DpoLoss | list[DpoLoss] = "sigmoid"
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    max_length: TokenLength = 1024
    max_prompt_length: TokenLength | None = 512
    """Prompts longer than this are cut from the left before the pair is truncated to max_length."""
    precompute_ref_log_probs: bool | None = None
    """Compute the reference model's log-probs once before training, cached on disk. Unset: on."""
    precompute_ref_batch_size: within(1, 65536) | None = None
    """Pairs per batch of that reference pass. Unset: 1 on a CPU, TRL's default (the per-device batch) on a GPU."""
    padding_free: bool = False

    @model_validator(mode="after")
    def _lengths(self) -> DpoSection:
        check_prompt_length(self.max_prompt_length, self.max_length)
        if self.loss_weights is not None and len(self.loss_weights) != len(self.losses):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(self.losses)} loss types")
        return self

    @property
    def losses(self) -> list[str]:
        return self.loss_type if isinstance(self.loss_type, list) else [self.loss_type]


def _trl_settings(section: DpoSection) -> dict[str, Any]:
    return {
        "beta": section.beta,
        "loss_type": section.losses,
        "loss_weights": section.loss_weights,
        "label_smoothing": section.label_smoothing,
        "max_length": section.max_length,
        "precompute_ref_log_probs": section.precompute_ref_log_probs,
        "precompute_ref_batch_size": section.precompute_ref_batch_size,
        "padding_free": section.padding_free,
    }


def _automatic(section: DpoSection, facts) -> list:
    return [
        cached_reference(
            section.precompute_ref_log_probs,
            "dpo",
            " (keyed by the data and the reference weights), so reruns, resumed runs and scan arms reuse them",
        ),
        reference_batch(section.precompute_ref_batch_size, "dpo", facts),
    ]


def cached_reference(chosen: bool | None, section_name: str, reused: str):
    """The automatic `precompute_ref_log_probs` of the methods with a frozen reference model; `reused` says
    what the cache is keyed by and which runs reuse it."""
    from alignkit.recipe.automatic import Setting

    path = f"{section_name}.precompute_ref_log_probs"
    if chosen is not None:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    return Setting(
        path,
        True,
        f"the reference model runs once over the data, not once per step, and its log-probs are cached on disk{reused}",
    )


def reference_batch(chosen: int | None, section_name: str, facts):
    """The automatic `precompute_ref_batch_size`: how many pairs the reference pass runs together."""
    from alignkit.recipe.automatic import Setting

    path = f"{section_name}.precompute_ref_batch_size"
    if chosen is not None:
        return Setting(path, chosen, "set in the recipe", automatic=False)
    if facts.device == "cpu":
        # TRL runs that pass in dataset order, so a batch mixes lengths; measured on the reference workload's dpo
        # (benchmarks/RESULTS.md): about 45 s with batches of 8, 27 s one pair at a time.
        reason = "the pass runs the pairs in dataset order, so batches of mixed lengths compute padding; one pair"
        return Setting(path, 1, reason + " at a time computes none, and a CPU gains little from batching rows")
    return Setting(path, None, "a GPU computes a batch of pairs at once: TRL's default, the per-device batch size")


# What of a DPOConfig changes TRL's tokenized rows or the reference log-probs computed from them.
_REFERENCE_FIELDS = ("max_length", "truncation_mode", "pad_to_multiple_of", "ld_alpha", "bf16", "fp16")


def _config_class() -> type:
    """TRL's DPOConfig, with `datasets` told to fingerprint it by `_REFERENCE_FIELDS` alone.

    DPOTrainer keys its cache of reference log-probs by the tokenized data's fingerprint, and its tokenizing
    step hashes the whole config (a filter closes over it), so any other setting (beta, the output folder, the
    logging) would miss the cache. Fingerprinted by what changes the rows and the log-probs, a rerun, a resumed
    run and every arm of a scan over beta or the loss find the log-probs the first run wrote.
    """
    from datasets.utils._dill import pklregister
    from trl import DPOConfig

    @pklregister(DPOConfig)
    def _fingerprint(pickler, config) -> None:
        pickler.save(("DPOConfig", *(getattr(config, name, None) for name in _REFERENCE_FIELDS)))

    return DPOConfig


def _pair_length(counts):
    import numpy

    return counts["prompt_ids"] + numpy.maximum(counts["chosen_ids"], counts["rejected_ids"])


def _text_lengths(rows, tokenizer) -> list[int]:
    """The padded length each prepared pair (rendered prompt, chosen, rejected) will take, before TRL tokenizes."""

    def counts(column: str) -> list[int]:
        return [len(ids) for ids in tokenizer(list(rows[column]), add_special_tokens=False)["input_ids"]]

    prompts, chosen, rejected = counts("prompt"), counts("chosen"), counts("rejected")
    return [p + max(c, r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]


def _card_rows(section: DpoSection) -> list[tuple[str, str]]:
    return [("beta / loss", f"{section.beta:g} / {', '.join(section.losses)}"), ("max length", str(section.max_length))]


def pair_data(**needs: Any) -> DataNeeds:
    """What the preference-pair methods read: every preference layout, as rendered (prompt, chosen, rejected)
    strings, cut to the section's max_length and max_prompt_length; `needs` says how their trainer differs."""
    return DataNeeds(
        formats=(formats.PREFERENCE, formats.PREFERENCE_IMPLICIT),
        rows=PAIR_ROWS,
        row_fields=("max_length", "max_prompt_length"),
        **needs,
    )


PREFERENCE_METRICS = ("rewards/accuracies", "rewards/margins")
PREFERENCE_PANELS = (
    ("rewards", ("rewards/chosen", "rewards/rejected")),
    ("reward margin", ("rewards/margins",)),
    ("preference accuracy", ("rewards/accuracies", "eval_rewards/accuracies")),
)

METHOD = Method(
    name="dpo",
    title="Direct Preference Optimization (DPO)",
    section=DpoSection,
    default_learning_rate=1.0e-6,
    # The handbook's zephyr-7b-beta QLoRA DPO recipe (one GPU).
    qlora_training={"learning_rate": 5.0e-6, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
    trl_fields=TRL_FIELDS,
    trl_config=_config_class,
    trl_settings=_trl_settings,
    trainer=imported("trl", "DPOTrainer"),
    # DPOTrainer encodes the prompt with the tokenizer's special tokens.
    data=pair_data(trainer_adds_bos="on_encode"),
    card_rows=_card_rows,
    # Measured on the reference workload: length-grouped batches left the final DPO loss 3-8% above TRL's in
    # each of three seeds (every step's gradient norm was above 1 and clipped); split batches keep TRL's steps.
    splits_by_length=lambda section: not section.padding_free and not set(section.losses) & _BATCH_LOSSES,
    text_lengths=_text_lengths,
    batch_length=_pair_length,
    automatic=_automatic,
    # The reference log-probs, once precomputed, replace the reference model.
    reference_model=lambda section: not section.precompute_ref_log_probs,
    defining_keys=frozenset({"beta", "loss_type", "loss_weights", "max_prompt_length", "precompute_ref_log_probs"}),
    # DPO never had max_seq_length; the handbook's key meant the pair's length limit.
    flat_key_reasons={"max_seq_length": "its length limit is max_length"},
    progress_metrics=PREFERENCE_METRICS,
    curve_panels=PREFERENCE_PANELS,
)
