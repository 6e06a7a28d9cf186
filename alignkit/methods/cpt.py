"""cpt: continued pretraining on raw text, packed causal language modelling with TRL's SFTTrainer.

No chat template: the text column is used as it is, and the trainer tokenizes and packs it (wrapped packing
by default, so long documents continue into the next sequence instead of being cut).
"""

from __future__ import annotations

from typing import Any

from alignkit.data import formats
from alignkit.methods.method import TEXT_ROWS, DataNeeds, Method
from alignkit.methods.sft import TRL_FIELDS, PackingStrategy, sft_config, sft_trainer
from alignkit.recipe.bounds import TokenLength
from alignkit.recipe.sections import Section


class CptSection(Section):
    """Continued pretraining on raw text."""

    text_column: str = "text"
    max_length: TokenLength = 1024
    packing: bool = True
    packing_strategy: PackingStrategy = "wrapped"


def _trl_settings(section: CptSection) -> dict[str, Any]:
    return {
        # The data layer hands the trainer the text under this name, whatever the source column was.
        "dataset_text_field": "text",
        "max_length": section.max_length,
        "packing": section.packing,
        "packing_strategy": section.packing_strategy,
        "completion_only_loss": False,
    }


def _card_rows(section: CptSection) -> list[tuple[str, str]]:
    return [("max length", str(section.max_length))]


METHOD = Method(
    name="cpt",
    title="continued pretraining",
    section=CptSection,
    default_learning_rate=2.0e-5,
    qlora_training={"learning_rate": 2.0e-4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
    trl_fields=TRL_FIELDS,
    trl_config=sft_config,
    trl_settings=_trl_settings,
    trainer=sft_trainer,
    data=DataNeeds(
        formats=(formats.TEXT,),
        rows=TEXT_ROWS,
        chat_template=False,
        text_column_field="text_column",
        row_fields=("text_column", "max_length"),
    ),
    card_rows=_card_rows,
    packs=lambda section: section.packing,
    groups_by_length=True,
    progress_metrics=("mean_token_accuracy",),
)
