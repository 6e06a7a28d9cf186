"""Conversion of flat Alignment Handbook / TRL YAML configs into alignkit's sectioned recipes.

Both handbook layouts are understood: the old one (`dataset_mixer` + `dataset_splits`, TRL < 0.13 key
names) and the new one (`dataset_mixture`, `dataset_name`, TRL 1.x names). Every key that is renamed or
dropped produces one notice, so the user sees exactly what changed. A key that neither alignkit nor TRL
knows is an error, as in a native recipe: the handbook's own old parser silently ignored such keys.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import Problem, UserError, either
from alignkit.methods import METHODS
from alignkit.methods.method import Method
from alignkit.recipe.handbook_data import DATA_KEYS, convert_data

NATIVE_TOP_KEYS = frozenset(
    {"description", "model", "data", "training", "peft", "quantization", "launch", "logging", "hub"} | set(METHODS)
)

# flat key -> native path, for keys of the shared sections and renamed ones; the method's own section is written
# as "{m}". A key named like a field of a method's section needs no entry: it goes to that field.
_MOVES: dict[str, str] = {
    "model_name_or_path": "model.name_or_path",
    "model_revision": "model.revision",
    "tokenizer_name_or_path": "model.tokenizer_name_or_path",
    "torch_dtype": "model.dtype",
    "dtype": "model.dtype",
    "attn_implementation": "model.attn_implementation",
    "use_flash_attention_2": "model.attn_implementation",
    "trust_remote_code": "model.trust_remote_code",
    "lora_r": "peft.r",
    "lora_alpha": "peft.alpha",
    "lora_dropout": "peft.dropout",
    "lora_target_modules": "peft.target_modules",
    "lora_modules_to_save": "peft.modules_to_save",
    "use_rslora": "peft.use_rslora",
    "use_dora": "peft.use_dora",
    "load_in_4bit": "quantization.load_in_4bit",
    "load_in_8bit": "quantization.load_in_8bit",
    "bnb_4bit_quant_type": "quantization.bnb_4bit_quant_type",
    "use_bnb_nested_quant": "quantization.bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage": "quantization.bnb_4bit_quant_storage",
    "chat_template": "data.chat_template",
    "dataset_num_proc": "data.num_proc",
    "preprocessing_num_workers": "data.num_proc",
    "output_dir": "training.output_dir",
    "overwrite_output_dir": "training.overwrite_output_dir",
    "num_train_epochs": "training.num_train_epochs",
    "max_steps": "training.max_steps",
    "per_device_train_batch_size": "training.per_device_train_batch_size",
    "per_device_eval_batch_size": "training.per_device_eval_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "learning_rate": "training.learning_rate",
    "lr_scheduler_type": "training.lr_scheduler_type",
    "lr_scheduler_kwargs": "training.lr_scheduler_kwargs",
    "warmup_ratio": "training.warmup_ratio",
    "warmup_steps": "training.warmup_steps",
    "optim": "training.optim",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "seed": "training.seed",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "gradient_checkpointing_kwargs": "training.gradient_checkpointing_kwargs",
    "eval_strategy": "training.eval_strategy",
    "evaluation_strategy": "training.eval_strategy",
    "eval_steps": "training.eval_steps",
    "save_strategy": "training.save_strategy",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.save_total_limit",
    "use_liger_kernel": "training.use_liger_kernel",
    "ddp_timeout": "training.ddp_timeout",
    "report_to": "logging.report_to",
    "logging_steps": "logging.logging_steps",
    "run_name": "logging.run_name",
    "log_level": "logging.log_level",
    "wandb_project": "logging.wandb_project",
    "wandb_entity": "logging.wandb_entity",
    "wandb_run_group": "logging.wandb_run_group",
    "push_to_hub": "hub.push_to_hub",
    "hub_model_id": "hub.hub_model_id",
    "hub_private_repo": "hub.private",
    "hub_model_revision": "hub.revision",
    "hub_revision": "hub.revision",
    "hub_strategy": "hub.strategy",
    "max_seq_length": "{m}.max_length",
    "dataset_text_field": "{m}.text_column",
}

# Why a renamed key changed name, shown in its notice.
_RENAME_REASONS = {
    "max_seq_length": "TRL 0.20 renamed it max_length",
    "preprocessing_num_workers": "TRL renamed it dataset_num_proc",
    "evaluation_strategy": "transformers renamed it eval_strategy",
    "hub_model_revision": "the handbook never used it; alignkit pushes to this branch",
    "use_bnb_nested_quant": "double quantisation",
    "use_flash_attention_2": "not a handbook key; its intent is flash-attention 2",
}

# Keys with no effect in alignkit, and why.
_DROPPED = {
    "do_train": "alignkit always trains",
    "do_eval": "training.eval_strategy decides whether to evaluate",
    "logging_strategy": "logging.logging_steps sets the interval",
    "logging_first_step": "always on",
    "remove_unused_columns": "alignkit keeps exactly the columns each method needs",
    "dataset_kwargs": "the chat template controls special tokens in TRL 1.x",
    "auto_insert_empty_system_msg": "set data.system_prompt to insert a system message",
    "truncation_side": "alignkit truncates prompts from the left for the preference methods",
    "base_model_revision": "the adapter's base is loaded at the revision it records",
    "model_code_revision": "unused by the handbook",
    "lora_task_type": "the method sets it: CAUSAL_LM, or SEQ_CLS for a reward model",
    "use_peft": "the LoRA keys become a peft section",
    "dataset_streaming": "alignkit prepares data once and caches it",
    "env": "set environment variables in your shell or launcher",
    "bf16": "training.mixed_precision",
    "fp16": "training.mixed_precision",
    "group_by_length": "training.train_sampling_strategy",
}


def known_flat_keys(method: Method) -> set[str]:
    """Every key a flat config for `method` may hold."""
    return set(_MOVES) | set(_DROPPED) | DATA_KEYS | set(method.trl_fields) | _section_fields()


def _section_fields() -> set[str]:
    return {name for m in METHODS.values() for name in m.section.model_fields}


def _target(key: str, method: Method) -> str | None:
    """The native path of a flat key, or None when it is not a recipe field (a TRL field, dropped, unknown)."""
    if key in _MOVES:
        return _MOVES[key].format(m=method.name)
    if key in _section_fields():
        return f"{method.name}.{key}"
    return None


def is_flat(data: dict[str, Any]) -> bool:
    """Whether a YAML mapping is a flat handbook/TRL config rather than a native recipe."""
    if "model_name_or_path" in data:
        return True
    return not ({"model", "data"} & data.keys()) and bool(set(data) - NATIVE_TOP_KEYS)


@dataclass
class Converted:
    """A flat config turned into a native recipe mapping."""

    recipe: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    """Native dotted path -> the flat key it came from, to point errors at what the user wrote."""


def convert_flat(data: dict[str, Any], method: Method, source: str) -> Converted:
    """Convert a flat handbook/TRL config for `method` into a native recipe mapping.

    Raises:
        UserError: for unknown keys and data settings the handbook itself would refuse.
    """
    out = Converted()
    problems: list[Problem] = []

    def put(path: str, value: Any, flat_key: str) -> None:
        earlier = out.origins.get(path)
        if earlier is not None and earlier != flat_key and earlier in data:
            problems.append(Problem(source=source, path=flat_key, message=_set_twice(path, earlier, flat_key)))
            return
        node = out.recipe
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        out.origins[path] = flat_key

    for key, value in data.items():
        if key in DATA_KEYS:
            continue
        target = _target(key, method)
        if target is not None:
            section, _, leaf = target.partition(".")
            if section == method.name and leaf not in method.section.model_fields:
                problem = _other_method_key(key, leaf, method, source, data)
                if problem is not None:
                    problems.append(problem)
                else:
                    out.notices.append(f"dropped {key} (not used by {method.name})")
                continue
            put(target, _normalise_value(key, value), key)
            reason = method.flat_key_reasons.get(key, _RENAME_REASONS.get(key))
            out.notices.append(f"renamed {key} -> {target}" + (f" ({reason})" if reason else ""))
        elif key in _DROPPED:
            _convert_dropped(key, value, data, put, out, source)
        elif key in method.trl_fields:
            put(f"training.extra.{key}", value, key)
            out.notices.append(f"passed {key} through to TRL as training.extra.{key}")
        else:
            problems.append(Problem(source=source, path=key, message=_unknown_key_message(key, method)))

    convert_data(data, source, put, out, problems)
    if "use_peft" in data and not data["use_peft"]:
        out.recipe.pop("peft", None)
    if data.get("load_in_4bit") and "use_bnb_nested_quant" not in data:
        put("quantization.bnb_4bit_use_double_quant", False, "load_in_4bit")
    if problems:
        raise UserError(problems)
    return out


def _set_twice(path: str, earlier: str, key: str) -> str:
    """Two flat keys that give one field (max_seq_length and max_length): which one to keep, when one is current."""
    both = f"sets {path}, as {earlier} does"
    leaf = path.rsplit(".", 1)[-1]
    current = [k for k in (earlier, key) if k == leaf] or [k for k in (earlier, key) if k not in _RENAME_REASONS]
    if len(current) != 1:
        return f"{both}; keep one of them"
    keep = current[0]
    drop = key if keep == earlier else earlier
    why = _RENAME_REASONS.get(drop, "its older name")
    return f"{both}; keep {keep} and remove {drop} ({why})"


def _other_method_key(key: str, leaf: str, method: Method, source: str, data: dict[str, Any]) -> Problem | None:
    """A key that says the config was written for another method (beta in an sft config), or None.

    Of the methods the key belongs to, the one whose keys the whole config uses most is named first.
    """
    owners = [m for m in METHODS.values() if m is not method and leaf in m.defining_keys]
    if not owners:
        return None
    owners.sort(key=lambda m: -len(m.defining_keys & data.keys()))
    owners = [m.name for m in owners]
    return Problem(
        source=source,
        path=key,
        message=f"a {either(owners)} setting in a {method.name} config; run"
        f" `alignkit {owners[0]} --recipe {source}`, or remove the key",
    )


def _normalise_value(key: str, value: Any) -> Any:
    if key == "use_flash_attention_2":
        return "flash_attention_2" if value else "auto"
    if key == "packing_strategy" and value == "ffd":
        return "bfd"  # TRL renamed first-fit-decreasing to best-fit-decreasing
    if key in ("torch_dtype", "dtype") and value is None:
        return "auto"
    if key == "report_to" and value in ("all",):
        return ["tensorboard", "wandb"]
    return value


def _convert_dropped(key: str, value: Any, data: dict, put, out: Converted, source: str) -> None:
    if key in ("bf16", "fp16"):
        if key == "bf16" and value:
            put("training.mixed_precision", "bf16", key)
        elif key == "fp16" and value:
            put("training.mixed_precision", "fp16", key)
        elif not data.get("bf16") and not data.get("fp16") and (key == "bf16" or "bf16" not in data):
            put("training.mixed_precision", "no", key)  # once, though both keys say it
        out.notices.append(f"renamed {key}: {value} -> training.mixed_precision")
        return
    if key == "group_by_length":
        if value:
            put("training.train_sampling_strategy", "group_by_length", key)
        out.notices.append("renamed group_by_length -> training.train_sampling_strategy (transformers 5)")
        return
    if key == "use_peft" and value:
        out.recipe.setdefault("peft", {})
        out.notices.append("use_peft: true -> a peft section with the lora_* values")
        return
    out.notices.append(f"dropped {key} ({_DROPPED[key]})")


def _unknown_key_message(key: str, method: Method) -> str:
    close = difflib.get_close_matches(key, sorted(known_flat_keys(method)), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown key for a flat {method.name} config (neither alignkit nor TRL reads it){hint}"
