"""Loading the model the recipe names: dtype, attention kernel, quantisation, LoRA.

A model path may also be a LoRA adapter (an SFT run's output): its base is loaded under it, and the adapter
is either trained further or merged first (`model.merge_adapter`). With LoRA no second reference model is
ever loaded: TRL uses the base with adapters disabled (or a frozen copy of a starting adapter) instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from alignkit.adapters import adapter_base
from alignkit.errors import Problem, UserError
from alignkit.hardware import Hardware
from alignkit.recipe.schema import RecipeBase

_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class LoadedModel:
    """The model ready for the trainer, the LoRA config to apply (if any), and what was decided on the way."""

    model: Any
    peft_config: Any | None
    base_model: str
    """The base model's id or path (the adapter's base when starting from an adapter)."""
    notices: list[str] = field(default_factory=list)


def resolve_dtype(recipe: RecipeBase, hardware: Hardware) -> tuple[Any, list[str]]:
    """The torch dtype to load weights in; half precision falls back to float32 on a CPU."""
    import torch

    wanted = recipe.model.dtype
    if wanted == "auto":
        if hardware.device == "cpu":
            return torch.float32, []
        return (torch.bfloat16 if hardware.bf16 else torch.float16), []
    if hardware.device == "cpu" and wanted in ("bfloat16", "float16") and recipe.quantization is None:
        return torch.float32, [f"model.dtype {wanted} falls back to float32 on a CPU (autocast still uses bf16)"]
    return getattr(torch, wanted), []


def resolve_attention(recipe: RecipeBase, hardware: Hardware) -> tuple[str, list[str]]:
    """The recipe's kernel (the automatic settings have chosen one for `auto`: flash-attention 2 on CUDA when
    installed, SDPA on other GPUs, blocked_matmul on a CPU); an explicit kernel the machine lacks falls back."""
    wanted = recipe.model.attn_implementation
    if wanted == "auto":
        return ("flash_attention_2" if hardware.flash_attn else "sdpa"), []
    if wanted.startswith("flash_attention") and not hardware.flash_attn:
        return "sdpa", [f"model.attn_implementation {wanted} needs flash-attn on CUDA; using sdpa here"]
    from alignkit.train.attention import loadable

    return loadable(wanted), []


def quantization_config(recipe: RecipeBase, compute_dtype: Any):
    """A BitsAndBytesConfig for the recipe, or None."""
    quant = recipe.quantization
    if quant is None or not (quant.load_in_4bit or quant.load_in_8bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quant.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = getattr(torch, quant.bnb_4bit_compute_dtype) if quant.bnb_4bit_compute_dtype else compute_dtype
    storage = getattr(torch, quant.bnb_4bit_quant_storage) if quant.bnb_4bit_quant_storage else compute
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage,
    )


def lora_config(recipe: RecipeBase, *, new_tokens: bool):
    """The LoRA config for the recipe's peft section, or None for full fine-tuning."""
    section = recipe.peft
    if section is None:
        return None
    from peft import LoraConfig

    needs = recipe.method.model
    modules_to_save = list(section.modules_to_save) if section.modules_to_save else None
    if new_tokens and modules_to_save is None:
        # Rows added for new special tokens start random; they must be trained, or the template tokens mean nothing.
        modules_to_save = ["embed_tokens", *needs.head_modules]
    if needs.new_head:
        # A head the checkpoint lacks (a reward model's score) starts random: LoRA alone would never train it.
        modules_to_save = list(dict.fromkeys([*(modules_to_save or []), *needs.head_modules]))
    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        modules_to_save=modules_to_save,
        use_dora=section.use_dora,
        use_rslora=section.use_rslora,
        bias=section.bias,
        task_type=needs.lora_task_type,
    )


