"""Loss masks of SFT rows: exactly the tokens alignkit says, under templates without generation markers."""

from __future__ import annotations

import json

import pytest

from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.methods import METHODS

# ChatML without {% generation %} markers: TRL's assistant_only_loss cannot mask this one.
PLAIN_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A template with no special turn tokens at all: roles as words, turns ended by eos.
WORDY = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
# The generation prompt renders differently from an assistant turn in history (as thinking templates do).
DIVERGENT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n\n{% endif %}"
)

CHAT = [
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": "the answer is 5"},
    {"role": "user", "content": "and 4 plus 4?"},
    {"role": "assistant", "content": "8"},
    {"role": "user", "content": "good"},
    {"role": "assistant", "content": "yes, good"},
]


def prepare(tmp_path, rows, method="sft", section=None, **data):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recipe = METHODS[method].recipe.model_validate(
        {"model": {"name_or_path": "tiny"}, "data": {"datasets": [{"path": str(path)}], **data}, method: section or {}}
    )
    tokenizer = build_tokenizer()
    ensure_chat_template(tokenizer, recipe)
    return prepare_data(recipe, tokenizer), tokenizer


def labelled(tokenizer, row) -> list[tuple[str, int]]:
    return list(zip(tokenizer.convert_ids_to_tokens(row["input_ids"]), row["assistant_masks"], strict=True))


def expected_chatml_assistant_mask(tokens: list[str]) -> list[int]:
    """Independent rule: after `<|im_start|> assistant \\n`, every token up to and including `<|im_end|>`."""
    mask, inside = [], False
    for position, token in enumerate(tokens):
        if inside:
            mask.append(1)
            inside = token != "<|im_end|>"
            continue
        mask.append(0)
        if token == "\n" and tokens[position - 2 : position] == ["<|im_start|>", "assistant"]:
            inside = True
    return mask


@pytest.mark.parametrize("template", [PLAIN_CHATML, DIVERGENT])
def test_assistant_only_labels_exactly_every_assistant_turn(tmp_path, template):
    prepared, tokenizer = prepare(
        tmp_path, [{"messages": CHAT}], section={"assistant_only_loss": True}, chat_template=template
    )
    pairs = labelled(tokenizer, prepared.train[0])
    tokens = [t for t, _ in pairs]
    assert [m for _, m in pairs] == expected_chatml_assistant_mask(tokens)
    trained = "".join(t for t, m in pairs if m)
    assert trained == "the answer is 5<|im_end|>8<|im_end|>yes, good<|im_end|>"
    assert sum(m for _, m in pairs) == 15


def test_assistant_only_under_a_template_without_turn_tokens(tmp_path):
    prepared, tokenizer = prepare(
        tmp_path, [{"messages": CHAT}], section={"assistant_only_loss": True}, chat_template=WORDY
    )
    pairs = labelled(tokenizer, prepared.train[0])
    runs, current = [], ""
    for token, bit in pairs:
        if bit:
            current += token
        elif current:
            runs.append(current)
            current = ""
    assert runs == ["the answer is 5<|im_end|>", "8<|im_end|>", "yes, good<|im_end|>"]
    # the role words and the newline between turns are context, never trained
    assert all(bit == 0 for token, bit in pairs if token in ("assistant", "user", ":", "\n"))


def test_conversations_train_every_token_by_default(tmp_path):
    prepared, _ = prepare(tmp_path, [{"messages": CHAT}], chat_template=PLAIN_CHATML)
    row = prepared.train[0]
    assert row["assistant_masks"] == [1] * len(row["input_ids"])
    assert prepared.report.loss == "conversations: every token"


def test_prompt_completion_strings_train_the_completion_and_eos(tmp_path):
    rows = [{"prompt": "what is 2 plus 3? ", "completion": "5"}]
    prepared, tokenizer = prepare(tmp_path, rows)
    pairs = labelled(tokenizer, prepared.train[0])
    assert pairs == [
        ("what", 0),
        (" ", 0),
        ("is", 0),
        (" ", 0),
        ("2", 0),
        (" ", 0),
        ("plus", 0),
        (" ", 0),
        ("3", 0),
        ("?", 0),
        (" ", 0),
        ("5", 1),
        ("<|im_end|>", 1),
    ]


def test_completion_only_loss_false_trains_the_prompt_too(tmp_path):
    rows = [{"prompt": "what is 2? ", "completion": "2"}]
    prepared, _ = prepare(tmp_path, rows, section={"completion_only_loss": False})
    assert prepared.train[0]["assistant_masks"] == [1] * 9  # what, " ", is, " ", 2, ?, " ", 2, eos


