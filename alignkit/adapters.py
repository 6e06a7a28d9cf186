"""LoRA adapters given where a model is expected: whether a model path is an adapter, and which base it names.

An SFT run trained with LoRA leaves an adapter, and the next stage (dpo from sft) names that folder as its
model; the tokenizer and the base weights are then found through the adapter's `base_model_name_or_path`.
"""

from __future__ import annotations

import json
from pathlib import Path


def adapter_base(name_or_path: str, revision: str = "main") -> str | None:
    """The base model recorded by a LoRA adapter at `name_or_path`, or None when it is not an adapter."""
    local = Path(name_or_path)
    if local.is_dir():
        config = local / "adapter_config.json"
        if not config.is_file():
            return None
        return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if local.exists():
        return None
    try:
        from peft import PeftConfig

        return PeftConfig.from_pretrained(name_or_path, revision=revision).base_model_name_or_path
    except Exception:  # not on the Hub, offline, or not an adapter: all mean "no adapter here"
        return None
