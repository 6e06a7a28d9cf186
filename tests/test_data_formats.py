"""Each accepted format on a small fixture: what it becomes for its method, and refusals naming the fix."""

from __future__ import annotations

import json

import pytest

from alignkit.data import formats
from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.errors import UserError
from alignkit.methods import METHODS

Q = [{"role": "user", "content": "what is 2 plus 3?"}]
HEAD = "<|im_start|>user\nwhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"


def write_rows(tmp_path, rows, name="rows.jsonl"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def prepare(tmp_path, rows, method="sft", section=None, **data):
    path = write_rows(tmp_path, rows)
    recipe = METHODS[method].recipe.model_validate(
        {"model": {"name_or_path": "tiny"}, "data": {"datasets": [{"path": str(path)}], **data}, method: section or {}}
    )
    tokenizer = build_tokenizer()
    if method != "cpt":
        ensure_chat_template(tokenizer, recipe)
    return prepare_data(recipe, tokenizer), tokenizer


def decoded(tokenizer, prepared):
    return [tokenizer.decode(r["input_ids"]) for r in prepared.train]


def trained(tokenizer, row):
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    return "".join(t for t, m in zip(tokens, row["assistant_masks"], strict=True) if m)


def test_sharegpt_roles_become_messages(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "you are a tiny model"},
                {"from": "human", "value": "hello"},
                {"from": "gpt", "value": "hello world"},
            ],
            "id": "x1",
        }
    ]
    prepared, tokenizer = prepare(tmp_path, rows, section={"assistant_only_loss": True})
    assert prepared.report.sources[0].format == "sharegpt"
    assert prepared.train.column_names == ["input_ids", "assistant_masks"]
    assert decoded(tokenizer, prepared) == [
        "<|im_start|>system\nyou are a tiny model<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\nhello world<|im_end|>\n"
    ]
    assert trained(tokenizer, prepared.train[0]) == "hello world<|im_end|>"


def test_sharegpt_unknown_role_is_refused_with_the_roles_accepted(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]}] * 2
    rows = [*rows, {"conversations": [{"from": "narrator", "value": "hi"}]}]
    with pytest.raises(UserError) as err:
        prepare(tmp_path, rows)
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}: data.datasets.0: row 3: conversations[0].from is 'narrator'; ShareGPT roles are"
        " human, user, gpt, assistant, chatgpt, bard, bing, model, system, tool, function, observation"
    )


def test_alpaca_becomes_a_user_turn_and_a_trained_reply(tmp_path):
    rows = [
        {"instruction": "add the numbers", "input": "2 and 3", "output": "5"},
        {"instruction": "please answer", "input": "", "output": "yes"},
    ]
    prepared, tokenizer = prepare(tmp_path, rows, seed=1)
    assert prepared.report.sources[0].format == "alpaca"
    texts = sorted(decoded(tokenizer, prepared))
    assert texts == [
        "<|im_start|>user\nadd the numbers\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n",
        "<|im_start|>user\nplease answer<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n",
    ]
    assert sorted(trained(tokenizer, r) for r in prepared.train) == ["5<|im_end|>", "yes<|im_end|>"]


def test_plain_text_for_sft_trains_every_token_and_ends_with_eos(tmp_path):
    prepared, tokenizer = prepare(tmp_path, [{"text": "hello world", "meta": 1}])
    assert prepared.report.sources[0].format == "text"
    assert decoded(tokenizer, prepared) == ["hello world<|im_end|>"]
    assert prepared.train[0]["assistant_masks"] == [1, 1, 1, 1]


def test_cpt_renames_its_text_column_and_drops_the_rest(tmp_path):
    rows = [{"content": "cats and dogs", "url": "x"}, {"content": "sun and rain", "url": "y"}]
    prepared, _ = prepare(tmp_path, rows, method="cpt", section={"text_column": "content"}, seed=3)
    assert prepared.train.column_names == ["text"]
    assert sorted(prepared.train["text"]) == ["cats and dogs", "sun and rain"]
    assert prepared.report.chat_template == "none (cpt trains on raw text)"


def test_cpt_without_its_text_column_names_the_setting(tmp_path):
    with pytest.raises(UserError) as err:
        prepare(tmp_path, [{"body": "cats"}], method="cpt")
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}: data.datasets.0: no cpt format fits: columns found: body; cpt accepts a text"
        " column named 'text' (cpt.text_column)"
    )