def test_conversational_prompt_completion_trains_the_assistant_reply(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "hello"}], "completion": [{"role": "assistant", "content": "yes"}]}]
    prepared, tokenizer = prepare(tmp_path, rows)
    pairs = labelled(tokenizer, prepared.train[0])
    assert [t for t, m in pairs if m] == ["yes", "<|im_end|>"]
    assert tokenizer.decode(prepared.train[0]["input_ids"]).startswith("<|im_start|>user\nhello")


def test_system_prompt_is_inserted_only_when_missing(tmp_path):
    with_system = [{"role": "system", "content": "you are a tiny model"}, *CHAT[:2]]
    rows = [{"messages": CHAT[:2]}, {"messages": with_system}]
    prepared, tokenizer = prepare(tmp_path, rows, system_prompt="you are a helpful model", seed=0)
    texts = sorted(tokenizer.decode(r["input_ids"]) for r in prepared.train)
    assert sum(t.count("<|im_start|>system") for t in texts) == 2
    assert any("you are a helpful model" in t for t in texts)
    assert any("you are a tiny model" in t and "helpful" not in t for t in texts)


def test_max_length_truncates_and_drops_rows_left_without_loss(tmp_path):
    long_prompt = {"prompt": "one two three four five six seven eight nine ten ", "completion": "yes"}
    short = {"prompt": "one ", "completion": "two"}
    prepared, _ = prepare(tmp_path, [long_prompt, short], section={"max_length": 8})
    # the long row is cut to 8 tokens, all prompt: nothing left to learn, so it is dropped and counted
    assert len(prepared.train) == 1
    assert prepared.report.sources[0].dropped == 1
    assert prepared.report.truncated == 0  # the surviving row fits
    assert all(len(r["input_ids"]) <= 8 for r in prepared.train)


def test_truncated_rows_are_counted(tmp_path):
    prepared, tokenizer = prepare(tmp_path, [{"messages": CHAT}, {"messages": CHAT[:2]}], section={"max_length": 20})
    full = [
        len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in (CHAT, CHAT[:2])
    ]
    assert full == [61, 27]
    assert prepared.report.truncated == 2
    assert (prepared.report.train_lengths.max, prepared.report.train_lengths.min) == (61, 27)
    assert [len(r["input_ids"]) for r in prepared.train] == [20, 20]


def test_a_conversation_without_assistant_turn_is_dropped_under_assistant_only(tmp_path):
    rows = [{"messages": CHAT[:1]}, {"messages": CHAT[:2]}]
    prepared, _ = prepare(tmp_path, rows, section={"assistant_only_loss": True})
    assert len(prepared.train) == 1
    assert prepared.report.sources[0].dropped == 1


# Earlier assistant turns show only their last word (as Qwen3 drops earlier reasoning); the final one is whole.
SHORTENS_HISTORY = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split(' ')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_assistant_only_when_the_template_renders_history_differently(tmp_path):
    chat = [
        {"role": "user", "content": "what is 2 plus 3?"},
        {"role": "assistant", "content": "good answer 5"},
        {"role": "user", "content": "and 4?"},
        {"role": "assistant", "content": "the answer is 7"},
    ]
    prepared, tokenizer = prepare(
        tmp_path, [{"messages": chat}], section={"assistant_only_loss": True}, chat_template=SHORTENS_HISTORY
    )
    pairs = labelled(tokenizer, prepared.train[0])
    tokens = [t for t, _ in pairs]
    assert "".join(tokens).count("good") == 0  # the first turn is rendered as its last word only
    assert [m for _, m in pairs] == expected_chatml_assistant_mask(tokens)
    assert "".join(t for t, m in pairs if m) == "5<|im_end|>the answer is 7<|im_end|>"


# Template shapes of common model families, written here in their style (not copied): no generation prompt
# at all (INST style), trimmed content with header tokens, renamed roles.
INST_STYLE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
HEADER_STYLE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
RENAMED_ROLES = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (INST_STYLE, [" hello! <|im_end|>", "4<|im_end|>"]),
        (HEADER_STYLE, ["hello!<|eot_id|>", "4<|eot_id|>"]),
        (RENAMED_ROLES, ["hello!<end_of_turn>", "4<end_of_turn>"]),
    ],
    ids=["inst", "header", "renamed-roles"],
)
def test_assistant_spans_under_other_template_shapes(template, expected):
    from alignkit.data.masking import assistant_spans
    from alignkit.data.templates import render

    chat = [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": " hello! "},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    tokenizer = build_tokenizer()
    tokenizer.chat_template = template
    full = render(tokenizer, chat)
    assert [full[start:end] for start, end in assistant_spans(tokenizer, chat, full)] == expected
