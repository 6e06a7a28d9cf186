"""sft: supervised fine-tuning on conversations or prompt/completion pairs, with TRL's SFTTrainer.

Rows arrive tokenized with their loss mask (`assistant_masks`), so assistant-only and completion-only loss
work for any chat template; the trainer folds the mask into its labels.
"""

from __future__ import annotations

from typing import Any, Literal

from alignkit.data import formats
from alignkit.methods.method import TOKEN_ROWS, DataNeeds, Method, imported
from alignkit.recipe.bounds import TokenLength
from alignkit.recipe.sections import Section
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

PackingStrategy = Literal["bfd", "bfd_split", "wrapped"]

# SFTConfig of TRL 1.16 (continued pretraining uses it too).
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "activation_offloading",
        "assistant_only_loss",
        "chat_template_path",
        "completion_only_loss",
        "dataset_kwargs",
        "dataset_num_proc",
        "dataset_text_field",
        "eos_token",
        "eval_packing",
        "loss_type",
        "max_length",
        "model_init_kwargs",
        "packing",
        "packing_strategy",
        "pad_to_multiple_of",
        "pad_token",
        "padding_free",
        "router_aux_loss_coef",
        "shuffle_dataset",
        "truncation_mode",
        "trust_remote_code",
    }
)


class SftSection(Section):
    """Supervised fine-tuning on conversations or prompt/completion pairs."""

    max_length: TokenLength | None = 1024
    packing: bool = False
    packing_strategy: PackingStrategy = "bfd"
    padding_free: bool | None = None
    """Flatten each batch into one padding-free row (needs a flash-attention kernel). Unset: on where one is
    installed and rows are not packed."""
    assistant_only_loss: bool = False
    """Train on assistant turns only (works with any template)."""
    completion_only_loss: bool | None = None
    """Train on completions only for prompt/completion data (default: yes for such data)."""
    eos_token: str | None = None


# Continued pretraining trains with the same TRL classes.
sft_config = imported("trl", "SFTConfig")
sft_trainer = imported("trl", "SFTTrainer")


def _trl_settings(section: SftSection) -> dict[str, Any]:
    return {
        "max_length": section.max_length,
        "packing": section.packing,
        "packing_strategy": section.packing_strategy,
        "padding_free": section.padding_free,
        "eos_token": section.eos_token,
    }


def _packs(section: SftSection) -> bool:
    # getattr: a method built on sft's record (a plug-in) may bring a section without the packing fields.
    return bool(getattr(section, "packing", False) or getattr(section, "padding_free", False))


def _automatic(section: SftSection, facts) -> list:
    from alignkit.recipe.automatic import Setting

    path = "sft.padding_free"
    if not hasattr(section, "padding_free"):
        return []
    if section.padding_free is not None:
        return [Setting(path, section.padding_free, "set in the recipe", automatic=False)]
    if section.packing:
        return [Setting(path, False, "packed rows are already free of padding")]
    if not facts.flash_attn:
        return [Setting(path, False, "needs flash-attention's variable-length kernel; SDPA would attend across rows")]
    return [Setting(path, True, "each batch becomes one row with no padding; flash-attention keeps rows apart")]


def _loss_policy(section: SftSection, tokenizer):
    from alignkit.data.masking import LossPolicy

    return LossPolicy(
        assistant_only=section.assistant_only_loss,
        completion_only=section.completion_only_loss is not False,
        eos_token=section.eos_token or tokenizer.eos_token,
    )


def _card_rows(section: SftSection) -> list[tuple[str, str]]:
    return [("max length", str(section.max_length))]


METHOD = Method(
    name="sft",
    title="supervised fine-tuning (SFT)",
    section=SftSection,
    default_learning_rate=2.0e-5,
    # The handbook's zephyr-7b-beta QLoRA SFT recipe (one GPU).
    qlora_training={"learning_rate": 2.0e-4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
    trl_fields=TRL_FIELDS,
    trl_config=sft_config,
    trl_settings=_trl_settings,
    trainer=sft_trainer,
    data=DataNeeds(
        formats=(formats.MESSAGES, formats.SHAREGPT, formats.PROMPT_COMPLETION, formats.ALPACA, formats.TEXT),
        rows=TOKEN_ROWS,
        row_fields=("max_length", "assistant_only_loss", "completion_only_loss", "eos_token"),
        loss_policy=_loss_policy,
    ),
    card_rows=_card_rows,
    packs=lambda section: _packs(section),
    groups_by_length=True,
    automatic=_automatic,
    defining_keys=frozenset({"assistant_only_loss", "completion_only_loss", "packing_strategy"}),
    progress_metrics=("mean_token_accuracy",),
    curve_panels=(("token accuracy", ("mean_token_accuracy", "eval_mean_token_accuracy")),),
)


def measuring_recipe(model: dict[str, Any], datasets: list[dict[str, Any]], *, max_length: int, assistant_only: bool,
                     seed: int, output_dir: str):  # fmt: skip
    """An SFT recipe whose prepared rows measure held-out loss as training computes it (`alignkit eval`): every
    row of `datasets` for measuring, none held out, the loss mask of `assistant_only_loss`."""
    return METHOD.recipe.model_validate(
        {
            "model": model,
            "data": {"datasets": [{**source, "role": "train"} for source in datasets], "seed": seed},
            "sft": {"max_length": max_length, "assistant_only_loss": assistant_only},
            "training": {"output_dir": output_dir},
        }
    )
