"""The memory plan: the bytes a run needs on each device, worked out from the recipe, the launch plan and the
model's config.json before anything is loaded, and what fits.

    memory_plan(recipe, launch_plan, device_bytes=None) -> MemoryPlan
    activations_fit(recipe, launch_plan, device_bytes) -> bool | None   (for the automatic settings)

`MemoryPlan` has the per-device bytes of the weights (and a frozen reference model), gradients, optimizer
states, activations with and without activation checkpointing, the logits, and a fixed runtime allowance;
the totals with and without checkpointing; whether the run fits in `device_bytes`, whether it needs
checkpointing to fit (`needs_checkpointing`: what `training.gradient_checkpointing` left unset should become),
the largest micro-batch that fits, and a suggestion when it does not. `as_dict()` is its JSON form.

The formulas (P parameters, T trainable, N processes, b bytes of a weight, a of an activation element):
- weights: P x b; 4-bit base weights 0.5 byte per linear weight plus quantisation constants, 8-bit 1 byte,
  the rest (embeddings, norms, head) in the compute dtype. With bf16/fp16 autocast over float32 weights,
  autocast keeps a half-precision copy of each trainable linear weight for the backward pass.
- gradients: T x b. Optimizer states: AdamW keeps two states per trainable weight in the weight's dtype
  (8-bit optimizers: 1 byte each, SGD none, Adafactor about none); DeepSpeed keeps float32 states and, over
  half-precision weights, a float32 master copy (12 bytes per weight).
- sharding: ZeRO stage 1 divides the optimizer states by N, stage 2 the gradients too, stage 3 and FSDP's
  full shard the weights as well; offloaded states and weights move to CPU memory (`cpu_offload`). DDP keeps
  a second copy of the gradients in its communication buckets.
- activations per micro-batch: sequences x length x layers x (5h + 3q + 2kv + 4i) elements of `a` bytes,
  where h is the hidden size, q and kv the query and key/value widths and i the MLP width: what autograd
  keeps of a Llama-style layer with a fused attention kernel (two norm inputs and outputs, the rotated
  queries and keys, the values, the attention output and its copy, and the MLP's gate, up, activation and
  product; these count 4h, and measurement on the CPU shows one more h-wide tensor per layer alive). A
  kernel without fusion (eager) adds heads x length x 2 per token: the score matrix and its softmax; alignkit's
  blocked_matmul (the CPU default) keeps heads x (length + 128) / 2 probabilities per token in the compute
  dtype. LoRA
  with dropout keeps each adapted layer's dropped-out input and dropout's mask besides (one byte per element
  on a GPU; on a CPU dropout multiplies by a noise tensor of the activations' dtype).
  With checkpointing only each layer's input (h) is kept, plus one layer recomputed in full. Both add the
  backward pass's working set, 1.5 layers' activations: the gradients of a layer's activations while its
  backward runs, and the allocator's blocks of that size kept for reuse (measured on the CPU).
- logits: sequences x length x vocab x 4 bytes x 3: the logits, their float32 log-softmax for the loss and
  its gradient (a reward model's head has one output instead of vocab).
- sequences per micro-batch: the per-device batch, twice that for methods that train on pairs (chosen and
  rejected run together); the method says whether it holds a frozen reference model (it does not under
  LoRA, where the reference is the base with adapters disabled, nor with precomputed reference log-probs).
- runtime: a fixed allowance for what the framework itself holds (CUDA context and kernels on a GPU; on a
  CPU the data pipeline, thread pools and allocator slack, measured by benchmarks/memory_plan.py).

It is an upper bound in one respect: gradients are counted beside the full activations, although the
backward pass frees activations as gradients fill. Light on purpose: nothing heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from alignkit.launch.device_memory import human
from alignkit.launch.model_shape import ModelShape, read_shape
from alignkit.train.attention import BLOCK
from alignkit.train.batching import WORTH_GROUPING, split_sizes

ACTIVATIONS_PER_TOKEN = {"hidden": 5, "query": 3, "key_value": 2, "intermediate": 4}
"""Elements autograd keeps per token of one decoder layer, per unit of each width (see the module docstring)."""
BACKWARD_LAYERS = 1.5
"""The backward pass's working set, in layers' activations: a layer's backward holds the gradients of its
activations while it computes them, and the allocator keeps blocks of that size for reuse (measured)."""
LOGIT_COPIES = 3
"""float32 copies of the logits alive at the loss: the logits, their log-softmax and its gradient."""
RUNTIME_BYTES = {"cuda": 1 << 30, "cpu": 80 << 20}
"""The framework's own memory: CUDA context and kernels (about 1 GiB); on a CPU, what a training run holds
beyond its imports that does not grow with the model (measured on the tiny and reference workloads)."""
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_QUANT_BYTES = {4: 0.5 + 0.127 / 8 * 4, 8: 1.0 + 4 / 64}
"""Bytes per quantised weight: 4-bit NF4 with double-quantised block constants, 8-bit with its scales."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device, and what fits in `device_bytes`."""

    model: str
    parameters: int
    trainable_parameters: int
    profile: str
    processes: int
    micro_batch: int
    sequences_per_micro_batch: int
    max_length: int
    checkpointing: bool
    """Whether the run checkpoints activations: the recipe's value, or the plan's answer when unset."""
    weights: int
    reference_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    activations_checkpointed: int
    logits: int
    runtime: int
    total: int
    """Without activation checkpointing."""
    total_checkpointed: int
    device_bytes: int | None
    device: str
    """What device_bytes describes (a GPU's memory, CPU RAM, or --gpu-memory)."""
    cpu_offload: int = 0
    """Bytes moved to CPU memory by an offloading profile (per process)."""
    fits: bool | None = None
    """The run as configured (with its checkpointing) fits; None when the device memory is unknown."""
    needs_checkpointing: bool | None = None
    """Fits only with activation checkpointing; None when the device memory is unknown."""
    max_micro_batch: int | None = None
    """Largest per-device batch that fits with the run's checkpointing (0: not even one)."""
    max_micro_batch_checkpointed: int | None = None
    total_if_split: int | None = None
    """The total with the run's checkpointing if it splits its batches by length, which the automatic sampling
    decides on the data at the start of the run; None where the run surely splits or never does."""
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def suggestion(self) -> str:
        return self.suggestions[0] if self.suggestions else ""

    @property
    def planned_total(self) -> int:
        return self.total_checkpointed if self.checkpointing else self.total

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "suggestion": self.suggestion, "planned_total": self.planned_total}

    def lines(self) -> list[str]:
        """The plan as short lines of text, for the `plan` command and the dry run."""
        state = f"{human(self.weights)} weights"
        if self.reference_weights:
            state += f" + {human(self.reference_weights)} reference model"
        state += f" + {human(self.gradients)} gradients + {human(self.optimizer_states)} optimizer states"
        lines = [
            f"model: {self.parameters / 1e9:.3g}B parameters, {self.trainable_parameters / 1e6:.4g}M trained"
            f" ({self.model})",
            f"per device ({self.profile}, {self.processes} process{'es' if self.processes > 1 else ''}): {state}",
            f"activations ({self.sequences_per_micro_batch} sequences x {self.max_length} tokens):"
            f" {human(self.activations)}"
            f", {human(self.activations_checkpointed)} with checkpointing; logits {human(self.logits)};"
            f" runtime {human(self.runtime)}",
            f"total: {human(self.total)} without checkpointing, {human(self.total_checkpointed)} with",
        ]
        if self.cpu_offload:
            lines.append(f"offloaded to CPU memory: {human(self.cpu_offload)} per process")
        lines.append(self._verdict())
        lines += [f"suggestion: {text}" for text in self.suggestions] + [f"note: {text}" for text in self.notes]
        return lines

    def _verdict(self) -> str:
        if self.device_bytes is None:
            return f"device memory: unknown ({self.device}); pass --gpu-memory to check what fits"
        used = "with" if self.checkpointing else "without"
        fits = "fits" if self.fits else "does not fit"
        return (
            f"{fits} in {human(self.device_bytes)} ({self.device}) {used} checkpointing; largest micro-batch"
            f" {self.max_micro_batch} ({self.max_micro_batch_checkpointed} with checkpointing)"
        )


