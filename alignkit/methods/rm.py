"""rm: reward modelling with TRL's RewardTrainer: a sequence classifier with one output, trained on
chosen/rejected pairs with the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)).

The model is any causal LM checkpoint (an SFT output, or an SFT LoRA adapter, which is merged into its base
first) loaded as `AutoModelForSequenceClassification` with `num_labels=1`; its `score` head is new, so under
LoRA it is trained in full. `center_rewards_coefficient` adds the mean squared reward to the loss, which
keeps rewards near zero (Eisenstein et al., 2023).

Rows are rendered pairs like dpo's. RewardTrainer joins prompt and response into one string, appends the
end-of-sequence token unless the response ends with one, and tokenizes with the tokenizer's special tokens;
pairs longer than max_length are left out, not cut. The reward is read at the sequence's last token that is
not the pad token, so a conversation is scored as the trainer saw it: rendered by the chat template, trailing
whitespace removed, ending with the end-of-sequence token (`reward_text`). With `pad_token` set to that
end-of-sequence token, the reward is read at the answer's own last token instead: a small model decides there
whether the answer is right, while at the end marker it would have to recompute it with its last layers.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from alignkit.errors import Problem, UserError
from alignkit.methods.dpo import pair_data
from alignkit.methods.method import Method, ModelNeeds, imported
from alignkit.recipe.bounds import TokenLength
from alignkit.recipe.sections import Section, check_prompt_length
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# RewardConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "activation_offloading",
        "center_rewards_coefficient",
        "chat_template_path",
        "dataset_num_proc",
        "disable_dropout",
        "eos_token",
        "max_length",
        "model_init_kwargs",
        "pad_to_multiple_of",
        "pad_token",
        "trust_remote_code",
    }
)


class RmSection(Section):
    """Reward modelling: a one-output sequence classifier trained on preference pairs (Bradley-Terry)."""

    max_length: TokenLength = 1024
    """Pairs whose chosen or rejected sequence (prompt included) is longer are left out of training."""
    max_prompt_length: TokenLength | None = None
    """Prompts longer than this are cut from the left, so their pairs fit max_length; unset: never cut."""
    center_rewards_coefficient: float | None = Field(None, ge=0)
    """Weight of the mean squared reward added to the loss (keeps rewards centred on zero); 0.01 is usual."""
    disable_dropout: bool = True
    """Turn dropout off in the model, so a pair's two rewards are computed alike."""
    pad_token: str | None = Field(None, min_length=1)
    """The token batches are padded with; the reward is read at each sequence's last token that is not this one.
    Unset: the tokenizer's pad token, else its end-of-sequence token. Set to the end-of-sequence (end-of-turn)
    token, the reward is read at the answer's last token rather than at the end marker. Saved with the tokenizer,
    so scoring reads the same position."""

    @model_validator(mode="after")
    def _lengths(self) -> RmSection:
        check_prompt_length(self.max_prompt_length, self.max_length)
        return self


def _trl_settings(section: RmSection) -> dict[str, Any]:
    return {
        "max_length": section.max_length,
        "center_rewards_coefficient": section.center_rewards_coefficient,
        "disable_dropout": section.disable_dropout,
    }


def _pad_token(section: RmSection, tokenizer) -> None:
    token = section.pad_token
    if token is None:
        return
    if token not in tokenizer.get_vocab():
        eos = tokenizer.eos_token
        hint = f", such as its end-of-sequence token {eos!r}" if eos else ""
        raise UserError(
            Problem(
                source=tokenizer.name_or_path or "the tokenizer",
                path="rm.pad_token",
                message=f"{token!r} is not a token of the model's tokenizer: give one of its tokens{hint}, or leave"
                " it unset (the tokenizer's pad token)",
            )
        )
    tokenizer.pad_token = token


def _card_rows(section: RmSection) -> list[tuple[str, str]]:
    centring = section.center_rewards_coefficient
    loss = "Bradley-Terry" + (f" + {centring:g} x mean squared reward" if centring else "")
    return [
        ("loss", loss),
        ("max length", f"{section.max_length} (longer pairs left out)"),
        ("reward", _reading(section)),
        (
            "loading",
            "AutoModelForSequenceClassification; an adapter: AutoPeftModelForSequenceClassification, num_labels=1",
        ),
    ]


def _reading(section: RmSection) -> str:
    if section.pad_token is None:
        return "one score per sequence, read at its last token: end the text with the end-of-sequence token"
    return (
        f"one score per sequence, read at its last token before the pad token {section.pad_token!r}:"
        " end the text with the end-of-sequence token"
    )


def reward_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """A conversation rendered as the reward model saw it in training: the chat template's text without trailing
    whitespace, ending with the end-of-sequence token (tokenize it with the tokenizer's special tokens)."""
    from alignkit.data.templates import adds_bos_on_encode

    text = tokenizer.apply_chat_template(messages, tokenize=False).rstrip()
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos_on_encode(tokenizer):
        # Training dropped the template's BOS because encoding adds one (alignkit.data.preference): so here.
        text = text[len(bos) :]
    eos = tokenizer.eos_token
    return text if not eos or text.endswith(eos) else text + eos


METHOD = Method(
    name="rm",
    title="reward modelling (RM)",
    section=RmSection,
    # TRL's reward example trains all weights at 1e-5.
    default_learning_rate=1.0e-5,
    # TRL's LoRA reward example: 1e-4 and an effective batch of 8 (4 x 2 leaves room for long pairs on one GPU).
    qlora_training={"learning_rate": 1.0e-4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
    trl_fields=TRL_FIELDS,
    trl_config=imported("trl", "RewardConfig"),
    trl_settings=_trl_settings,
    trainer=imported("trl", "RewardTrainer"),
    # RewardTrainer encodes prompt + response with the tokenizer's special tokens, and leaves long pairs out.
    data=pair_data(trainer_adds_bos="on_encode", too_long="dropped"),
    model=ModelNeeds(
        auto_class="AutoModelForSequenceClassification",
        init_kwargs={"num_labels": 1},
        lora_task_type="SEQ_CLS",
        head_modules=("score",),
        new_head=True,
        generates=False,
    ),
    card_rows=_card_rows,
    tokenizer_setup=_pad_token,
    defining_keys=frozenset({"center_rewards_coefficient"}),
    flat_key_reasons={"max_seq_length": "its length limit is max_length"},
    progress_metrics=("accuracy", "margin"),
    curve_panels=(
        ("rewards", ("min_reward", "mean_reward", "max_reward")),
        ("reward margin", ("margin", "eval_margin")),
        ("pairwise accuracy", ("accuracy", "eval_accuracy")),
    ),
)
