"""Preference pairs as the rendered strings TRL's preference trainers tokenize themselves.

The prompt is the conversation so far rendered with the generation prompt; each response is what the full
conversation adds after it. TRL then tokenizes these strings (DPOTrainer with the tokenizer's own special
tokens, ORPOTrainer without them but adding BOS itself) and appends an end-of-sequence token to a response
that does not end with one. So a response keeps the template's end-of-turn token and drops the whitespace
after it, and a BOS the template wrote is dropped when the trainer will add one anyway: nothing is doubled.
The prompt is cut from the left to `max_prompt_length` tokens (TRL 1.x no longer does this), counting the
BOS the trainer adds.

Plain-text pairs (prompt, chosen and rejected all strings) are taken as already formatted, as TRL takes
them: no template is applied (text such as "Human: ... Assistant:" would otherwise be wrapped twice), and
without a prompt column the prompt is the text chosen and rejected share.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.templates import common_prefix_length, render


@dataclass(frozen=True)
class PairRendered:
    prompt: str
    chosen: str
    rejected: str
    prompt_tokens: int
    """Prompt length in tokens as the trainer will see it (after any cut, with its BOS)."""
    prompt_cut: bool
    chosen_tokens: int
    rejected_tokens: int


@dataclass(frozen=True)
class TrainerTokens:
    """How the target trainer adds special tokens, decided once per tokenizer."""

    bos_rule: str
    """The method's `DataNeeds.trainer_adds_bos`: "on_encode" or "unless_present"."""
    bos: str | None
    eos: str | None
    encode_adds_bos: bool

    def strips_template_bos(self) -> bool:
        # DPOTrainer encodes with add_special_tokens=True: a tokenizer that adds BOS would add a second one.
        return self.bos is not None and self.encode_adds_bos

    def adds_bos(self, prompt: str) -> bool:
        if self.bos is None:
            return False
        match self.bos_rule:
            case "unless_present":
                return not prompt.startswith(self.bos)
            case "on_encode":
                return self.encode_adds_bos
            case _:
                raise ValueError(f"unknown BOS rule {self.bos_rule!r}")


def render_pair(
    tokenizer,
    prompt: list[dict[str, str]],
    chosen: list[dict[str, str]],
    rejected: list[dict[str, str]],
    tokens: TrainerTokens,
    max_prompt_length: int | None,
    context: dict | None = None,
) -> PairRendered:
    head = render(tokenizer, prompt, add_generation_prompt=True, context=context)
    with_chosen = render(tokenizer, prompt + chosen, context=context)
    with_rejected = render(tokenizer, prompt + rejected, context=context)
    # Some templates render the generation prompt differently from the same turn in a conversation; the
    # responses start where the renderings part (as TRL's own common-prefix rule for token ids).
    cut = min(common_prefix_length(head, with_chosen), common_prefix_length(head, with_rejected))
    head = head[:cut]
    chosen_text = _response(with_chosen[cut:], tokens.eos)
    rejected_text = _response(with_rejected[cut:], tokens.eos)
    if tokens.strips_template_bos() and head.startswith(tokens.bos):
        head = head[len(tokens.bos) :]
    return _pair(tokenizer, head, chosen_text, rejected_text, tokens, max_prompt_length)


def raw_pair(
    tokenizer,
    prompt: str | None,
    chosen: str,
    rejected: str,
    tokens: TrainerTokens,
    max_prompt_length: int | None,
) -> PairRendered:
    """A plain-text pair as given; only the prompt is cut to `max_prompt_length`."""
    if prompt is None:
        shared = common_prefix_length(chosen, rejected)
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    return _pair(tokenizer, prompt, chosen, rejected, tokens, max_prompt_length)


def _pair(tokenizer, prompt: str, chosen: str, rejected: str, tokens: TrainerTokens, max_prompt_length) -> PairRendered:
    """The pair with its prompt cut to `max_prompt_length`, and the token counts the trainer will see."""
    head, prompt_tokens, was_cut = _cut_prompt(tokenizer, prompt, tokens, max_prompt_length)
    return PairRendered(
        prompt=head,
        chosen=chosen,
        rejected=rejected,
        prompt_tokens=prompt_tokens,
        prompt_cut=was_cut,
        chosen_tokens=_count(tokenizer, chosen, tokens.eos),
        rejected_tokens=_count(tokenizer, rejected, tokens.eos),
    )


def _response(text: str, eos: str | None) -> str:
    stripped = text.rstrip()
    if eos and stripped.endswith(eos):
        return stripped  # the trainer sees it ends with eos and adds none
    return text


def _count(tokenizer, text: str, eos: str | None) -> int:
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return count if eos and text.endswith(eos) else count + 1  # the eos the trainer appends


def _cut_prompt(tokenizer, prompt: str, tokens: TrainerTokens, max_prompt_length: int | None) -> tuple[str, int, bool]:
    lead = tokens.bos if tokens.bos and prompt.startswith(tokens.bos) else ""
    body = prompt[len(lead) :]
    extra = (1 if lead else 0) + (1 if tokens.adds_bos(prompt) else 0)
    encoded = tokenizer(body, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    ids = encoded["input_ids"]
    if max_prompt_length is None or len(ids) + extra <= max_prompt_length:
        return prompt, len(ids) + extra, False
    budget = max(max_prompt_length - extra, 0)
    if budget == 0:
        return lead, extra, True
    if "offset_mapping" in encoded:
        start = encoded["offset_mapping"][len(ids) - budget][0]
        body = body[start:]
    else:
        body = tokenizer.decode(ids[len(ids) - budget :], skip_special_tokens=False)
    kept = len(tokenizer(body, add_special_tokens=False)["input_ids"])
    return lead + body, kept + extra, True