@dataclass(frozen=True)
class _Run:
    """What the plan needs to know about the run, decided once from the recipe and the launch plan."""

    shape: ModelShape
    method: Any
    section: Any
    device: str
    weight_bytes: int
    activation_bytes: int
    quant_bits: int | None
    lora: Any
    sequences: int
    length: int
    reference: bool
    logit_width: int
    autocast_copy: bool
    eager: bool
    blocked: bool
    repeat_kv: bool
    optimizer: str
    sampling: str | None


def memory_plan(recipe, launch_plan, device_bytes: int | None = None, *, device: str = "") -> MemoryPlan:
    """The memory plan of `recipe` run as `launch_plan`, checked against `device_bytes` per process if given.

    Raises:
        UserError: when the model's config.json is not on this machine or is not a decoder's.
    """
    from alignkit.launch.sharding import sharding_of

    run = _run_of(recipe, launch_plan)
    sharding = sharding_of(launch_plan)
    state = _state_bytes(run, sharding, launch_plan.world_size)
    batch = launch_plan.per_device_train_batch_size
    splitting = _splitting(recipe, run, launch_plan)
    if splitting == "surely":
        batch = split_sizes(batch)[0]
    full, ckpt, logits = (_activations(run, batch, False), _activations(run, batch, True), _logits(run, batch))
    static = state["weights"] + state["reference_weights"] + state["gradients"] + state["optimizer_states"]
    static += RUNTIME_BYTES.get(launch_plan.device, RUNTIME_BYTES["cpu"])
    chosen = recipe.training.gradient_checkpointing
    split = None
    if splitting == "maybe":
        rows = split_sizes(batch)[0]
        split = (rows, *(static + _activations(run, rows, kept) + _logits(run, rows) for kept in (False, True)))
    plan = dict(
        model=run.shape.source.removesuffix("/config.json"),
        parameters=run.shape.parameters(),
        trainable_parameters=_trainable(run),
        profile=launch_plan.profile,
        processes=launch_plan.world_size,
        micro_batch=batch,
        sequences_per_micro_batch=batch * run.sequences,
        max_length=run.length,
        weights=state["weights"],
        reference_weights=state["reference_weights"],
        gradients=state["gradients"],
        optimizer_states=state["optimizer_states"],
        cpu_offload=state["cpu_offload"],
        activations=full,
        activations_checkpointed=ckpt,
        logits=logits,
        runtime=RUNTIME_BYTES.get(launch_plan.device, RUNTIME_BYTES["cpu"]),
        total=static + full + logits,
        total_checkpointed=static + ckpt + logits,
        device_bytes=device_bytes,
        device=device or ("given" if device_bytes else "unknown"),
        notes=sharding.notes,
    )
    if device_bytes is None:
        result = MemoryPlan(checkpointing=bool(chosen) if chosen is not None else True, **plan)
    else:
        result = _judged(plan, run, static, device_bytes, chosen)
    return _with_split(result, split) if split else result


