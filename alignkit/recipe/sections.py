"""The recipe sections every method shares (model, data, training, peft, ...), and the base of all sections.

A method's own section (`sft:`, `dpo:`, ...) lives in its module under `alignkit/methods/`; the recipe
models that join them are built in `alignkit.recipe.schema`. Every section forbids unknown keys, so a typo
is an error rather than a silently ignored setting, and every number is finite and bounded to what the
machinery downstream can take (alignkit.recipe.bounds). Types stay plain (strings, numbers, literals): nothing
here imports torch or TRL. The schemas are built on first validation (`defer_build`), so merely importing
the sections (as `--help` does, to list the methods) costs little.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignkit.recipe import vocab
from alignkit.recipe.bounds import Seed, finite_values, within


class Section(BaseModel):
    """Base of every recipe section: strict, immutable, documented by attribute docstrings."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, defer_build=True, allow_inf_nan=False
    )


Dtype = Literal["auto", "bfloat16", "float16", "float32"]
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def _normalise_dtype(value: Any) -> Any:
    if value is None:
        return "auto"
    if isinstance(value, str):
        return _DTYPE_ALIASES.get(value.lower(), value.lower())
    return value


class ModelSection(Section):
    """Which model to start from and how to load it."""

    name_or_path: str = Field(min_length=1)
    """Hub id or local folder of the model, or of a LoRA adapter whose base is loaded under it."""
    revision: str = "main"
    """Branch, tag or commit of the model on the Hub."""
    tokenizer_name_or_path: str | None = None
    """Tokenizer to use instead of the model's own."""
    dtype: Dtype = "auto"
    """Weights dtype: auto, bfloat16, float16 or float32. bf16/fp16 fall back to float32 on a CPU."""
    attn_implementation: Literal[
        "auto", "eager", "sdpa", "blocked_matmul", "flash_attention_2", "flash_attention_3"
    ] = "auto"
    """Attention kernel. auto picks flash-attention 2 when installed and on CUDA, SDPA on other GPUs, and on a CPU
    blocked_matmul (alignkit's causal attention as blocked matrix products, faster there than SDPA's kernel)."""
    trust_remote_code: bool = False
    """Run model code from the Hub repository. Off unless you trust the repository."""
    use_kernels: bool = False
    """Let transformers swap layers for kernels it downloads from the Hub (the `kernels` package). Off: no
    downloaded code runs, the run is reproducible, and an offline machine loads the model."""
    merge_adapter: bool = False
    """When name_or_path is a LoRA adapter: merge it into its base before training a new adapter."""

    _dtype = field_validator("dtype", mode="before")(_normalise_dtype)


