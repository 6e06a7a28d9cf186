"""The prompts `alignkit sample` generates for: read from the recipe's data sources, as chat messages.

A prompt is a prompt column (a string or a message list), or a conversation (messages, ShareGPT) minus its
final assistant turn, or an instruction (+ input), question or problem column; `sample.prompt_column` names
the column when the guess is not wanted. Every other column of the row is kept beside the prompt: scorers
read their reference there (`exact_match: {column: answer}`). Sources mix by weight as in training (the
same seeded rows for the same `data.seed`); sources whose role is test are not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignkit.data import formats
from alignkit.errors import Problem, UserError

AUTO_COLUMNS = ("prompt", "messages", "conversations", "instruction", "question", "problem")
"""Prompt columns tried in this order when `sample.prompt_column` is unset."""


@dataclass(frozen=True)
class Prompt:
    """One prompt and the rest of its row."""

    messages: list[dict[str, Any]]
    """The chat messages the policy continues (ending where the assistant answers)."""
    row: dict[str, Any] = field(default_factory=dict)
    """The row's other columns (JSON values), for scorers and the candidates file."""


@dataclass(frozen=True)
class PromptSet:
    """Every prompt of the recipe, and what the sources were."""

    prompts: list[Prompt]
    columns: set[str]
    """Columns every source's rows have beside the prompt (what a scorer may read)."""
    read_as: list[str]
    """Per source: how its prompt was read (`prompt column`, `messages minus the final assistant turn`, ...)."""


def load_prompts(recipe, source_file: str) -> PromptSet:
    """The prompts of `recipe.data`'s train sources, weighted and cut to `sample.max_prompts`.

    Raises:
        UserError: a source without a prompt column, or a row whose prompt cannot be read (named by row).
    """
    from alignkit.data.mixture import source_seed, weighted_indices
    from alignkit.data.sources import load_source

    prompts: list[Prompt] = []
    columns: set[str] | None = None
    read_as: list[str] = []
    for index, source in enumerate(recipe.data.datasets):
        if source.role == "test":
            continue
        dataset = load_source(source, index)
        column = _prompt_column(dataset.column_names, recipe.sample.prompt_column, source_file, index)
        reader, how = _reader(column, dataset[0] if len(dataset) else None)
        read_as.append(f"{source.path}: {how}")
        others = set(dataset.column_names) - ({column, "input"} if column == "instruction" else {column})
        columns = others if columns is None else columns & others
        for position in weighted_indices(len(dataset), source.weight, source_seed(recipe.data.seed, index)):
            row = dataset[position]
            try:
                messages = formats.with_system(reader(row), recipe.data.system_prompt)
            except ValueError as err:
                raise _row_problem(source_file, index, source.path, position, str(err)) from None
            prompts.append(Prompt(messages=messages, row=_json_row(row, others)))
    if recipe.sample.max_prompts is not None:
        prompts = prompts[: recipe.sample.max_prompts]
    if not prompts:
        raise UserError(Problem(source=source_file, path="data.datasets", message="the sources hold no prompts"))
    return PromptSet(prompts=prompts, columns=columns or set(), read_as=read_as)


def _prompt_column(found: list[str], wanted: str | None, source_file: str, index: int) -> str:
    if wanted is not None:
        if wanted not in found:
            raise UserError(
                Problem(
                    source=source_file,
                    path="sample.prompt_column",
                    message=f"data.datasets.{index} has no column {wanted!r}; its columns: {', '.join(found)}",
                )
            )
        return wanted
    for column in AUTO_COLUMNS:
        if column in found:
            return column
    raise UserError(
        Problem(
            source=source_file,
            path=f"data.datasets.{index}",
            message=f"no prompt column among {', '.join(found) or 'none'}; sample reads one of"
            f" {', '.join(AUTO_COLUMNS)}, or the column sample.prompt_column names",
        )
    )


def _reader(column: str, first: dict[str, Any] | None) -> tuple[Callable[[dict], list[dict]], str]:
    """How a row's prompt becomes messages, and how to say so."""
    if column == "conversations" and first is not None and _is_sharegpt(first.get(column)):
        return (lambda row: formats.without_answer(formats.sharegpt_messages(row[column], column), column)), (
            "ShareGPT conversations minus the final assistant turn"
        )
    if column in ("messages", "conversations"):
        return (lambda row: formats.without_answer(formats.messages_of(row[column], column), column)), (
            f"{column} minus the final assistant turn"
        )
    if column == "instruction":
        return _alpaca, "instruction (+ input) as the user turn"
    return (lambda row: formats.prompt_messages(row[column], column)), f"{column} column"


def _is_sharegpt(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "from" in value[0]


def _alpaca(row: dict[str, Any]) -> list[dict[str, Any]]:
    instruction = str(row.get("instruction") or "")
    extra = str(row.get("input") or "")
    if not instruction.strip():
        raise ValueError("instruction is empty")
    return [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]


def _json_row(row: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """The kept columns, as JSON values (datasets may hand back types json cannot write)."""
    return json.loads(json.dumps({key: row[key] for key in sorted(keep)}, default=str))


def _row_problem(source_file: str, index: int, path: str, position: int, message: str) -> UserError:
    return UserError(
        Problem(source=source_file, path=f"data.datasets.{index}", message=f"{path}, row {position}: {message}")
    )
