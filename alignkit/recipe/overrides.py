"""`--set a.b=VALUE` overrides: parsed as YAML scalars and applied to the raw recipe before validation.

Applying them before validation means an override is checked exactly like the same value in the file, and a
path that names no field is refused with the same "did you mean" hint.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from alignkit.errors import Problem, UserError
from alignkit.recipe.yamlio import parse_yaml

_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.([A-Za-z_][\w-]*|\d+))*$")


@dataclass(frozen=True)
class Override:
    """One parsed `--set`."""

    text: str
    path: str
    value: Any


def parse_overrides(texts: list[str] | tuple[str, ...]) -> list[Override]:
    """Parse every `--set` text, reporting all malformed ones together."""
    parsed, problems = [], []
    for text in texts:
        source = f"--set {text}"
        if "=" not in text:
            problems.append(
                Problem(source=source, message="expected PATH=VALUE, e.g. --set training.learning_rate=3e-7")
            )
            continue
        path, raw = text.split("=", 1)
        path = path.strip()
        if not _PATH.match(path):
            problems.append(
                Problem(source=source, message=f"{path!r} is not a dotted field path such as training.learning_rate")
            )
            continue
        try:
            value = parse_yaml(raw, source) if raw.strip() else None
        except UserError as err:
            problems.extend(err.problems)
            continue
        parsed.append(Override(text=text, path=path, value=value))
    if problems:
        raise UserError(problems)
    return parsed


def apply_overrides(recipe: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """Return a copy of `recipe` with each override written at its path (later ones win)."""
    result = copy.deepcopy(recipe)
    problems = []
    for override in overrides:
        node: Any = result
        *parents, leaf = override.path.split(".")
        walked = []
        for part in parents:
            walked.append(part)
            node = _step(node, part, create=True)
            if node is None:
                where = ".".join(walked)
                problems.append(
                    Problem(source=f"--set {override.text}", message=f"{where} is a single value, not a section")
                )
                break
        else:
            if isinstance(node, list):
                index = int(leaf) if leaf.isdigit() else -1
                if not 0 <= index < len(node):
                    problems.append(
                        Problem(
                            source=f"--set {override.text}",
                            message=f"index {leaf} is out of range ({len(node)} entries)",
                        )
                    )
                    continue
                node[index] = override.value
            else:
                node[leaf] = override.value
    if problems:
        raise UserError(problems)
    return result


def _step(node: Any, part: str, *, create: bool) -> Any:
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return node[int(part)]
        return None
    if not isinstance(node, dict):
        return None
    if part not in node or node[part] is None:
        if not create:
            return None
        node[part] = {}
    child = node[part]
    return child if isinstance(child, dict | list) else None