def load_model(recipe: RecipeBase, hardware: Hardware, tokenizer, *, new_tokens: bool) -> LoadedModel:
    """Load the model (or adapter and its base) as the recipe says, ready to hand to a TRL trainer.

    The method says which kind of model (`Method.model`): a causal LM, or e.g. a sequence classifier built
    on a causal LM checkpoint, whose new head is initialised from the seed set before this call.
    """
    import transformers

    spec = recipe.model
    needs = recipe.method.model
    notices: list[str] = []
    dtype, more = resolve_dtype(recipe, hardware)
    notices += more
    attention, more = resolve_attention(recipe, hardware)
    notices += more
    quant = quantization_config(recipe, dtype)
    base = adapter_base(spec.name_or_path, spec.revision)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attention,
        "trust_remote_code": spec.trust_remote_code,
        # transformers fetches Hub kernels on CUDA whenever `kernels` is installed (it is one of its needs);
        # an offline machine then cannot load the model at all.
        "use_kernels": spec.use_kernels,
        "use_cache": not recipe.training.gradient_checkpointing,
        **needs.init_kwargs,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
        device_map = _kbit_device_map(hardware)
        if device_map is not None:
            kwargs["device_map"] = device_map
    source = base or spec.name_or_path
    try:
        auto_class = getattr(transformers, needs.auto_class)
        model = auto_class.from_pretrained(source, revision="main" if base else spec.revision, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(
            Problem(source="recipe", path="model.name_or_path", message=f"cannot load {source!r}: {err}")
        ) from None
    # The config's vocab size, not the embedding's shape: under ZeRO-3 every rank holds a 0-row shard of it.
    if new_tokens or len(tokenizer) > model.config.get_text_config().vocab_size:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
        notices.append(f"resized the embeddings to {len(tokenizer)} tokens for the chat template's special tokens")
    _align_special_tokens(model, tokenizer, generates=needs.generates)
    peft_config = lora_config(recipe, new_tokens=new_tokens)
    if base is not None:
        model, peft_config, more = _attach_adapter(model, spec, peft_config, needs.lora_task_type)
        notices += more
    return LoadedModel(model=model, peft_config=peft_config, base_model=source, notices=notices)


def _attach_adapter(model, spec, peft_config, task_type: str):
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(spec.name_or_path, revision=spec.revision)
    kind = config.task_type
    # An adapter trained for another task (an SFT adapter under a reward model) cannot be trained further
    # as this one: its weights are merged into the base, and the method's own model is trained from there.
    if spec.merge_adapter or (kind is not None and kind != task_type):
        if kind != task_type:
            config.task_type = None  # a plain PeftModel: the task's wrapper expects the adapter's model class
        merged = PeftModel.from_pretrained(model, spec.name_or_path, revision=spec.revision, config=config)
        merged = merged.merge_and_unload()
        what = "a new LoRA adapter" if peft_config is not None else "all weights"
        why = "" if spec.merge_adapter else f" (a {kind} adapter, and this method trains {task_type})"
        return merged, peft_config, [f"merged the adapter {spec.name_or_path} into its base{why}; training {what}"]
    adapted = PeftModel.from_pretrained(model, spec.name_or_path, revision=spec.revision, is_trainable=True)
    notices = [f"continuing to train the LoRA adapter {spec.name_or_path}"]
    if peft_config is not None:
        notices.append("the recipe's peft section is ignored: the adapter keeps its own LoRA settings")
    return adapted, None, notices


def sharded_by_engine() -> bool:
    """Whether ZeRO-3 or FSDP places the weights across ranks (known once the TRL config exists)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or is_deepspeed_zero3_enabled()


def _kbit_device_map(hardware: Hardware) -> dict[str, Any] | None:
    """Where each process puts its quantized copy; None when a sharding engine places the weights itself."""
    if sharded_by_engine():
        return None  # ZeRO-3 and FSDP shard the (4-bit) weights across ranks; a device map would pin them whole
    if hardware.device != "cuda":
        return {"": "cpu"}
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def match_adapter_dtype(model, recipe: RecipeBase) -> None:
    """Under ZeRO-3/FSDP, keep QLoRA adapters in the 4-bit storage dtype: the engines shard one dtype only.

    TRL casts a quantized model's trainable weights to bfloat16; with another compute dtype they would then
    disagree with the packed base weights they are sharded beside.
    """
    quant = recipe.quantization
    if quant is None or not quant.load_in_4bit:
        return
    if not sharded_by_engine():
        _full_modules_in_model_dtype(model, recipe)
        return
    import torch

    storage = getattr(torch, quant.bnb_4bit_quant_storage or quant.bnb_4bit_compute_dtype or "bfloat16")
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_magnitude_vector" not in name and param.dtype != storage:
            param.data = param.data.to(storage)


def _full_modules_in_model_dtype(model, recipe: RecipeBase) -> None:
    """Keep the modules QLoRA trains in full (a new head, resized embeddings) in the dtype of the hidden states.

    TRL casts a quantized model's trainable weights to bfloat16. LoRA layers cast their input to match, but a
    module trained in full takes the hidden states as they come: in a float32 model the two would disagree.
    """
    from alignkit.hardware import detect

    dtype, _ = resolve_dtype(recipe, detect())
    for name, param in model.named_parameters():
        if param.requires_grad and ".modules_to_save." in name and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _align_special_tokens(model, tokenizer, *, generates: bool = True) -> None:
    """Make the model's and the generation config's eos/pad/bos agree with the tokenizer.

    A model that does not generate (a sequence classifier) finds each sequence's end by its pad token id, so
    it always gets one: the tokenizer's pad token, else its end-of-sequence token (as TRL pads then).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None or generates else tokenizer.eos_token_id
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is None:
            continue
        config.eos_token_id = tokenizer.eos_token_id
        if pad is not None:
            config.pad_token_id = pad
        if tokenizer.bos_token_id is not None:
            config.bos_token_id = tokenizer.bos_token_id
