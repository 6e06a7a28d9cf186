"""The `python` scorer: a function of yours, named `package.module:function`, scores the completions.

It is called as TRL calls a GRPO reward function, so one function serves both:

    function(prompts=[[{"role": ..., "content": ...}, ...], ...],
             completions=[[{"role": "assistant", "content": text}], ...],
             **{column: [row[column] for row in rows]})   # every prompt-row column but `prompt`

and returns one number (or None, "cannot say") per completion. The module is imported once, when the
scorer is built; the recipe named it, which is why its code runs. The current directory is searched after
the installed packages, so a `rewards.py` beside where you run alignkit is found as `rewards:...`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from alignkit.errors import Problem, UserError

if TYPE_CHECKING:
    from alignkit.scoring.specs import PythonSpec

# Keywords the call gives itself; a row column of the same name would collide with them.
_RESERVED = frozenset({"prompt", "prompts", "completions"})
_PER_COMPLETION = "it must return one number (or None) per completion"


def load_function(target: str) -> Callable[..., Any]:
    """The function `package.module:function` names; a UserError (source: the target) saying why not."""
    module_name, _, name = target.partition(":")
    try:
        module = _import(module_name)
    except Exception as err:  # whatever the module raises while importing, the user fixes it there
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        raise _problem(
            target,
            f"cannot import {module_name}: {last}; install it, or run from the folder that holds it (or add that"
            " folder to PYTHONPATH)",
        ) from None
    if not hasattr(module, name):
        raise _problem(target, f"{module_name} has no attribute {name}; define it there, or name a function it has")
    function = getattr(module, name)
    if not callable(function):
        raise _problem(target, f"{target} is {_a(type(function).__name__)}, not a function")
    return function


def signature_problem(function: Callable[..., Any]) -> str | None:
    """Why `function` cannot take the keyword call above (TRL also passes completion_ids, trainer_state and
    every row column), or None when it can. A function whose signature cannot be read is given the benefit."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    problems = []
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        problems.append(
            "takes no **kwargs, but it is also given completion_ids, trainer_state and every prompt-row"
            " column by keyword"
        )
    required = [p.name for p in parameters if p.default is p.empty and p.kind is p.POSITIONAL_ONLY]
    if required:
        problems.append(f"has positional-only parameters ({', '.join(required)}), but it is called by keyword")
    if not problems:
        return None
    return (
        f"{'; '.join(problems)}: define it as `def {getattr(function, '__name__', 'reward')}(completions, **kwargs)`"
        " (prompts and the row columns arrive in kwargs)"
    )


def _import(module_name: str):
    # A console script's sys.path lacks the current directory, which `python -m` would have first; appended
    # last here, it cannot shadow an installed package.
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.append(here)
    return importlib.import_module(module_name)


def _problem(target: str, message: str) -> UserError:
    return UserError(Problem(source=target, message=message))


class PythonScorer:
    """Scores completions with the recipe's function, checking that it returns one number per completion."""

    def __init__(self, spec: PythonSpec, label: str):
        self.label = label
        self.weight = spec.weight
        self.target = spec.function
        self.function = load_function(spec.function)

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        keys = dict.fromkeys(key for row in rows for key in row if key not in _RESERVED)
        result = self.function(
            prompts=prompts,
            completions=[[{"role": "assistant", "content": text}] for text in completions],
            **{key: [row.get(key) for row in rows] for key in keys},
        )
        return _values(result, len(completions), self.target)

    def close(self) -> None:
        """Nothing to free: the module stays imported."""


def _values(result: Any, count: int, target: str) -> list[float | None]:
    """`result` as one float (or None) per completion; a UserError naming what came back otherwise."""
    if hasattr(result, "tolist") and not isinstance(result, str | bytes):
        result = result.tolist()  # a numpy array or a torch tensor
    if isinstance(result, tuple):
        result = list(result)
    if not isinstance(result, list):
        raise _problem(target, f"returned {_shown(result)}, not a list; {_PER_COMPLETION}")
    if len(result) != count:
        values = "value" if len(result) == 1 else "values"
        raise _problem(target, f"returned {len(result)} {values} for {count} completions; {_PER_COMPLETION}")
    values: list[float | None] = []
    for index, value in enumerate(result):
        if value is None:
            values.append(None)
        elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
            values.append(float(value))
        else:
            raise _problem(
                target, f"returned {_shown(value)} at index {index}; each value must be a finite number or None"
            )
    return values


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{_a(type(value).__name__)} ({text})"


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
