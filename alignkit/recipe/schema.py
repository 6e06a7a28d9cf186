"""The recipe models: for each method, its own section joined with the sections every method shares.

A recipe is validated once, here, at the edge; everything downstream (launcher, trainer factory, data
layer) trusts it. The models are derived from `alignkit.methods.METHODS` (a method's section lives in its
module), and each carries its method: `recipe.method` is the `Method`, so no one passes a method name
alongside a recipe.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, ClassVar

from pydantic import create_model, model_validator

from alignkit.recipe.sections import (
    DataSection,
    HubSection,
    LaunchSection,
    LoggingSection,
    ModelSection,
    PeftSection,
    QuantizationSection,
    Section,
    TrainingSection,
    at,
)

if TYPE_CHECKING:
    from alignkit.methods.method import Method


class RecipeBase(Section):
    """Sections shared by every method; `method` is set on each method's recipe model."""

    method: ClassVar[Method]
    description: str = ""
    """One line on what the recipe trains."""
    model: ModelSection
    data: DataSection
    training: TrainingSection = TrainingSection()
    peft: PeftSection | None = None
    """LoRA settings; unset trains all weights."""
    quantization: QuantizationSection | None = None
    launch: LaunchSection = LaunchSection()
    logging: LoggingSection = LoggingSection()
    hub: HubSection = HubSection()

    @property
    def stage(self) -> str:
        """The stage kind of the recipe: its method's name (alignkit.stages)."""
        return self.method.name

    @property
    def section(self) -> Section:
        """The method's own section (`recipe.sft` for an sft recipe)."""
        return getattr(self, self.method.name)

    @model_validator(mode="after")
    def _shared_rules(self) -> RecipeBase:
        quant = self.quantization
        if quant is not None and (quant.load_in_4bit or quant.load_in_8bit) and self.peft is None:
            raise ValueError(
                at("quantization", "quantized weights cannot be trained directly; add a peft section or use --qlora")
            )
        has_test = any(s.role in ("test", "both") for s in self.data.datasets) or self.data.test_split_size
        if self.training.eval_strategy != "no" and not has_test:
            raise ValueError(
                at(
                    "training.eval_strategy",
                    f"{self.training.eval_strategy!r} needs test data; add a source with role test, set"
                    " data.test_split_size, or set eval_strategy to 'no'",
                )
            )
        self.method.recipe_rules(self)  # the method's own rules across sections (a batch size it needs, ...)
        return self


@functools.cache
def recipe_model(method: Method) -> type[RecipeBase]:
    """The recipe model of `method` (`SftRecipe`): the shared sections plus the method's own, defaulted."""
    name = f"{method.name.capitalize()}Recipe"
    model = create_model(
        name,
        __base__=RecipeBase,
        __module__=__name__,
        __doc__=f"A recipe for `alignkit {method.name}`.",
        **{method.name: (method.section, method.section())},
    )
    model.method = method
    # Registered under its name so that recipes pickle (datasets' worker processes, spawned ranks).
    globals()[name] = model
    return model