class DatasetSource(Section):
    """One source of a data mixture."""

    path: str = Field(min_length=1)
    """Hub dataset id, local data file (jsonl, json, parquet, csv, arrow), folder of them, or save_to_disk folder."""
    name: str | None = None
    """Dataset configuration name (the Hub's `name`, the handbook's `config`)."""
    split: str = "train"
    """Split to read; slice syntax such as `train[:10%]` is allowed."""
    columns: list[str] | None = None
    """Columns to keep before format detection; all when unset."""
    weight: within(0, 1000, float) = 1.0
    """Fraction of this source's rows to use (seeded random rows). Above 1 oversamples."""
    role: Literal["train", "test", "both"] = "train"
    """Whether the rows feed training, evaluation or both. Unset: test when the split name says test."""

    @model_validator(mode="before")
    @classmethod
    def _infer_role(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("role") is None:
            split = str(data.get("split") or "train").split("[", 1)[0].lower()
            data = {**data, "role": "test" if "test" in split else "train"}
        return data


class DataSection(Section):
    """The data mixture and how it is prepared."""

    datasets: list[DatasetSource] = Field(min_length=1)
    """Sources, mixed by weight."""
    test_split_size: within(0, 10**12, float, above_low=True) | None = None
    """Re-split the pooled rows into train/test: a fraction below 1 or a row count."""
    seed: Seed = 0
    """Seed of subsampling, oversampling, shuffling and re-splitting."""
    chat_template: str | None = None
    """A named template (chatml, zephyr) or inline Jinja. Unset: the tokenizer's, else ChatML."""
    system_prompt: str | None = None
    """System message inserted into conversations that have none."""
    num_proc: within(1, 4096) | None = None
    """Worker processes for preprocessing."""
    decontaminate: list[str] = Field(default_factory=list)
    """Local benchmark files (jsonl or txt of strings); training rows containing them are removed."""

    @field_validator("test_split_size")
    @classmethod
    def _split_size(cls, value: float | None) -> float | None:
        if value is not None and value >= 1 and value != int(value):
            raise ValueError("must be a fraction below 1 or a whole number of rows")
        return value

    @model_validator(mode="after")
    def _no_source_twice(self) -> DataSection:
        seen: dict[tuple, int] = {}
        for index, source in enumerate(self.datasets):
            key = (source.path, source.name, source.split)
            if key in seen:
                raise ValueError(
                    at(
                        f"datasets.{index}",
                        f"repeats datasets.{seen[key]} (path {source.path!r}, split {source.split!r});"
                        " give each source once and use weight to oversample",
                    )
                )
            seen[key] = index
        return self


class TrainingSection(Section):
    """Optimisation, schedule, precision, checkpointing: the knobs people change."""

    output_dir: str | None = None
    """Where the run writes checkpoints and the final model. Unset: outputs/<recipe>-<method>."""
    overwrite_output_dir: bool = False
    """Start over even if output_dir holds a finished run."""
    num_train_epochs: within(0, 10_000, int | float, above_low=True) = 1
    max_steps: within(-1, 10**9) = -1
    """Stop after this many optimizer steps; -1 runs num_train_epochs."""
    per_device_train_batch_size: within(1, 100_000) = 8
    per_device_eval_batch_size: within(1, 100_000) = 8
    gradient_accumulation_steps: within(1, 100_000) = 1
    learning_rate: float | None = Field(None, gt=0)
    """Peak learning rate. Unset: the method's default, written into the frozen recipe."""
    lr_scheduler_type: vocab.Scheduler = "linear"
    lr_scheduler_kwargs: Annotated[dict[str, Any], finite_values] = Field(default_factory=dict)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of the steps spent warming up."""
    warmup_steps: within(0, 10**9) = 0
    """Warm-up steps; give this or warmup_ratio, not both."""
    optim: vocab.Optimizer = "adamw_torch"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    seed: Seed = 42
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision. auto: bf16 where the device computes it natively, else none."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass. Unset: only when the memory plan says they would not fit."""
    gradient_checkpointing_kwargs: Annotated[dict[str, Any], finite_values] = Field(
        default_factory=lambda: {"use_reentrant": False}
    )
    train_sampling_strategy: Literal["random", "sequential", "group_by_length", "split_by_length"] | None = None
    """Unset: group_by_length when rows are not packed and the method allows it; on a CPU split_by_length for
    methods whose training grouping would change (dpo: random batches, each run as micro-batches of similar
    length that accumulate into one step); else random."""
    drop_padding_mask: bool | None = None
    """Leave out the padding mask of right-padded batches so SDPA runs its causal kernel (exact). Unset: on
    unless a flash-attention kernel is used."""
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: within(0, 10**9, int | float, above_low=True) | None = None
    """Evaluate every N steps (a fraction below 1: of the total steps)."""
    save_strategy: Literal["no", "steps", "epoch", "best"] = "steps"
    save_steps: within(0, 10**9, int | float, above_low=True) = 500
    save_total_limit: within(1, 1_000_000) | None = 2
    use_liger_kernel: bool | None = None
    """Unset: on for CUDA when liger-kernel is installed."""
    ddp_timeout: within(1, 365 * 24 * 3600) = 1800
    """Seconds a rank waits for the others (long preprocessing on rank 0 needs more)."""
    extra: Annotated[dict[str, Any], finite_values] = Field(default_factory=dict)
    """Any other TRL/transformers config field, passed through verbatim (checked against TRL's names)."""

    @model_validator(mode="after")
    def _warmup_once(self) -> TrainingSection:
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("give warmup_ratio or warmup_steps, not both")
        return self


class LoggingSection(Section):
    """Where metrics go."""

    report_to: list[Literal["none", "tensorboard", "wandb", "mlflow", "trackio", "comet_ml"]] = Field(
        default_factory=lambda: ["none"]
    )
    logging_steps: within(0, 10**9, int | float, above_low=True) = 10
    run_name: str | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical", "passive"] = "passive"
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_run_group: str | None = None

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class HubSection(Section):
    """Pushing the result to the Hugging Face Hub."""

    push_to_hub: bool = False
    hub_model_id: str | None = None
    private: bool = False
    revision: str | None = None
    """Branch to push to (the handbook's hub_model_revision)."""
    strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] = "end"


class PeftSection(Section):
    """LoRA adapters (the only PEFT method alignkit trains today)."""

    r: within(1, 65_536) = 16
    """LoRA rank."""
    alpha: within(0, 1_000_000, int | float, above_low=True) = 16
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    use_rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    save_merged: bool = False
    """Also write the adapter merged into its (unquantized) base to output_dir/merged."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _single_module(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return [value]
        return value


class QuantizationSection(Section):
    """bitsandbytes quantisation of the frozen base weights (QLoRA)."""

    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Dtype | None = None
    """Unset: the model dtype (bfloat16 when that is auto)."""
    bnb_4bit_quant_storage: Dtype | None = None
    """Unset: equal to the compute dtype, which FSDP and ZeRO-3 require."""

    @field_validator("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage", mode="before")
    @classmethod
    def _dtypes(cls, value: Any) -> Any:
        return None if value is None else _normalise_dtype(value)

    @model_validator(mode="after")
    def _one_bit_width(self) -> QuantizationSection:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit cannot both be true; choose one")
        return self


LaunchProfile = Literal["none", "ddp", "zero2", "zero3", "zero3-offload", "fsdp", "fsdp-qlora"]


class LaunchSection(Section):
    """The hardware the recipe was made for, and how to spread it over processes."""

    profile: LaunchProfile = "none"
    """Default launch profile; `--launch` overrides it."""
    gpus: within(1, 1024) = 1
    """GPUs per node the recipe was tuned on (its effective batch size assumes them)."""
    nodes: within(1, 100_000) = 1


def at(path: str, message: str) -> str:
    """Tag a cross-field error with the dotted path it belongs to (pydantic only knows the model's own)."""
    return f"[{path}] {message}"


def check_prompt_length(max_prompt_length: int | None, max_length: int) -> None:
    if max_prompt_length is not None and max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length}) to leave room for"
            " the response"
        )