@pytest.mark.parametrize("method", ["dpo", "orpo"])
@pytest.mark.parametrize(
    "row",
    [
        {
            "prompt": "what is 2 plus 3?",
            "chosen": [{"role": "assistant", "content": "5"}],
            "rejected": [{"role": "assistant", "content": "6"}],
        },
        {"prompt": Q, "chosen": "5", "rejected": "6"},
        {
            "prompt": Q,
            "chosen": [{"role": "assistant", "content": "5"}],
            "rejected": [{"role": "assistant", "content": "6"}],
        },
        # UltraFeedback: a prompt string and full conversations, the prompt repeated in each
        {
            "prompt": "what is 2 plus 3?",
            "chosen": [*Q, {"role": "assistant", "content": "5"}],
            "rejected": [*Q, {"role": "assistant", "content": "6"}],
            "score_chosen": 9.0,
        },
        {
            "chosen": [*Q, {"role": "assistant", "content": "5"}],
            "rejected": [*Q, {"role": "assistant", "content": "6"}],
        },
    ],
    ids=["string-prompt", "string-responses", "message-lists", "ultrafeedback", "implicit-prompt"],
)
def test_preference_forms_render_the_same_pair(tmp_path, method, row):
    prepared, _ = prepare(tmp_path, [row], method=method)
    assert prepared.train.column_names == ["prompt", "chosen", "rejected"]
    assert prepared.train[0] == {"prompt": HEAD, "chosen": "5<|im_end|>", "rejected": "6<|im_end|>"}


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_plain_text_pairs_are_used_as_given(tmp_path, method):
    # Already-formatted text (all strings) gets no template, as in TRL: "Human: ... Assistant:" stays as it is.
    explicit = {"prompt": "Human: what is 2 plus 3? Assistant:", "chosen": " 5", "rejected": " 6"}
    prepared, _ = prepare(tmp_path / "explicit", [explicit], method=method)
    assert prepared.train[0] == explicit
    implicit = {"chosen": "Human: hello Assistant: yes good", "rejected": "Human: hello Assistant: no"}
    prepared, _ = prepare(tmp_path / "implicit", [implicit], method=method)
    assert prepared.train[0] == {"prompt": "Human: hello Assistant: ", "chosen": "yes good", "rejected": "no"}


def test_plain_text_prompt_is_cut_from_the_left(tmp_path):
    row = {"prompt": "one two three four five six", "chosen": " yes", "rejected": " no"}
    prepared, _ = prepare(tmp_path, [row], method="dpo", section={"max_prompt_length": 3, "max_length": 64})
    assert prepared.train[0]["prompt"] == "five six"
    assert prepared.report.prompt_truncated == 1


def test_implicit_prompt_is_the_shared_beginning_of_a_multi_turn_pair(tmp_path):
    shared = [*Q, {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 4?"}]
    row = {
        "chosen": [*shared, {"role": "assistant", "content": "9"}],
        "rejected": [*shared, {"role": "assistant", "content": "8"}],
    }
    prepared, _ = prepare(tmp_path, [row], method="dpo")
    assert prepared.report.sources[0].format == "preference-conversations"
    assert prepared.train[0] == {
        "prompt": "<|im_start|>user\nwhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
        "<|im_start|>user\nand 4?<|im_end|>\n<|im_start|>assistant\n",
        "chosen": "9<|im_end|>",
        "rejected": "8<|im_end|>",
    }


def test_system_prompt_goes_into_the_preference_prompt(tmp_path):
    row = {"prompt": [{"role": "user", "content": "hello"}], "chosen": "yes", "rejected": "no"}
    prepared, _ = prepare(tmp_path, [row], method="dpo", system_prompt="you are a helpful model")
    assert prepared.train[0]["prompt"] == (
        "<|im_start|>system\nyou are a helpful model<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_identical_responses_are_dropped_and_counted(tmp_path):
    rows = [
        {"prompt": "hello", "chosen": "yes", "rejected": "yes"},
        {"prompt": "hello", "chosen": "yes", "rejected": "no"},
    ]
    prepared, _ = prepare(tmp_path, rows, method="dpo")
    assert len(prepared.train) == 1
    assert prepared.report.sources[0].dropped == 1


def test_prompt_is_cut_from_the_left_to_max_prompt_length(tmp_path):
    row = {"prompt": [{"role": "user", "content": "one two three four five six"}], "chosen": "yes", "rejected": "no"}
    prepared, tokenizer = prepare(tmp_path, [row], method="dpo", section={"max_prompt_length": 8, "max_length": 64})
    prompt = prepared.train[0]["prompt"]
    # the end survives: the generation prompt the responses follow
    assert prompt == "five six<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == 8
    assert prepared.report.prompt_truncated == 1


def test_orpo_prompt_budget_counts_the_bos_the_trainer_adds(tmp_path):
    row = {"prompt": [{"role": "user", "content": "one two three four five six"}], "chosen": "yes", "rejected": "no"}
    prepared, tokenizer = prepare(tmp_path, [row], method="orpo", section={"max_prompt_length": 8, "max_length": 64})
    # ORPOTrainer prepends <s> to a prompt that does not start with it: 7 tokens here + 1 = 8
    assert prepared.train[0]["prompt"] == " six<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokenizer(prepared.train[0]["prompt"], add_special_tokens=False)["input_ids"]) == 7


def test_sft_refuses_preference_only_data_and_says_which_method_fits(tmp_path):
    with pytest.raises(UserError) as err:
        prepare(tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}], method="sft")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'rows.jsonl'}: data.datasets.0: no sft format fits: columns found:")
    assert "columns found: prompt, chosen, rejected; sft accepts messages (a list of {role, content});" in message
    preference = [name for name, method in METHODS.items() if formats.PREFERENCE in method.data.formats]
    assert message.endswith(
        f"text; this is preference data: train it with {', '.join(preference[:-1])} or {preference[-1]}"
    )


