"""Numeric bounds of recipe fields: finite numbers within what the training machinery can take.

A value that validates must also run: an epoch count of 1e308 or a batch of 1e20 would pass a plain "positive"
check and then overflow deep inside the trainer or the data loader. `within` makes a field's type refuse such
values up front, naming the allowed range; `finite_values` refuses infinite and NaN numbers anywhere inside
the free-form mappings that are passed on verbatim (`training.extra`, scheduler kwargs). Plain pydantic types,
no torch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

NOT_FINITE = "must be a finite number"


def _number(value: Any) -> float | None:
    """The number a value stands for (a numeric string included), or None when it is no number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _amount(number: float) -> str:
    return f"{int(number):,}" if number == int(number) else f"{number:g}"


def within(low: float, high: float, kind: Any = int, *, above_low: bool = False) -> Any:
    """`kind` bounded to `low`..`high` (above `low` when `above_low`); values outside say the allowed range.

    The check runs before the type's own, so an overlong number gets the range, not an integer-size error.
    """
    whole = kind is int
    if above_low:
        allowed = f"must be above {_amount(low)} and at most {_amount(high)}"
    else:
        allowed = f"must be {'a whole number ' if whole else ''}from {_amount(low)} to {_amount(high)}"

    def check(value: Any) -> Any:
        number = _number(value)
        if number is None:
            return value  # not a number at all: the type's own error says what is expected
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(NOT_FINITE)
        if number > high or number < low or (above_low and number == low):
            raise ValueError(allowed)
        return value

    return Annotated[kind, BeforeValidator(check)]


Seed = within(0, 2**32 - 1)
"""A random seed: numpy takes 0..2**32-1."""
TokenLength = within(1, 2**24)
"""A length in tokens (max_length, max_prompt_length): far beyond any model's context, short of overflow."""


def _finite_tree(value: Any, path: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_tree(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite_tree(item, f"{path}.{index}" if path else str(index))
    elif isinstance(value, float | str) and (number := _number(value)) is not None and not math.isfinite(number):
        # Tagged with the key inside the mapping, so the problem names `training.extra.<key>`.
        raise ValueError(f"[{path}] {NOT_FINITE} (given: {value!r})" if path else NOT_FINITE)


def _all_finite(value: dict[str, Any]) -> dict[str, Any]:
    _finite_tree(value)
    return value


finite_values = AfterValidator(_all_finite)
"""Refuses infinite or NaN numbers (or text such as "inf" that means one) anywhere inside a free-form mapping."""
