"""Benchmark scores for `alignkit eval` from EleutherAI's lm-evaluation-harness (`lm-eval`), as its own CLI
gives them: `run_harness` runs lm-eval's tasks on a model folder and returns each task's metrics.

The model is a folder of a causal LM, or a LoRA adapter folder (adapter_config.json) evaluated on the base it
names, with the tokenizer saved beside it when there is one; an adapter that saved whole embedding matrices
(training added tokens and grew the vocabulary to a multiple of 8) is put on a base grown to the same size.
Remote code never runs. The tasks are names or YAML files (`alignkit.evaluation.harness_tasks`, whose
`check_tasks` this module re-exports); `check_model` and `check_tasks` judge model and tasks before any
weights load, and `run_harness` runs both checks first, reporting every problem at once. lm-eval's log, its
progress bars and what the programs it runs print are held back, and shown only when the run fails.
Nothing heavy is imported until a function runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.adapters import adapter_base
from alignkit.errors import Problem, UserError
from alignkit.evaluation.harness_tasks import (
    INSTALL,
    check_tasks,
    is_task_file,
    lm_eval_problem,
    task_manager,
    task_problems,
)
from alignkit.quiet import held_output, quiet_libraries

__all__ = ["INSTALL", "HarnessOutcome", "HarnessScore", "check_model", "check_tasks", "run_harness"]

_GIVE = "give a model folder (config.json), a LoRA adapter folder (adapter_config.json) or a Hub id"
# Weight names of the embedding and output matrices an adapter saves whole when training added tokens.
_VOCAB_MATRICES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


@dataclass(frozen=True)
class HarnessScore:
    """One metric of one task (or group) as lm-eval reports it."""

    task: str
    metric: str
    """lm-eval's metric name (`acc`); a filter other than `none` stays in it (`exact_match,strict-match`)."""
    value: float
    stderr: float | None
    """lm-eval's standard error of the value; None where it reports none (N/A, or bootstrap turned off)."""
    samples: int
    """Documents scored (after `limit`); for a group, those of all its tasks."""
    higher_is_better: bool | None = None


@dataclass
class HarnessOutcome:
    """What a `run_harness` call measured, and with what."""

    results: list[HarnessScore]
    versions: dict[str, Any]
    """{"lm_eval": its version, "transformers": its version, "tasks": {task: the task's version}}."""
    num_fewshot: dict[str, int]
    """Few-shot examples each task was given (a task whose config fixes 0 keeps 0 whatever was asked)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The arguments the run was made with, defaults resolved (device, dtype, whether the chat template applied)."""


def check_model(model: str, *, source: str, where: str = "") -> list[Problem]:
    """What is wrong with the model folder `model`, read from its JSON files (a Hub id is judged when it loads)."""
    local = Path(model).expanduser()
    if not local.exists():
        looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
        return [Problem(source=source, path=where, message=f"no such folder: {model}; {_GIVE}")] if looks_local else []
    if not local.is_dir():
        return [Problem(source=source, path=where, message=f"{model} is a file, not a model folder; {_GIVE}")]
    adapter, config = local / "adapter_config.json", local / "config.json"
    try:
        if adapter.is_file():
            message = _adapter_problem(model, json.loads(adapter.read_text(encoding="utf-8")))
        elif config.is_file():
            message = _config_problem(model, json.loads(config.read_text(encoding="utf-8")))
        else:
            message = f"{model} holds neither config.json nor adapter_config.json, so no model; {_GIVE}"
    except (OSError, ValueError) as err:
        message = f"cannot read the model's configuration in {model}: {err}"
    return [] if message is None else [Problem(source=source, path=where, message=message)]


def _adapter_problem(model: str, config: dict[str, Any]) -> str | None:
    base = config.get("base_model_name_or_path")
    if not base:
        return f"{model}/adapter_config.json names no base model (base_model_name_or_path)"
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        return f"{model} is a {config['task_type']} adapter; lm-eval scores causal language models (CAUSAL_LM)"
    looks_local = base.startswith(("/", ".", "~")) or base.count("/") > 1
    if looks_local and not Path(base).expanduser().is_dir():
        return f"the adapter {model} names the base model {base} (adapter_config.json), which is no folder"
    return None


def _config_problem(model: str, config: dict[str, Any]) -> str | None:
    architectures = config.get("architectures") or []
    if architectures and architectures[0].endswith("ForSequenceClassification"):
        return f"{model} is a sequence classifier ({architectures[0]}); lm-eval scores causal language models"
    return None


