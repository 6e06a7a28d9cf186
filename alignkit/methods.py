"""The training methods alignkit offers: the one list the CLI, the recipes and the trainer factory share."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.recipe.schema import CptRecipe, DpoRecipe, OrpoRecipe, SftRecipe, _RecipeBase


@dataclass(frozen=True)
class Method:
    """A training method: its subcommand, recipe model and defaults."""

    name: str
    recipe: type[_RecipeBase]
    summary: str
    default_learning_rate: float
    example: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "cpt",
            CptRecipe,
            "Continued pretraining on raw text (packed causal language modelling).",
            2.0e-5,
            "alignkit cpt --recipe gpt2-nl",
        ),
        Method(
            "sft",
            SftRecipe,
            "Supervised fine-tuning on conversations or prompt/completion pairs.",
            2.0e-5,
            "alignkit sft --recipe zephyr-7b-gemma --qlora",
        ),
        Method(
            "dpo",
            DpoRecipe,
            "Direct Preference Optimization on chosen/rejected pairs (IPO, APO and other losses too).",
            1.0e-6,
            "alignkit dpo --recipe zephyr-7b-gemma --set dpo.beta=0.1",
        ),
        Method(
            "orpo",
            OrpoRecipe,
            "Odds-Ratio Preference Optimization: SFT and preference in one step, no reference model.",
            1.0e-6,
            "alignkit orpo --recipe zephyr-141b-a35b --dry-run",
        ),
    )
}
