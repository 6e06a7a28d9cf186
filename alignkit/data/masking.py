"""SFT rows as token ids plus a loss mask that alignkit decides, for any chat template.

Which characters of a rendered example carry the loss is decided on text, then mapped onto tokens through
the tokenizer's offsets. For assistant-only loss each assistant turn's span is found by rendering the
conversation up to that turn twice, with the generation prompt (where the turn starts) and with the turn
(where it ends), so templates without `{% generation %}` markers work and every assistant turn of a
multi-turn chat is trained, and nothing else. Whitespace after a turn's end token is template glue between
turns and is left untrained, as the `{% generation %}` blocks of ChatML and Zephyr do.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.templates import common_prefix_length, render

Span = tuple[int, int]


@dataclass(frozen=True)
class LossPolicy:
    """Which tokens of an SFT example carry the loss."""

    assistant_only: bool = False
    """Conversations: only assistant turns (else every token, TRL's default)."""
    completion_only: bool = True
    """Prompt-completion data: only the completion."""
    eos_token: str | None = None
    """Appended to plain text and string completions (as TRL does) so the model learns to stop."""


@dataclass(frozen=True)
class Rendered:
    """One example as text, the character spans that carry the loss, and whether the tokenizer adds specials."""

    text: str
    spans: list[Span]
    add_special_tokens: bool


def assistant_spans(tokenizer, messages: list[dict[str, str]], full: str, context: dict | None = None) -> list[Span]:
    """Character spans of every assistant turn of `messages` inside `full`, its rendering."""
    spans: list[Span] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _turn_start(tokenizer, messages, index, full, cursor, context)
        end = _turn_end(tokenizer, messages, index, full, start, context)
        while end > start and full[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
        cursor = max(cursor, end)
    return spans


def _turn_start(tokenizer, messages, index: int, full: str, cursor: int, context) -> int:
    try:
        before = render(tokenizer, messages[:index], add_generation_prompt=True, context=context)
    except ValueError:
        before = ""  # templates that index messages[0] refuse an empty conversation
    if before and full.startswith(before):
        return len(before)
    # The generation prompt may differ from how the turn is rendered in history (an empty thinking block, a
    # date line): the turn starts where the two renderings part, and never before the previous turn ended.
    start = max(common_prefix_length(before, full), cursor)
    content = messages[index]["content"]
    found = full.find(content, start) if content else -1
    return found if found >= 0 and not full[start:found].strip() else start


def _turn_end(tokenizer, messages, index: int, full: str, start: int, context) -> int:
    through = render(tokenizer, messages[: index + 1], context=context)
    if full.startswith(through) and len(through) > start:
        return len(through)
    # The template renders a turn differently when it is the last one (Qwen3 drops the reasoning of earlier
    # turns): the turn is its content, if it is there as given, else everything up to the end-of-turn token.
    eos = tokenizer.eos_token
    content = messages[index]["content"]
    found = full.find(content, start) if content else -1
    if found >= 0 and not full[start:found].strip():
        end = found + len(content)
        return end + len(eos) if eos and full.startswith(eos, end) else end
    closing = full.find(eos, start) if eos else -1
    return closing + len(eos) if closing >= 0 else start


def render_conversation(
    tokenizer, messages: list[dict[str, str]], policy: LossPolicy, context: dict | None = None
) -> Rendered:
    full = render(tokenizer, messages, context=context)
    spans = assistant_spans(tokenizer, messages, full, context) if policy.assistant_only else [(0, len(full))]
    return Rendered(full, spans, add_special_tokens=False)


def render_prompt_completion(
    tokenizer, prompt, completion, policy: LossPolicy, is_string: bool, context: dict | None = None
) -> Rendered:
    """Strings are concatenated as TRL does (eos appended); message lists go through the chat template."""
    if is_string:
        eos = policy.eos_token or ""
        if eos and not completion.endswith(eos):
            completion = completion + eos
        full = prompt + completion
        spans = [(len(prompt), len(full))] if policy.completion_only else [(0, len(full))]
        # TRL tokenizes plain text with the tokenizer's own special tokens (a Llama BOS, for instance).
        return Rendered(full, spans, add_special_tokens=True)
    messages = prompt + completion
    full = render(tokenizer, messages, context=context)
    if policy.completion_only:
        try:
            head = render(tokenizer, prompt, add_generation_prompt=True, context=context)
        except ValueError:
            head = ""
        start = common_prefix_length(head, full)
        end = len(full)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans = [(start, end)] if end > start else []
    elif policy.assistant_only:
        spans = assistant_spans(tokenizer, messages, full, context)
    else:
        spans = [(0, len(full))]
    return Rendered(full, spans, add_special_tokens=False)


def render_text(text: str, policy: LossPolicy) -> Rendered:
    eos = policy.eos_token or ""
    if eos and not text.endswith(eos):
        text = text + eos
    return Rendered(text, [(0, len(text))], add_special_tokens=True)


def tokenize_with_masks(tokenizer, rendered: list[Rendered]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each rendered example and, per token, 1 when it carries the loss.

    A token carries the loss when it starts inside a span; special tokens the tokenizer adds itself (a BOS)
    cover no characters and never do. Spans are mapped through the tokenizer's character-to-token index,
    a few lookups per span rather than a pass over every token's offsets.
    """
    ids_out: list[list[int]] = [[] for _ in rendered]
    masks_out: list[list[int]] = [[] for _ in rendered]
    for add_special in (False, True):
        positions = [i for i, r in enumerate(rendered) if r.add_special_tokens is add_special]
        if not positions:
            continue
        texts = [rendered[i].text for i in positions]
        encodings = _encodings(tokenizer, texts, add_special)
        if encodings is None:
            for i in positions:
                ids_out[i], masks_out[i] = _piecewise(tokenizer, rendered[i], add_special)
            continue
        for i, encoding in zip(positions, encodings, strict=True):
            ids_out[i] = encoding.ids
            masks_out[i] = _mask_from_encoding(encoding, rendered[i].spans, len(rendered[i].text))
    return ids_out, masks_out


def _encodings(tokenizer, texts: list[str], add_special: bool):
    """`tokenizers` Encodings of the texts, or None for a slow (Python) tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # The Rust tokenizer directly skips transformers' per-row conversion to Python lists, which costs as
    # much as the encoding itself; only when no truncation or padding is configured on it.
    if backend is not None and backend.truncation is None and backend.padding is None:
        return backend.encode_batch(texts, add_special_tokens=add_special)
    return tokenizer(texts, add_special_tokens=add_special).encodings


def _mask_from_encoding(encoding, spans: list[Span], text_length: int) -> list[int]:
    count = len(encoding.ids)
    mask = [0] * count
    for start, end in spans:
        first = _first_token_from(encoding, start, end, count)
        if first is None:
            continue
        after = _first_token_from(encoding, end, text_length, count)
        after = count if after is None else after
        if after > first:
            mask[first:after] = [1] * (after - first)
    return mask


def _first_token_from(encoding, char: int, limit: int, count: int) -> int | None:
    """Index of the first token that starts at or after `char` (looking no further than `limit`)."""
    for position in range(char, limit):
        token = encoding.char_to_token(position)
        if token is None:
            continue  # a character no token covers (stripped whitespace)
        if encoding.token_to_chars(token)[0] >= char:
            return token
        return token + 1 if token + 1 < count else None  # the token straddles `char`: the next one starts after
    return None


def _piecewise(tokenizer, rendered: Rendered, add_special: bool) -> tuple[list[int], list[int]]:
    """Slow tokenizers have no offsets: tokenize the untrained and trained pieces one after the other."""
    ids: list[int] = []
    mask: list[int] = []
    cursor = 0
    pieces = []
    for start, end in rendered.spans:
        pieces += [(rendered.text[cursor:start], 0), (rendered.text[start:end], 1)]
        cursor = end
    pieces.append((rendered.text[cursor:], 0))
    if add_special and tokenizer.bos_token_id is not None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            ids.append(tokenizer.bos_token_id)
            mask.append(0)
    for piece, trained in pieces:
        if piece:
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            mask += [trained] * len(piece_ids)
    return ids, mask