def run_harness(
    model: str,
    tasks: list[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    apply_chat_template: bool | None = None,
    batch_size: int = 8,
    seed: int = 1234,
    device: str | None = None,
    dtype: str | None = None,
    source: str = "alignkit eval",
    model_field: str = "model",
    tasks_field: str = "tasks",
) -> HarnessOutcome:
    """Score `model` on `tasks` with lm-eval, as `lm-eval run --model hf` scores them given the same arguments.

    `apply_chat_template` None applies the tokenizer's chat template when it has one. `device` defaults to cuda
    when torch sees one, else cpu; `dtype` to float32 on cpu and the checkpoint's own on cuda. `seed` seeds
    Python, numpy, torch and the few-shot sampler. Problems name `source`, and `model_field` or
    `tasks_field.{index}`.

    Raises:
        UserError: lm-eval missing, tasks or a model folder that cannot be used (all of them, found before any
            weights load), a model that does not load, or a chat template asked for that the tokenizer lacks.
    """
    missing = lm_eval_problem()
    if missing is not None:
        raise UserError(Problem(source=source, path=tasks_field, message=missing))
    quiet_libraries()
    import lm_eval
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("float32" if device == "cpu" else "auto")
    problems = check_model(model, source=source, where=model_field)
    base = None if problems else adapter_base(model)
    model_args = _model_args(model, base, dtype)
    # lm-eval's CLI hands the model arguments to the tasks too (a few tasks read the tokenizer's name there)
    manager = task_manager(tasks, metadata=dict(model_args))
    with held_output("lm_eval"):
        problems += task_problems(tasks, source=source, where=tasks_field, manager=manager)
        if problems:
            raise UserError(problems)
        lm = _load_lm(model_args, batch_size=batch_size, device=device, source=source, where=model_field)
        chat = _chat_template(lm, apply_chat_template, model, source=source, where=model_field)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[str(Path(task).expanduser().resolve()) if is_task_file(task) else task for task in tasks],
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            device=device,
            apply_chat_template=chat,
            fewshot_as_multiturn=chat,  # as lm-eval's CLI: few-shot examples become turns when a template applies
            task_manager=manager(),
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    config = {
        "model": model,
        "base_model": base,
        "tasks": list(tasks),
        "num_fewshot": num_fewshot,
        "limit": limit,
        "apply_chat_template": chat,
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
        "dtype": dtype,
    }
    return _outcome(results, config)


def _model_args(model: str, base: str | None, dtype: str) -> dict[str, Any]:
    """lm-eval's `hf` model arguments for a model folder, or for an adapter folder on its base."""
    args: dict[str, Any] = {"pretrained": base or model, "dtype": dtype, "trust_remote_code": False}
    if base is not None:
        args["peft"] = model
        # Training saves the tokenizer beside the adapter, with the chat template and any tokens it added.
        if (Path(model).expanduser() / "tokenizer_config.json").is_file():
            args["tokenizer"] = model
    return args


def _load_lm(model_args: dict[str, Any], *, batch_size: int, device: str, source: str, where: str):
    """lm-eval's model over `model_args`; one that does not load is a UserError at `where`, naming the path."""
    import torch
    from lm_eval.models.huggingface import HFLM

    adapter = model_args.get("peft")
    try:
        rows = _saved_vocab_rows(adapter) if adapter is not None else None
        if rows is None:
            return HFLM(**model_args, batch_size=batch_size, device=device)
        tokenizer = model_args.get("tokenizer", model_args["pretrained"])
        return HFLM(pretrained=_resized_adapter(model_args, rows, device), tokenizer=tokenizer, batch_size=batch_size)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, RuntimeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        name = f"the adapter {adapter!r} on {model_args['pretrained']!r}" if adapter else repr(model_args["pretrained"])
        message = f"cannot load {name}: {lines[-1] if lines else type(err).__name__}"
        raise UserError(Problem(source=source, path=where, message=message)) from None


def _saved_vocab_rows(adapter: str) -> int | None:
    """Rows of the embedding or output matrix an adapter saved whole (training added tokens), else None."""
    weights = Path(adapter).expanduser() / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as saved:
        for name in saved.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
            if "lora_" not in name and any(part in name for part in _VOCAB_MATRICES):
                return saved.get_slice(name).get_shape()[0]
    return None


def _resized_adapter(model_args: dict[str, Any], rows: int, device: str):
    """The base with its embeddings grown to the adapter's saved rows, and the adapter on it.

    lm-eval's own `peft` loading resizes the base to the tokenizer's length, but alignkit grows embeddings to a
    multiple of 8 (alignkit.train.modeling): the saved matrices would then not fit.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = model_args["dtype"]
    base = AutoModelForCausalLM.from_pretrained(
        model_args["pretrained"], dtype=dtype if dtype == "auto" else getattr(torch, dtype), trust_remote_code=False
    )
    if base.get_input_embeddings().weight.shape[0] != rows:
        base.resize_token_embeddings(rows)
    return PeftModel.from_pretrained(base, model_args["peft"]).to(device).eval()


def _chat_template(lm, asked: bool | None, model: str, *, source: str, where: str) -> bool:
    """Whether the run applies the chat template: as asked, or when the tokenizer has one if nothing was asked."""
    has = bool(getattr(lm.tokenizer, "chat_template", None))
    if asked and not has:
        message = f"the tokenizer of {model} has no chat template to apply; do not ask for apply_chat_template"
        raise UserError(Problem(source=source, path=where, message=message))
    return has if asked is None else asked


def _outcome(results: dict[str, Any], config: dict[str, Any]) -> HarnessOutcome:
    """lm-eval's results as scores: one per task (or group) and metric, the stderr beside its value."""
    import lm_eval
    import transformers

    better = results.get("higher_is_better", {})
    scores = []
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, comma, kept = key.partition(",")
            if not comma or metric.endswith("_stderr") or not _number(value):
                continue
            stderr = values.get(f"{metric}_stderr,{kept}")
            score = HarnessScore(
                task=task,
                metric=metric if kept == "none" else key,
                value=float(value),
                stderr=float(stderr) if _number(stderr) else None,
                samples=_samples(task, results),
                higher_is_better=better.get(task, {}).get(metric),
            )
            scores.append(score)
    versions = {
        "lm_eval": lm_eval.__version__,
        "transformers": transformers.__version__,
        "tasks": dict(results.get("versions", {})),
    }
    return HarnessOutcome(results=scores, versions=versions, num_fewshot=dict(results.get("n-shot", {})), config=config)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _samples(task: str, results: dict[str, Any]) -> int:
    """Documents scored for a task, or for a group the sum over its tasks."""
    counts = results.get("n-samples", {})
    if task in counts:
        return int(counts[task]["effective"])
    return sum(_samples(child, results) for child in results.get("group_subtasks", {}).get(task, []))
