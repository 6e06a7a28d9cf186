"""`--qlora`: turn any recipe into its QLoRA variant.

4-bit NF4 with double quantisation, compute and storage dtype set together (FSDP and ZeRO-3 shard only
tensors of one dtype, so the packed 4-bit weights must be stored in the compute dtype), LoRA on all linear
layers unless the recipe has its own LoRA settings, and the learning rate and batch shape of the handbook's
QLoRA recipes (zephyr-7b-beta, one GPU), which differ from full fine-tuning by an order of magnitude.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignkit.methods.method import Method

DEFAULT_LORA = {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}


def apply_qlora(recipe: dict[str, Any], method: Method) -> tuple[dict[str, Any], list[str]]:
    """Return the QLoRA variant of a raw recipe mapping for `method`, and notices saying what changed."""
    result = copy.deepcopy(recipe)
    quant = result.get("quantization") or {}
    already = bool(quant.get("load_in_4bit")) and result.get("peft") is not None
    dtype = str((result.get("model") or {}).get("dtype") or "auto")
    compute = quant.get("bnb_4bit_compute_dtype") or ("bfloat16" if dtype == "auto" else dtype)
    result["quantization"] = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant.get("bnb_4bit_quant_type", "nf4"),
        "bnb_4bit_use_double_quant": quant.get("bnb_4bit_use_double_quant", True),
        "bnb_4bit_compute_dtype": compute,
        "bnb_4bit_quant_storage": compute,
    }
    double = " with double quantisation" if result["quantization"]["bnb_4bit_use_double_quant"] else ""
    notices = [f"--qlora: base weights in 4-bit NF4{double}, compute and storage dtype {compute}"]
    if result.get("peft") is None:
        result["peft"] = dict(DEFAULT_LORA)
        notices.append("--qlora: LoRA r=16 alpha=16 dropout=0.05 on all linear layers")
    if not already:
        section = result.get(method.name)
        values = {**method.qlora_training, **method.qlora_batch(section if isinstance(section, dict) else {})}
        result.setdefault("training", {}).update(values)
        launch = result.setdefault("launch", {})
        launch.update({"gpus": 1, "nodes": 1})
        if launch.get("profile") not in (None, "none", "ddp"):
            launch["profile"] = "none"
        notices.append(
            f"--qlora: learning_rate {values['learning_rate']:g}, batch {values['per_device_train_batch_size']}"
            f" x {values['gradient_accumulation_steps']} accumulation on 1 GPU ({method.name}'s one-GPU QLoRA values)"
        )
    return result, notices
