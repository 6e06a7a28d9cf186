"""Secrets come from the environment only: finding a token, key or password in a recipe or an override.

Everything a recipe holds is written to disk by a run (the frozen recipe, TRL's `training_args.bin` in every
checkpoint, the model card, the recorded command) and into Slurm and dstack files, so a field holding a
secret is refused, naming the environment variable the library reads it from instead. A value counts as a
secret by its key (`hub_token`, `wandb_api_key`, `password`, ...: any non-empty value) or by its shape (the
prefixes Hugging Face, OpenAI, Anthropic, GitHub and AWS give their tokens, or a W&B key's 40 hex digits).
The shapes ask for what random tokens have and names rarely do (a capital letter after `hf_`, a 40-hex
value standing alone rather than inside a path), and a `*revision` field may be a 40-hex commit hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from alignkit.errors import Problem

_ALONE = r"(?<![A-Za-z0-9])"
_END = r"(?![A-Za-z0-9_])"


@dataclass(frozen=True)
class _Shape:
    pattern: re.Pattern[str]
    kind: str
    env: str


_SHAPES = (
    _Shape(re.compile(_ALONE + r"hf_(?=[A-Za-z0-9]*[A-Z])[A-Za-z0-9]{10,}" + _END), "a Hugging Face token", "HF_TOKEN"),
    _Shape(re.compile(_ALONE + r"sk-ant-[A-Za-z0-9_\-]{16,}"), "an Anthropic API key", "ANTHROPIC_API_KEY"),
    _Shape(
        re.compile(_ALONE + r"sk-(?=[A-Za-z0-9_\-]*[A-Z0-9])[A-Za-z0-9_\-]{16,}"), "an OpenAI API key", "OPENAI_API_KEY"
    ),
    _Shape(
        re.compile(_ALONE + r"(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
        "a GitHub token",
        "GITHUB_TOKEN",
    ),
    _Shape(re.compile(_ALONE + r"(AKIA|ASIA)[0-9A-Z]{16}" + _END), "an AWS access key", "AWS_ACCESS_KEY_ID"),
)
# A W&B key is 40 hex digits; so is a commit hash, found in revisions and in Hub cache paths (snapshots/<sha>).
_HEX40 = re.compile(r"(?<![A-Za-z0-9/._\-])[A-Fa-f0-9]{40}(?![A-Za-z0-9/._\-])")
_WANDB = _Shape(_HEX40, "a W&B API key", "WANDB_API_KEY")

# Keys ending in these hold tokens; a tokenizer's `eos_token` or `pad_token` does not.
_TOKEN_KEYS = ("hub_token", "auth_token", "access_token", "api_token", "bearer_token", "hf_token", "wandb_token")
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "passwd", "private_key", "credential")
_SERVICES = (("wandb", "WANDB_API_KEY"), ("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"))


@dataclass(frozen=True)
class Found:
    """A secret found at a dotted field path: what it looks like and the variable to set instead."""

    path: str
    what: str
    """Why it is taken for a secret: "looks like a Hugging Face token", "is a secret field (hub_token)"."""
    env: str

    def problem(self, source: str) -> Problem:
        return Problem(
            source=source,
            path=self.path,
            message=f"{self.what}; secrets come from the environment only (a run writes its recipe into its"
            f" files): remove it and set {self.env} in the environment instead",
        )


def secret_key(key: str) -> bool:
    """Whether a field of this name holds a secret whenever it is set."""
    name = key.lower().replace("-", "_")
    return name == "token" or name.endswith(_TOKEN_KEYS) or any(word in name for word in _SECRET_WORDS)


def find_secrets(value: Any, path: str = "") -> list[Found]:
    """Every secret in a recipe document (or one override's value placed at `path`), by key or by shape."""
    found: list[Found] = []
    if isinstance(value, dict):
        for key, child in value.items():
            found += find_secrets(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += find_secrets(child, f"{path}.{index}" if path else str(index))
    elif (shape := shape_of(value, path)) is not None:
        found.append(Found(path, f"looks like {shape.kind}", shape.env))
    elif _set(value) and (key := next((p for p in path.split(".") if secret_key(p)), None)):
        found.append(Found(path, f"is a secret field ({key})", _env_for(path)))
    return found


def shape_of(value: Any, path: str = "") -> _Shape | None:
    """The kind of token `value` looks like, if any (a 40-hex value in a `*revision` field is a commit)."""
    if not isinstance(value, str):
        return None
    shape = next((s for s in _SHAPES if s.pattern.search(value)), None)
    if shape is None and _HEX40.search(value) and not path.endswith("revision"):
        shape = _WANDB
    return shape


def redact(text: str) -> str:
    """`text` with every token-shaped part, and the value of a `secret_key=value`, replaced by <redacted>."""
    key, sep, _ = text.partition("=")
    if sep and secret_key(key.rsplit(".", 1)[-1]):
        return f"{key}=<redacted>"
    for shape in _SHAPES:
        text = shape.pattern.sub("<redacted>", text)
    if not (sep and key.endswith("revision")):  # a pinned revision is a commit hash, kept
        text = _HEX40.sub("<redacted>", text)
    return text


def _set(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    return bool(value.strip()) if isinstance(value, str) else True


def _env_for(path: str) -> str:
    lowered = path.lower()
    for service, env in _SERVICES:
        if service in lowered:
            return env
    return "HF_TOKEN" if "token" in lowered else "the variable its library reads (HF_TOKEN, WANDB_API_KEY, ...)"
