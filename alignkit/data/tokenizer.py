"""The recipe's tokenizer, loaded one way for `alignkit data` and for training, so a preview fills exactly the
data-cache entry the training run then finds.

The tokenizer is `model.tokenizer_name_or_path` when given (at its main revision), else the model's own (at
`model.revision`), else, when the model is a LoRA adapter without tokenizer files, its base model's. Remote
code runs only when the recipe allows it, and never for a preview (`alignkit data`), which reads data only.
`training_tokenizer` adds what a training method needs on top: the chat template, then the method's own setup.
"""

from __future__ import annotations

from pathlib import Path

from alignkit.adapters import adapter_base
from alignkit.errors import Problem, UserError


def load_tokenizer(recipe, *, run_code: bool = True):
    """The recipe's tokenizer; a UserError naming the field and the loader's last word when none loads.

    `run_code=False` never runs a repository's code, whatever `model.trust_remote_code` says.
    """
    from transformers import AutoTokenizer

    model = recipe.model
    trust = model.trust_remote_code and run_code
    own = model.tokenizer_name_or_path is None
    name = model.name_or_path if own else model.tokenizer_name_or_path
    revision = model.revision if own else "main"
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust)
    except Exception as err:  # not found, offline, gated, or a folder without tokenizer files
        base = adapter_base(model.name_or_path, model.revision) if own else None
        if base is not None:
            return AutoTokenizer.from_pretrained(base, trust_remote_code=trust)
        if model.trust_remote_code and not trust and "trust_remote_code" in str(err):
            raise UserError(
                Problem(
                    source=name,
                    path="model.name_or_path" if own else "model.tokenizer_name_or_path",
                    message="this tokenizer loads only by running the repository's own Python code, which a data"
                    " preview never does (model.trust_remote_code is for training runs); set"
                    " model.tokenizer_name_or_path to a tokenizer that loads without it to preview the data",
                )
            ) from None
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        where = "" if Path(name).expanduser().exists() else "no local folder of that name, and from the Hub: "
        raise UserError(
            Problem(
                source=name,
                path="model.name_or_path" if own else "model.tokenizer_name_or_path",
                message=f"could not load the tokenizer: {where}{lines[-1] if lines else type(err).__name__}",
            )
        ) from None


def training_tokenizer(recipe, *, run_code: bool = True):
    """The tokenizer as a training method uses it: the chat template installed when the method renders chats, then
    the method's own setup (`Method.tokenizer_setup`). Returns (tokenizer, whether tokens were added)."""
    tokenizer = load_tokenizer(recipe, run_code=run_code)
    method = recipe.method
    added = False
    if method.data.chat_template:
        from alignkit.data.templates import ensure_chat_template

        added = ensure_chat_template(tokenizer, recipe)
    method.tokenizer_setup(recipe.section, tokenizer)
    return tokenizer, added
