"""Named chat templates a recipe can ask for (`data.chat_template: chatml`), as Jinja strings.

ChatML is the fallback for tokenizers without a template. Both templates mark assistant turns with
`{% generation %}` so transformers can return assistant masks; alignkit's own masking does not rely on it.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

NAMED = {"chatml": CHATML, "zephyr": ZEPHYR}

CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")


def resolve_template(value: str | None) -> str | None:
    """A template by name, or the inline Jinja as given (None stays None)."""
    if value is None:
        return None
    return NAMED.get(value.strip().lower(), value)
