"""The training methods alignkit offers: the one list the CLI, the recipes and the trainer factory share.

Kept free of pydantic so that `alignkit --help` does not pay for building the recipe schema; a method's
recipe model is imported the first time it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alignkit.recipe.schema import _RecipeBase


@dataclass(frozen=True)
class Method:
    """A training method: its subcommand, recipe model and defaults."""

    name: str
    summary: str
    default_learning_rate: float
    example: str

    @property
    def recipe(self) -> type[_RecipeBase]:
        """The pydantic model of this method's recipes (`SftRecipe` for sft)."""
        from alignkit.recipe import schema

        return getattr(schema, f"{self.name.capitalize()}Recipe")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "cpt",
            "Continued pretraining on raw text (packed causal language modelling).",
            2.0e-5,
            "alignkit cpt --recipe gpt2-nl",
        ),
        Method(
            "sft",
            "Supervised fine-tuning on conversations or prompt/completion pairs.",
            2.0e-5,
            "alignkit sft --recipe zephyr-7b-gemma --qlora",
        ),
        Method(
            "dpo",
            "Direct Preference Optimization on chosen/rejected pairs (IPO, APO and other losses too).",
            1.0e-6,
            "alignkit dpo --recipe zephyr-7b-gemma --set dpo.beta=0.1",
        ),
        Method(
            "orpo",
            "Odds-Ratio Preference Optimization: SFT and preference in one step, no reference model.",
            1.0e-6,
            "alignkit orpo --recipe zephyr-141b-a35b --dry-run",
        ),
    )
}


def known_method(name: str) -> str:
    """`name` when it is a method alignkit offers; a ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}")
    return name
