"""ensure_chat_template: which template ends up on the tokenizer, and when the vocabulary grows."""

from __future__ import annotations

import pytest

from alignkit.chat_templates import CHATML, ZEPHYR
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.methods import METHODS


def bare_tokenizer():
    """A base-model tokenizer: no chat template, no pad token, no ChatML tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def recipe(chat_template=None):
    return METHODS["sft"].recipe.model_validate(
        {"model": {"name_or_path": "x"}, "data": {"datasets": [{"path": "d.jsonl"}], "chat_template": chat_template}}
    )


def test_a_tokenizer_without_template_gets_chatml_and_its_tokens():
    tokenizer = bare_tokenizer()
    assert tokenizer.chat_template is None and tokenizer.pad_token is None
    assert ensure_chat_template(tokenizer, recipe()) is True
    assert tokenizer.chat_template == CHATML
    assert len(tokenizer) == 6
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    assert tokenizer.eos_token == "<|im_end|>"  # a ChatML turn ends there, so generation must stop there
    assert tokenizer.pad_token == "<|im_end|>"
    # the tokens are special: never split, and a second call adds nothing
    assert tokenizer("<|im_start|>hello<|im_end|>", add_special_tokens=False)["input_ids"] == [4, 3, 5]
    assert ensure_chat_template(tokenizer, recipe()) is False


def test_the_tokenizers_own_template_is_kept():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    before = len(tokenizer)
    assert ensure_chat_template(tokenizer, recipe()) is False
    assert tokenizer.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert len(tokenizer) == before


@pytest.mark.parametrize(("name", "template"), [("zephyr", ZEPHYR), ("ChatML", CHATML)])
def test_a_named_template_replaces_the_tokenizers(name, template):
    tokenizer = bare_tokenizer()
    added = ensure_chat_template(tokenizer, recipe(name))
    assert tokenizer.chat_template == template
    assert added is (template == CHATML)  # zephyr needs no new tokens
    assert tokenizer.eos_token == ("<|im_end|>" if template == CHATML else "</s>")
    assert tokenizer.pad_token == tokenizer.eos_token


def test_an_inline_template_is_installed_verbatim():
    inline = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer = bare_tokenizer()
    assert ensure_chat_template(tokenizer, recipe(inline)) is False
    assert tokenizer.chat_template == inline
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False) == "user: hello\n"


def test_prepare_data_refuses_a_tokenizer_that_would_still_grow():
    from alignkit.data.prepare import prepare_data

    with pytest.raises(RuntimeError, match="call ensure_chat_template"):
        prepare_data(recipe(), bare_tokenizer())