def _with_split(plan: MemoryPlan, split: tuple[int, int, int]) -> MemoryPlan:
    """The plan with what a run that splits its batches would need, beside the whole batches' totals."""
    rows, total, total_checkpointed = split
    if_split = total_checkpointed if plan.checkpointing else total
    note = (
        f"if the run splits each batch into micro-batches of {rows} (the automatic sampling does where random"
        f" batches of the prepared rows would be {WORTH_GROUPING:.0%} or more padding): {human(if_split)}"
        f" {'with' if plan.checkpointing else 'without'} checkpointing; the totals above are for whole batches"
    )
    return MemoryPlan(**{**asdict(plan), "total_if_split": if_split, "notes": [*plan.notes, note]})


def activations_fit(recipe, launch_plan, device_bytes: int | None) -> bool | None:
    """Whether the run fits without activation checkpointing; None when it cannot be planned (no local
    config.json, no device memory). The automatic `training.gradient_checkpointing` turns checkpointing on
    exactly when this is not True."""
    from alignkit.errors import UserError

    if device_bytes is None:
        return None
    try:
        plan = memory_plan(recipe, launch_plan, device_bytes)
    except UserError:
        return None
    return plan.total <= device_bytes


def _judged(plan: dict, run: _Run, static: int, device_bytes: int, chosen: bool | None) -> MemoryPlan:
    fits_full = plan["total"] <= device_bytes
    fits_ckpt = plan["total_checkpointed"] <= device_bytes
    checkpointing = bool(chosen) if chosen is not None else not fits_full
    per_row_full = _activations(run, 1, False) + _logits(run, 1)
    per_row_ckpt = _activations(run, 1, True) + _logits(run, 1)
    largest_full = max(0, (device_bytes - static) // per_row_full)
    largest_ckpt = max(0, (device_bytes - static) // per_row_ckpt)
    result = MemoryPlan(
        checkpointing=checkpointing,
        fits=fits_ckpt if checkpointing else fits_full,
        needs_checkpointing=not fits_full,
        max_micro_batch=largest_ckpt if checkpointing else largest_full,
        max_micro_batch_checkpointed=largest_ckpt,
        **plan,
    )
    suggestions = _suggestions(result, run, static, per_row_ckpt, chosen)
    return MemoryPlan(**{**asdict(result), "suggestions": suggestions})


def _suggestions(plan: MemoryPlan, run: _Run, static: int, per_row_ckpt: int, chosen: bool | None) -> list[str]:
    device = plan.device_bytes or 0
    if plan.fits:
        if plan.checkpointing and not plan.needs_checkpointing and chosen:
            return ["activations fit without recomputation: training.gradient_checkpointing: false is faster"]
        return []
    if plan.total_checkpointed <= device:
        return ["turn on activation checkpointing (training.gradient_checkpointing: true, or leave it unset)"]
    found = []
    if plan.max_micro_batch_checkpointed:
        found.append(
            f"lower training.per_device_train_batch_size to {plan.max_micro_batch_checkpointed} with checkpointing"
            " and raise gradient_accumulation_steps to keep the effective batch"
        )
    state = static - plan.runtime
    room = device - plan.runtime - per_row_ckpt
    sharded = plan.profile in ("zero3", "zero3-offload", "fsdp", "fsdp-qlora")
    if run.device == "cuda" and not sharded and room > 0 and math.ceil(state / room) > 1:
        found.append(
            f"shard the weights and optimizer states: --launch zero3 (or fsdp) on at least"
            f" {math.ceil(state / room)} GPUs"
        )
    if run.quant_bits is None:
        found.append("train a 4-bit base with LoRA adapters: --qlora")
    if plan.profile != "zero3-offload":
        found.append("offload the optimizer states and weights to CPU memory: --launch zero3-offload")
    return found


def _run_of(recipe, launch_plan) -> _Run:
    from alignkit.recipe.automatic import apply, decide, planned_facts

    recipe = apply(recipe, decide(recipe, planned_facts(launch_plan.device)))
    shape = read_shape(recipe.model.name_or_path)
    method, section = recipe.method, recipe.section
    quant = recipe.quantization
    bits = (4 if quant.load_in_4bit else 8 if quant.load_in_8bit else None) if quant else None
    weight_dtype = _weight_dtype(recipe, launch_plan.device)
    half_compute = launch_plan.mixed_precision in ("bf16", "fp16") or weight_dtype != "float32"
    attention = recipe.model.attn_implementation
    return _Run(
        shape=shape,
        method=method,
        section=section,
        device=launch_plan.device,
        weight_bytes=_DTYPE_BYTES[weight_dtype],
        activation_bytes=2 if half_compute else 4,
        quant_bits=bits,
        lora=recipe.peft,
        sequences=method.sequences_per_row,
        length=getattr(section, "max_length", None) or shape.max_positions,
        reference=recipe.peft is None and method.reference_model(section),
        logit_width=int(method.model.init_kwargs.get("num_labels", shape.vocab)),
        autocast_copy=launch_plan.mixed_precision in ("bf16", "fp16") and weight_dtype == "float32",
        eager=attention == "eager",
        blocked=attention == "blocked_matmul",
        # blocked_matmul runs each key/value head against its query heads in one product, never repeating it.
        repeat_kv=attention == "eager" or not recipe.training.drop_padding_mask,
        optimizer=recipe.training.optim,
        sampling=recipe.training.train_sampling_strategy,
    )


def _weight_dtype(recipe, device: str) -> str:
    """The dtype the weights load in (alignkit.train.modeling.resolve_dtype, without torch)."""
    wanted = recipe.model.dtype
    if wanted == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    if device == "cpu" and wanted != "float32" and recipe.quantization is None:
        return "float32"
    return wanted


def _lora_parameters(run: _Run) -> int:
    lora = run.lora
    if lora is None:
        return 0
    chosen = set(run.shape.linears()) if lora.target_modules == "all-linear" else set(lora.target_modules)
    per_layer = sum(lora.r * (i + o) for name, (i, o) in run.shape.linears().items() if name in chosen)
    saved = set(lora.modules_to_save or ())
    full = (
        run.shape.vocab * run.shape.hidden * (("embed_tokens" in saved) + ("lm_head" in saved and not run.shape.tied))
    )
    return per_layer * run.shape.layers + full


def _trainable(run: _Run) -> int:
    if run.lora is None:
        return run.shape.parameters()
    return _lora_parameters(run)


def _state_bytes(run: _Run, sharding, processes: int) -> dict[str, int]:
    shape = run.shape
    trainable = _trainable(run)
    linear = shape.linear_parameters() * shape.layers
    if run.quant_bits:
        frozen = linear * _QUANT_BYTES[run.quant_bits] + (shape.parameters() - linear) * run.weight_bytes
    else:
        frozen = shape.parameters() * run.weight_bytes
    adapters = 4 * trainable if run.lora is not None else 0
    weights = frozen + adapters
    if run.autocast_copy:
        weights += 2 * (trainable if run.lora is not None else linear)
    grad_bytes = 4 if run.lora is not None else run.weight_bytes
    gradients = trainable * grad_bytes
    optimizer = trainable * _optimizer_bytes(run.optimizer, grad_bytes, sharding.deepspeed)
    if sharding.ddp_buckets:
        gradients *= 2
    shares = sharding.shares(processes)
    offload = optimizer * sharding.offload_optimizer + weights * sharding.offload_weights
    return {
        "weights": int(weights / shares["weights"]) if not sharding.offload_weights else int(weights / shape.layers),
        "reference_weights": int(frozen / shares["weights"]) if run.reference else 0,
        "gradients": int(gradients / shares["gradients"]),
        "optimizer_states": 0 if sharding.offload_optimizer else int(optimizer / shares["optimizer_states"]),
        "cpu_offload": int(offload / shares["optimizer_states"]),
    }


def _optimizer_bytes(optimizer: str, weight_bytes: int, deepspeed: bool) -> float:
    """Bytes of optimizer state per trainable weight."""
    if optimizer in ("sgd", "adafactor"):
        return 0.0
    states = 1 if "lion" in optimizer or optimizer in ("adagrad", "rmsprop", "rmsprop_bnb") else 2
    if "8bit" in optimizer or "4bit" in optimizer:
        return states * (0.5 if "4bit" in optimizer else 1.0)
    if deepspeed:
        return states * 4 + (4 if weight_bytes < 4 else 0)
    return states * weight_bytes * (2 if optimizer == "adamw_anyprecision" else 1)


def _activations(run: _Run, batch: int, checkpointed: bool) -> int:
    """Activation bytes of a micro-batch of `batch` rows: every layer's, or with checkpointing each layer's
    input plus one layer recomputed in full."""
    shape = run.shape
    tokens = batch * run.sequences * run.length
    per_layer = _layer_elements(run)
    final_norm = 2 * shape.hidden
    kept = shape.layers * shape.hidden + per_layer if checkpointed else shape.layers * per_layer
    working = BACKWARD_LAYERS * _layer_elements(run, adapters=False)
    return int(tokens * (kept + final_norm + working) * run.activation_bytes)


def _splitting(recipe, run: _Run, launch_plan) -> str:
    """Whether the run's batches go through as micro-batches: "surely" when the recipe asks for
    `split_by_length`, "maybe" when the automatic sampling chose it (it then splits only data whose random
    batches would be mostly padding, decided on the data at the start of the run, so the plan keeps whole
    batches, its worst case, and gives the split total beside them), else "never"."""
    single = launch_plan.profile == "none" and launch_plan.world_size == 1
    if not (single and launch_plan.per_device_train_batch_size > 1):
        return "never"
    if recipe.training.train_sampling_strategy == "split_by_length":
        return "surely"
    return "maybe" if run.sampling == "split_by_length" else "never"


def _layer_elements(run: _Run, adapters: bool = True) -> float:
    """Elements autograd keeps per token of one decoder layer (`adapters`: with what LoRA's dropout adds)."""
    shape, c = run.shape, ACTIVATIONS_PER_TOKEN
    kv = shape.q_dim if run.repeat_kv else shape.kv_dim
    active = shape.intermediate * min(shape.experts_per_token, shape.experts)
    elements = c["hidden"] * shape.hidden + c["query"] * shape.q_dim + c["key_value"] * kv + c["intermediate"] * active
    if run.eager:
        elements += 2 * shape.heads * run.length
    if run.blocked:
        # Each query's block keeps its probabilities up to the block's end (on average half the length plus
        # half a block), in the compute dtype: the kernel's own backward needs nothing else of that size.
        elements += shape.heads * (run.length + min(run.length, BLOCK)) / 2
    if adapters and run.lora is not None and run.lora.dropout > 0:
        chosen = set(shape.linears()) if run.lora.target_modules == "all-linear" else set(run.lora.target_modules)
        inputs = sum(i for name, (i, _) in shape.linears().items() if name in chosen)
        # The dropped-out input, and dropout's mask: one byte on a GPU, the activation's dtype on a CPU, where
        # dropout multiplies by a noise tensor instead.
        elements += inputs * (1 + (1 / run.activation_bytes if run.device == "cuda" else 1))
    return elements


def _logits(run: _Run, batch: int) -> int:
    return batch * run.sequences * run.length * run.logit_width * 4 * LOGIT_COPIES


def local_plan(recipe, launch_plan) -> tuple[MemoryPlan | None, str]:
    """The plan against this machine's device memory, or (None, why) when the model's config.json is not on
    this machine; for `--dry-run`, which shows the plan but never fails for want of it."""
    from alignkit.errors import UserError
    from alignkit.launch.device_memory import device_memory

    device_bytes, label = device_memory(launch_plan.device, launch_plan.processes_per_machine)
    try:
        return memory_plan(recipe, launch_plan, device_bytes, device=label), ""
    except UserError as error:
        return None, "; ".join(problem.message for problem in error.problems)


def checkpointing_facts(recipe, launch_plan, device_bytes: int | None = None, label: str = "") -> dict[str, Any]:
    """`activations_fit` and `memory_reason` for the automatic settings (`alignkit.recipe.automatic.Facts`):
    whether the run fits with its activations kept, against `device_bytes` (default: this machine's device
    memory). Empty when no plan can be made (no local config.json, memory unknown): checkpointing stays on."""
    from alignkit.errors import UserError
    from alignkit.launch.device_memory import device_memory, human

    if device_bytes is None:
        device_bytes, label = device_memory(launch_plan.device, launch_plan.processes_per_machine)
    if device_bytes is None:
        return {}
    try:
        plan = memory_plan(recipe, launch_plan, device_bytes, device=label)
    except UserError:
        return {}
    kept = f"{human(plan.total)} with activations kept, of {human(device_bytes)} ({label or 'device memory'})"
    return {"activations_fit": plan.total <= device_bytes, "memory_reason": f"memory plan: {kept}"}
