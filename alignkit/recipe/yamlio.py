"""Strict YAML reading and stable YAML writing for recipes.

PyYAML's `safe_load` silently keeps the last of two duplicate keys, which hides typos such as a second
`learning_rate` further down a long file. The loader here refuses duplicates, reports syntax errors with
their line, and refuses an empty document, always naming the file. It stays a safe loader (no tags that build
objects), and reads numbers such as `1e-8` as floats, as YAML 1.2 does, where PyYAML's YAML 1.1 keeps text.
Aliases are counted as the values they stand for: a few hundred bytes of nested aliases (a "billion laughs")
would otherwise expand to gigabytes wherever the recipe is copied or validated, so a document that grows past
`MAX_VALUES` is refused first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import Problem, UserError

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_VALUES = 100_000
"""The most values (scalars, lists, mappings) a document may hold with its aliases expanded; a recipe has
a few hundred."""


class _StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """A safe loader that refuses duplicate mapping keys and documents whose aliases expand too far."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return self.construct_document(node)


class _TooLarge(Exception):
    def __init__(self, line: int, why: str):
        self.line, self.why = line, why


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for with every alias written out (each shared node is counted once
    per use, but measured once)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _TooLarge(
            node.start_mark.line + 1, "an alias refers to a value that contains it; write the values out instead"
        )
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            size += _expanded_size(key_node, sizes, open_nodes) + _expanded_size(value_node, sizes, open_nodes)
    if size > MAX_VALUES:
        raise _TooLarge(
            node.start_mark.line + 1,
            f"its aliases expand to more than {MAX_VALUES:,} values (a recipe holds a few hundred); write the"
            " values out instead of nesting aliases",
        )
    open_nodes.discard(key)
    sizes[key] = size
    return size


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):  # `[a, b]: 1` parses, but no recipe field is named by a list
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a plain value, not a {type(key).__name__}", key_node.start_mark
            )
        if key in mapping:
            raise _DuplicateKey(key, first_line[key], key_node.start_mark.line + 1)
        first_line[key] = key_node.start_mark.line + 1
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 (PyYAML) reads a number in exponent notation as a float only with a dot and a signed exponent
# (`1.0e-8`); `1e-8`, `5e-7` and `1E+3` stay text and fail later as a wrong type. Read them as YAML 1.2 does.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first_line: int, line: int):
        self.key, self.first_line, self.line = key, first_line, line


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text strictly; `source` names the text in error messages."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _TooLarge as large:
        raise UserError(
            Problem(
                source=f"{source}:{large.line}",
                message=large.why,
            )
        ) from None
    except _DuplicateKey as dup:
        raise UserError(
            Problem(
                source=f"{source}:{dup.line}",
                message=f"duplicate key {dup.key!r} (first given on line {dup.first_line}); keep only one",
            )
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        what = err.problem or "invalid YAML"
        raise UserError(Problem(source=where, message=f"YAML syntax error: {what}")) from None
    except yaml.YAMLError as err:
        raise UserError(Problem(source=source, message=f"YAML error: {err}")) from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a non-empty mapping at its top level."""
    source = str(path)
    if not path.exists():
        raise UserError(Problem(source=source, message="file not found; check the path"))
    if path.is_dir():
        raise UserError(Problem(source=source, message="is a folder; give the path of a recipe YAML file"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(Problem(source=source, message=f"cannot read the file ({err})")) from None
    data = parse_yaml(text, source)
    if data is None:
        raise UserError(Problem(source=source, message="the file is empty; a recipe needs at least a model section"))
    if not isinstance(data, dict):
        raise UserError(
            Problem(source=source, message=f"expected a mapping of keys to values at the top, found {_kind(data)}")
        )
    return data


def dump_yaml(data: Any) -> str:
    """Write YAML that reads back to the same data, keeping key order."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
