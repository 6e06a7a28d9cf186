"""The kinds of stage a recipe file can be for: each training method (`alignkit.methods.METHODS`) and the
steps that train nothing but make data for the next stage (`sample`: generate, score, select).

The registry finds `<kind>.yaml` files, the resolver validates them with the kind's recipe model, a run
directory's record is read back with it, and pipelines chain any of them. Light: the recipe models are
imported only when asked for.
"""

from __future__ import annotations

import importlib

from alignkit.methods import METHODS

SAMPLE = "sample"
_OTHER_KINDS = {SAMPLE: "alignkit.sampling.recipe"}
"""Stage kinds that are not training methods -> the module whose `RECIPE` is their recipe model."""

STAGE_KINDS: tuple[str, ...] = (*METHODS, *_OTHER_KINDS)


def is_training(kind: str) -> bool:
    """Whether `kind` trains a model (a method of `METHODS`) rather than making data."""
    return kind in METHODS


def recipe_model(kind: str) -> type:
    """The pydantic recipe model of a stage kind; an unknown kind raises KeyError."""
    if kind in METHODS:
        return METHODS[kind].recipe
    return importlib.import_module(_OTHER_KINDS[kind]).RECIPE


def known_stage(name: str) -> str:
    """`name` when it is a stage kind; a ValueError naming the choices otherwise."""
    if name not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {name!r}; one of {', '.join(STAGE_KINDS)}")
    return name
