"""Turning pydantic validation errors into one readable line per problem.

Each line names where the value came from (the recipe file, the flat key of a converted handbook config, or
the `--set` that gave it), the dotted field path, what was given, and what is allowed. Unknown keys get the
closest valid key as a suggestion.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from alignkit.errors import Problem
from alignkit.methods import METHODS
from alignkit.recipe.bounds import NOT_FINITE

_TAGGED = re.compile(r"^\[(?P<path>[\w.]+)\] (?P<message>.*)$", re.DOTALL)
_IDENT = re.compile(r"^[\w-]+$")


def problems_from_validation(
    error: ValidationError,
    model: type[BaseModel],
    *,
    source: str,
    method: str,
    overrides: Mapping[str, str] | None = None,
    origins: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Translate a recipe ValidationError into Problems.

    Args:
        error: what pydantic raised.
        model: the recipe model that was validated (to suggest keys that exist).
        source: the recipe file, named in each problem.
        method: the subcommand, to explain sections that belong to another method.
        overrides: dotted path -> the `--set` text that gave it.
        origins: dotted path -> flat handbook key it was converted from.
    """
    problems = []
    union_paths: set[str] = set()
    for item in error.errors(include_url=False):
        # pydantic names the union member an error came from ("literal['a','b']"); users need only the field.
        loc = [str(part) for part in item["loc"] if _IDENT.match(str(part))]
        in_union = len(loc) != len(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        tagged = _TAGGED.match(message)
        if tagged:
            loc = [*loc, *tagged["path"].split(".")]
            message = tagged["message"]
        path = ".".join(loc)
        if in_union:
            if path in union_paths:
                continue  # the first member's message already says what is allowed
            union_paths.add(path)
        kind = item["type"]
        given = item.get("input")
        if kind == "extra_forbidden" and item["loc"] and (not loc or loc[-1] != str(item["loc"][-1])):
            # An unknown key that is no identifier ("a b", "") is still the key to name.
            loc = [*loc, str(item["loc"][-1])]
            path = ".".join(loc)
        if kind == "extra_forbidden":
            message = f"{_unknown_key(model, loc, method)} (given: {_show(given)})"
        elif kind == "missing":
            message = "required, but not given"
        elif kind == "finite_number":
            message = f"{NOT_FINITE} (given: {_show(given)})"  # worded as the bounded fields say it
        elif isinstance(given, dict):
            message = _lower_first(message)  # a whole section: its values are in the file
        else:
            message = f"{_lower_first(message)} (given: {_show(given)})"
        problems.append(_attribute(path, message, source, overrides or {}, origins or {}))
    return _dedupe(problems)


def _unknown_key(model: type[BaseModel], loc: list[str], method: str) -> str:
    key = loc[-1]
    if len(loc) == 1 and key in METHODS and key != method:
        return f"a {key} section in a {method} recipe; run `alignkit {key}` with this recipe, or remove the section"
    valid = _fields_at(model, loc[:-1])
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    if valid:
        return f"unknown key; valid keys here: {', '.join(valid)}"
    return "unknown key"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the section found by walking `loc` from `model`."""
    current: Any = model
    for part in loc:
        if part.isdigit():
            current = _element_model(current)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _section_model(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _section_model(annotation: Any) -> Any:
    """The BaseModel class inside an annotation (`X | None`, `list[X]`), or the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return annotation if typing.get_origin(annotation) in (list,) else found
    return annotation


def _element_model(annotation: Any) -> Any:
    if typing.get_origin(annotation) is list:
        return _section_model(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is list:
                return _element_model(arg)
    return annotation


def _attribute(path: str, message: str, source: str, overrides: Mapping[str, str], origins: Mapping[str, str]):
    for prefix in _prefixes(path):
        if prefix in overrides:
            return Problem(source=f"--set {overrides[prefix]}", path=path, message=message)
    inside = [text for set_path, text in overrides.items() if set_path.startswith(path + ".")]
    if inside:
        return Problem(source=" ".join(f"--set {text}" for text in inside), path=path, message=message)
    for prefix in _prefixes(path):
        if prefix in origins:
            flat = origins[prefix]
            shown = flat if flat == path else f"{flat} (alignkit: {path})"
            return Problem(source=source, path=shown, message=message)
    return Problem(source=source, path=path, message=message)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    unique = []
    for problem in problems:
        if str(problem) not in seen:
            seen.add(str(problem))
            unique.append(problem)
    return unique
