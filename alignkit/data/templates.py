"""Chat templates on the tokenizer: which template is installed, and rendering conversations with it.

The recipe's template (a name such as `chatml` or inline Jinja) wins; otherwise the tokenizer's own; ChatML
when the tokenizer has none. Masking never relies on `{% generation %}` markers: it renders prefixes of a
conversation and compares them (see `masking`), so any template works.
"""

from __future__ import annotations

from typing import Any

from alignkit.chat_templates import CHATML_SPECIAL_TOKENS, resolve_template
from alignkit.errors import Problem, UserError

CHATML_END = CHATML_SPECIAL_TOKENS[1]


class TemplateRowError(ValueError):
    """A conversation the chat template refused (for example roles that do not alternate)."""


def template_syntax_error(recipe) -> str | None:
    """What is wrong with the Jinja syntax of the recipe's own template (`data.chat_template`), if anything.

    Parsed as transformers parses templates (trim_blocks, lstrip_blocks, loop controls and the
    `{% generation %}` tag), without rendering: the dry run checks it with no tokenizer loaded.
    """
    template = resolve_template(recipe.data.chat_template)
    if template is None:
        return None
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _generation_tag()]
    )
    try:
        environment.parse(template)
    except TemplateSyntaxError as err:
        return f"the chat template is not valid Jinja: {err.message} (line {err.lineno} of the template)"
    return None


def _generation_tag():
    """A Jinja extension that reads `{% generation %}...{% endgeneration %}` blocks, as transformers' does."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return GenerationTag


def ensure_chat_template(tokenizer, recipe) -> bool:
    """Install the recipe's template (named or inline Jinja) or ChatML when the tokenizer has none.

    ChatML's special tokens are added when the installed template uses them and the vocabulary lacks them;
    the end-of-sequence token becomes `<|im_end|>` then, so generation stops where an assistant turn ends. A
    missing pad token becomes the end-of-sequence token (labels are built from explicit masks, so padding
    never carries loss).

    Returns:
        True when tokens were added to the vocabulary, so the caller resizes the model's embeddings.
    """
    error = template_syntax_error(recipe)
    if error is not None:
        raise UserError(Problem(source="recipe", path="data.chat_template", message=error))
    installed = resolve_template(recipe.data.chat_template)
    if installed is None and not getattr(tokenizer, "chat_template", None):
        installed = resolve_template("chatml")
    if installed is not None:
        tokenizer.chat_template = installed
    added = 0
    if installed is not None and CHATML_SPECIAL_TOKENS[0] in installed:
        vocab = tokenizer.get_vocab()
        missing = [token for token in CHATML_SPECIAL_TOKENS if token not in vocab]
        if missing:
            added += tokenizer.add_tokens(missing, special_tokens=True)
        if CHATML_END in installed and tokenizer.eos_token != CHATML_END:
            # A ChatML turn ends with <|im_end|>; without this a model trained on it never emits its own eos.
            tokenizer.eos_token = CHATML_END
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            added += tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return added > 0


def render(
    tokenizer, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False, context: dict | None = None
) -> str:
    """The conversation as text through the tokenizer's chat template.

    `context` holds the row's template inputs besides the messages: its tool schemas and its
    `chat_template_kwargs` (such as SmolLM3's `enable_thinking`).

    Raises:
        TemplateRowError: when the template refuses the conversation.
    """
    try:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            return_dict=False,
            **(context or {}),
        )
    except Exception as err:  # jinja2's TemplateError and whatever raise_exception() raised inside the template
        raise TemplateRowError(f"the chat template refused this conversation: {err}") from None


def adds_bos_on_encode(tokenizer) -> bool:
    """Whether encoding plain text prepends the beginning-of-sequence token (Llama, Gemma) or not (Qwen)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def common_prefix_length(a: str, b: str) -> int:
    """Number of leading characters `a` and `b` share."""
    limit = min(len(a), len(b))
    index = 0
    # Compare in chunks first: rendered conversations share long prefixes and a char loop is slow.
    step = 256
    while index + step <= limit and a[index : index + step] == b[index : index + step]:
        index += step
    while index < limit and a[index] == b[index]:
        index += 1
    return index
