"""The training methods alignkit offers, one module each; `METHODS` is the one list of them.

The CLI's commands, the recipe models, the handbook importer, `recipes list` and the tests' parametrisations
are all derived from `METHODS`. A new method is a module here that builds a `Method` (see `method.py`),
plus one entry below. Importing this package loads pydantic and the section models only; TRL, torch and
datasets load when a method's trainer or config is asked for.
"""

from __future__ import annotations

from alignkit.methods import cpt, dpo, orpo, sft
from alignkit.methods.method import Method

METHODS: dict[str, Method] = {m.name: m for m in (cpt.METHOD, sft.METHOD, dpo.METHOD, orpo.METHOD)}


def known_method(name: str) -> str:
    """`name` when it is a method alignkit offers; a ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}")
    return name
