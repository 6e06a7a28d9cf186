"""Mirrors: local stand-ins for the Hub ids a recipe names, for air-gapped clusters and offline tests.

A mirror file is a YAML mapping from exact Hub ids to local paths:

    mistralai/Mistral-7B-v0.1: /models/Mistral-7B-v0.1            # model.name_or_path (any revision)
    HuggingFaceTB/SmolLM3-3B-checkpoints@it-SFT: /models/it-sft    # only that revision of a model
    HuggingFaceH4/ultrachat_200k: /data/ultrachat_200k             # data.datasets[*].path

It is applied to `model.name_or_path`, `model.tokenizer_name_or_path` and every `data.datasets[*].path` right
after the recipe file is read, before --qlora and --set, so everything downstream (dry run, the frozen
recipe, training) sees the local paths and an explicit `--set` still wins. Relative targets are taken from
the mirror file's folder. A mirrored model loses its `revision` (a local folder has none); a dataset keeps its
`name` and `split`, which the local stand-in must provide. Given as `--mirror FILE`, or in the environment as
ALIGNKIT_MIRRORS=FILE (read by every command that resolves a recipe). Light: yaml only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alignkit.errors import Problem, UserError
from alignkit.recipe.yamlio import parse_yaml

ENV_VAR = "ALIGNKIT_MIRRORS"


@dataclass(frozen=True)
class Applied:
    """One mirror entry that replaced one field of a recipe."""

    key: str
    field: str
    """Dotted recipe path, e.g. `data.datasets.1.path`."""
    original: str
    target: str

    @property
    def notice(self) -> str:
        missing = "" if Path(self.target).exists() else " (not found on this machine)"
        return f"mirror: {self.field}: {self.original} -> {self.target}{missing}"


def load_mirrors(path: str | Path, *, source: str | None = None) -> dict[str, str]:
    """Read and check a mirror file; targets come back absolute.

    Raises:
        UserError: a missing or unreadable file, or anything but a mapping of ids to paths (exit 2).
    """
    file = Path(path).expanduser()
    label = source or str(file)
    if not file.is_file():
        raise UserError(Problem(source=label, message=f"mirror file not found: {file}"))
    try:
        raw = parse_yaml(file.read_text(encoding="utf-8"), str(file))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(Problem(source=str(file), message=f"cannot read the mirror file ({err})")) from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            Problem(
                source=str(file),
                message="a mirror file is a non-empty YAML mapping of Hub ids to local paths"
                " (`org/name: /local/path`, one a line)",
            )
        )
    problems = []
    mirrors: dict[str, str] = {}
    for key, value in raw.items():
        where = str(key)
        if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key):
            problems.append(
                Problem(source=str(file), path=where, message="a mirror key must be a Hub id such as org/name")
            )
            continue
        model_id, at, revision = key.partition("@")
        if at and (not model_id or not revision):
            problems.append(
                Problem(source=str(file), path=where, message="give a model revision as ID@REVISION, both non-empty")
            )
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(
                Problem(
                    source=str(file),
                    path=where,
                    message=f"must map to a local path (a string), found {type(value).__name__}: {value!r}",
                )
            )
            continue
        target = Path(value).expanduser()
        # Relative to the file, so a mirror file can travel with the stand-ins beside it.
        mirrors[key] = str(target if target.is_absolute() else (file.parent / target).resolve())
    if problems:
        raise UserError(problems)
    return mirrors


def mirrors_from_env() -> dict[str, str] | None:
    """The mirrors ALIGNKIT_MIRRORS names, or None when it is unset or empty."""
    value = os.environ.get(ENV_VAR, "").strip()
    return load_mirrors(value, source=f"{ENV_VAR}={value}") if value else None


def apply_mirrors(raw: dict[str, Any], mirrors: dict[str, str]) -> tuple[dict[str, Any], list[Applied]]:
    """Replace the mirrored ids in a raw (not yet validated) recipe; returns the new recipe and what changed.

    Fields of the wrong type are left alone: validation reports them afterwards.
    """
    applied: list[Applied] = []
    result = dict(raw)
    model = raw.get("model")
    if isinstance(model, dict):
        model = dict(model)
        name = model.get("name_or_path")
        if isinstance(name, str):
            revision = model.get("revision") or "main"
            key = next((k for k in (f"{name}@{revision}", name) if k in mirrors), None)
            if key is not None:
                model["name_or_path"] = mirrors[key]
                model.pop("revision", None)  # a local folder has no branches
                applied.append(Applied(key, "model.name_or_path", name, mirrors[key]))
        tokenizer = model.get("tokenizer_name_or_path")
        if isinstance(tokenizer, str) and tokenizer in mirrors:
            model["tokenizer_name_or_path"] = mirrors[tokenizer]
            applied.append(Applied(tokenizer, "model.tokenizer_name_or_path", tokenizer, mirrors[tokenizer]))
        result["model"] = model
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("datasets"), list):
        sources = []
        for index, entry in enumerate(data["datasets"]):
            path = entry.get("path") if isinstance(entry, dict) else None
            if isinstance(path, str) and path in mirrors:
                entry = {**entry, "path": mirrors[path]}
                applied.append(Applied(path, f"data.datasets.{index}.path", path, mirrors[path]))
            sources.append(entry)
        result["data"] = {**data, "datasets": sources}
    return result, applied


def unused_notices(mirrors: dict[str, str], used: set[str] | frozenset[str]) -> list[str]:
    """A notice naming the mirror entries that matched nothing in the recipes resolved (typos, or other recipes')."""
    unused = [key for key in mirrors if key not in used]
    if not unused:
        return []
    entries = "entry" if len(unused) == 1 else "entries"
    what = "no model, tokenizer or dataset this run loads"
    return [f"mirror: {len(unused)} {entries} unused ({what}): {', '.join(unused)}"]


def selected_mirrors(flag: str | None) -> dict[str, str] | None:
    """The mirrors a command uses: `--mirror FILE` when given (it replaces ALIGNKIT_MIRRORS), else the env's."""
    return load_mirrors(flag, source=f"--mirror {flag}") if flag else mirrors_from_env()


def with_unused_notices(resolved, mirrors: dict[str, str] | None):
    """`resolved` (a ResolvedRecipe) with a notice for each mirror entry it did not use."""
    if not mirrors:
        return resolved
    return replace(resolved, notices=[*resolved.notices, *unused_notices(mirrors, resolved.mirrored)])