def test_dpo_refuses_conversations_naming_columns_and_formats(tmp_path):
    with pytest.raises(UserError) as err:
        prepare(tmp_path, [{"messages": Q, "id": 1}], method="dpo")
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}: data.datasets.0: no dpo format fits: columns found: messages, id; dpo accepts"
        " prompt + chosen + rejected (strings or message lists); chosen + rejected full conversations (the shared"
        " beginning becomes the prompt); this is messages data: train it with sft, grpo or rloo, or give chosen and"
        " rejected columns"
    )


def test_sft_prefers_messages_when_preference_columns_are_also_present(tmp_path):
    row = {"messages": [*Q, {"role": "assistant", "content": "5"}], "chosen": "5", "rejected": "6", "prompt": "x"}
    prepared, _ = prepare(tmp_path, [row])
    assert prepared.report.sources[0].format == "messages"


def test_a_message_without_content_names_the_row_and_field(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "user", "text": "hi"}]}]
    with pytest.raises(UserError) as err:
        prepare(tmp_path, rows)
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}: data.datasets.0: row 2: messages[0] needs role and content"
        " (found ['role', 'text'])"
    )


def test_other_message_keys_reach_the_template(tmp_path):
    template = (
        "{% for m in messages %}{{ m['role'] }}{% if 'name' in m %} {{ m['name'] }}{% endif %}"
        ": {{ m['content'] }}\n{% endfor %}"
    )
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hello", "name": "dogs"},
                {"role": "assistant", "content": "yes", "name": None},  # arrow's filler for a missing key
            ]
        }
    ]
    prepared, tokenizer = prepare(tmp_path, rows, chat_template=template)
    assert decoded(tokenizer, prepared) == ["user dogs: hello\nassistant: yes\n"]


def test_cpt_rows_over_max_length_are_counted_and_packing_named(tmp_path):
    rows = [{"text": "one two three four five"}, {"text": "one"}]
    prepared, _ = prepare(tmp_path, rows, method="cpt", section={"max_length": 4})
    # lengths count the eos the trainer appends: 10 and 2 tokens
    assert (prepared.report.train_lengths.max, prepared.report.train_lengths.min) == (10, 2)
    assert prepared.report.truncated == 1
    assert prepared.report.notices == [
        "1 of 2 training rows exceed max_length (wrapped packing carries the rest into the next sequences)"
    ]


def test_role_aliases_in_messages_are_normalised(tmp_path):
    rows = [{"messages": [{"role": "human", "content": "hello"}, {"role": "gpt", "content": "yes"}]}]
    prepared, tokenizer = prepare(tmp_path, rows, section={"assistant_only_loss": True})
    assert decoded(tokenizer, prepared) == ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n"]
    assert trained(tokenizer, prepared.train[0]) == "yes<|im_end|>"
    assert prepared.report.chat_template == "ChatML (alignkit's)"


TOOL = {"type": "function", "function": {"name": "add", "description": "add two numbers", "parameters": {}}}


@pytest.mark.parametrize("as_text", [False, True], ids=["list", "json-text"])
def test_a_tools_column_reaches_the_template(tmp_path, as_text):
    template = (
        "{% if tools %}<|im_start|>system\n{{ tools | length }} {{ tools[0]['function']['name'] }}<|im_end|>\n"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tools = json.dumps([TOOL]) if as_text else [TOOL]
    rows = [{"messages": [*Q, {"role": "assistant", "content": "5"}], "tools": tools}]
    prepared, tokenizer = prepare(tmp_path, rows, section={"assistant_only_loss": True}, chat_template=template)
    assert decoded(tokenizer, prepared)[0].startswith("<|im_start|>system\n1 add<|im_end|>\n<|im_start|>user")
    assert trained(tokenizer, prepared.train[0]) == "5<|im_end|>"
    pairs, _ = prepare(
        tmp_path / "dpo",
        [{"prompt": Q, "chosen": "5", "rejected": "6", "tools": tools}],
        method="dpo",
        chat_template=template,
    )
    assert pairs.train[0]["prompt"].startswith("<|im_start|>system\n1 add<|im_end|>\n")


def test_chat_template_kwargs_reach_the_template(tmp_path):
    # SmolLM3-style rows carry per-row template switches such as enable_thinking.
    template = (
        "{% if enable_thinking is defined and not enable_thinking %}no {% else %}yes {% endif %}"
        "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    rows = [
        {"messages": chat, "chat_template_kwargs": {"enable_thinking": False}},
        {"messages": chat, "chat_template_kwargs": {"enable_thinking": True}},
    ]
    prepared, tokenizer = prepare(tmp_path, rows, method="sft", chat_template=template)
    assert prepared.train.column_names == ["input_ids", "assistant_masks"]
    texts = sorted(tokenizer.decode(row["input_ids"]) for row in prepared.train)
    assert texts == ["no hello<|im_end|>world<|im_end|>", "yes hello<|im_end|>world<|im_end|>"]
