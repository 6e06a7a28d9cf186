"""The `reward_model` scorer: a sequence classifier with one output (an `alignkit rm` output) scores each
prompt + completion, read at the text's last token exactly as rm training read it.

The model is a folder or Hub id of an `AutoModelForSequenceClassification`, or a LoRA adapter of one
(adapter_config.json with task_type SEQ_CLS), merged into its base on load. Its tokenizer comes from the same
place, or for an adapter without tokenizer files from the adapter's base. Each candidate is rendered by
`alignkit.methods.rm.reward_text` and tokenized with the tokenizer's special tokens, as training did; a text
longer than `max_length` loses its start, so the end, where the reward is read, stays. Texts are batched
longest first (little padding; an out-of-memory shows in the first batch), padded on the right, and the
rewards come back in the candidates' order.

A model is loaded once per process however many scorers name it, and freed when the last of them closes.
Nothing heavy is imported until a model loads: `reward_model_problem` (used by `check_scorers`) reads JSON.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.adapters import adapter_base
from alignkit.errors import Problem, UserError
from alignkit.methods.rm import reward_text

if TYPE_CHECKING:
    from alignkit.scoring.specs import RewardModelSpec

_GIVE = "give a reward model (a sequence classifier with one output), such as a reward model alignkit trained"


def reward_model_problem(path: str) -> str | None:
    """What is wrong with a local reward-model path, read from its JSON files; None when nothing is, or when
    the path is no local one (a Hub id, checked when it loads)."""
    local = Path(path).expanduser()
    if not local.exists():
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path
        return f"no such folder: {path}; {_GIVE}, or a Hub id" if looks_local else None
    if not local.is_dir():
        return f"{path} is a file, not a model folder; {_GIVE}"
    adapter, config = local / "adapter_config.json", local / "config.json"
    try:
        if adapter.is_file():
            return _adapter_problem(path, json.loads(adapter.read_text(encoding="utf-8")).get("task_type"))
        if not config.is_file():
            return f"{path} holds neither config.json nor adapter_config.json, so no model; {_GIVE}"
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"cannot read the model's configuration in {path}: {err}"
    labels = len(data["id2label"]) if isinstance(data.get("id2label"), dict) else data.get("num_labels", 2)
    return _config_problem(path, data.get("architectures") or [], labels)


def _adapter_problem(path: str, task_type: str | None) -> str | None:
    if task_type == "SEQ_CLS":
        return None
    if task_type == "CAUSAL_LM":
        return (
            f"{path} is a LoRA adapter of a causal language model (task_type CAUSAL_LM), not of a reward model; {_GIVE}"
        )
    return f"{path} is a LoRA adapter with task_type {task_type}, not a reward model's (SEQ_CLS); {_GIVE}"


def _config_problem(path: str, architectures: list[str], num_labels: int) -> str | None:
    if not architectures:
        return None  # nothing recorded to judge by; the model says what it is when it loads
    name = architectures[0]
    if name.endswith("ForSequenceClassification"):
        if num_labels == 1:
            return None
        return f"{path} is a sequence classifier with {num_labels} outputs; a reward model has one: {_GIVE}"
    if name.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return f"{path} is a causal language model ({name}), not a reward model; {_GIVE}"
    return f"{path} is a {name}, not a reward model; {_GIVE}"


@dataclass
class LoadedRewardModel:
    """A reward model in memory, shared by the scorers that name it."""

    model: Any
    tokenizer: Any
    pad_token_id: int
    """Pads every batch; the model reads each reward at the last token that is not this one."""
    device: str
    key: tuple[str, str]
    users: int = 0


_LOADED: dict[tuple[str, str], LoadedRewardModel] = {}


def acquire(path: str, revision: str = "main") -> LoadedRewardModel:
    """The reward model at `path`, loaded on first use; `release` it when done."""
    key = (path, revision)
    if key not in _LOADED:
        _LOADED[key] = load_reward_model(path, revision)
    loaded = _LOADED[key]
    loaded.users += 1
    return loaded


def release(loaded: LoadedRewardModel) -> None:
    """One user fewer; the last one frees the model's memory."""
    loaded.users -= 1
    if loaded.users > 0:
        return
    _LOADED.pop(loaded.key, None)
    loaded.model = None
    gc.collect()
    if loaded.device == "cuda":
        import torch

        torch.cuda.empty_cache()


def load_reward_model(path: str, revision: str = "main") -> LoadedRewardModel:
    """Load the model and tokenizer at `path` for scoring; a UserError (source: the path) when they are unfit."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    base = adapter_base(path, revision)
    local = Path(path).expanduser().exists()
    try:
        problem = reward_model_problem(path) if local else _hub_problem(path, revision, adapter=base is not None)
        if problem is not None:
            raise UserError(Problem(source=path, message=problem))
        model = _load_model(path, revision, dtype, adapter=base is not None)
        tokenizer = _load_tokenizer(path, revision, base)
    except (OSError, ValueError) as err:
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        where = "" if local else "no local folder of that name, and from the Hub: "
        message = f"cannot load the reward model: {where}{lines[-1] if lines else type(err).__name__}"
        raise UserError(Problem(source=path, message=message)) from None
    pad = _ready_to_score(model, tokenizer, path)
    model.to(device)
    model.eval()
    return LoadedRewardModel(model=model, tokenizer=tokenizer, pad_token_id=pad, device=device, key=(path, revision))


def _ready_to_score(model, tokenizer, path: str) -> int:
    """Set the pad token of model and tokenizer as rm training did, and return its id."""
    if tokenizer.chat_template is None:
        raise UserError(
            Problem(
                source=path,
                message="its tokenizer has no chat template to render a conversation as reward-model training did",
            )
        )
    # rm training padded with the tokenizer's pad token, else the end-of-sequence token, and the classifier
    # found each sequence's end by that id (alignkit.train.modeling); an adapter's base config may not say it.
    candidates = (tokenizer.pad_token_id, model.config.pad_token_id, tokenizer.eos_token_id)
    pad = next((token for token in candidates if token is not None), None)
    if pad is None:
        raise UserError(Problem(source=path, message="its tokenizer has neither a pad nor an end-of-sequence token"))
    model.config.pad_token_id = pad
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.padding_side = "right"
    return pad


def _hub_problem(path: str, revision: str, *, adapter: bool) -> str | None:
    """`reward_model_problem` for a Hub id, from its configuration (downloaded, small)."""
    if adapter:
        from peft import PeftConfig

        return _adapter_problem(path, PeftConfig.from_pretrained(path, revision=revision).task_type)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=False)
    return _config_problem(path, config.architectures or [], config.num_labels)


def _load_model(path: str, revision: str, dtype, *, adapter: bool):
    # transformers swaps in layer kernels downloaded from the Hub unless told not to: scoring runs no
    # downloaded code, and loads on an offline machine.
    kwargs = {"revision": revision, "dtype": dtype, "trust_remote_code": False, "use_kernels": False}
    if not adapter:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    from peft import AutoPeftModelForSequenceClassification

    return AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs).merge_and_unload()


def _load_tokenizer(path: str, revision: str, base: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, TypeError):
        if base is None:
            raise
        return AutoTokenizer.from_pretrained(base, trust_remote_code=False)  # an adapter without tokenizer files


class RewardModelScorer:
    """Scores each prompt + completion with a reward model: the classifier's one output at the last token."""

    def __init__(self, spec: RewardModelSpec, label: str):
        self.label = label
        self.weight = spec.weight
        self.batch_size = spec.batch_size
        self.max_length = spec.max_length
        self._loaded: LoadedRewardModel | None = acquire(spec.path, spec.revision)

    def score(
        self, prompts: list[list[dict]], completions: list[str], rows: list[dict], *, tokens: list[int] | None = None
    ) -> list[float | None]:
        if self._loaded is None:
            raise RuntimeError(f"scorer {self.label} is closed")
        if not completions:
            return []
        tokenizer = self._loaded.tokenizer
        texts = [
            reward_text(tokenizer, [*prompt, {"role": "assistant", "content": completion}])
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        if self.max_length is not None:
            ids = [sequence[-self.max_length :] for sequence in ids]
        return list(rewards(self._loaded, ids, self.batch_size))

    def close(self) -> None:
        """Let go of the model; its memory is freed when no other scorer uses it."""
        if self._loaded is not None:
            release(self._loaded)
            self._loaded = None


def rewards(loaded: LoadedRewardModel, ids: list[list[int]], batch_size: int) -> list[float]:
    """The reward of each token sequence, in order, computed in right-padded batches of similar lengths."""
    import torch

    order = sorted(range(len(ids)), key=lambda index: len(ids[index]), reverse=True)
    out = [0.0] * len(ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(ids[batch[0]])
            input_ids = torch.full((len(batch), width), loaded.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                input_ids[row, : len(ids[index])] = torch.tensor(ids[index], dtype=torch.long)
                mask[row, : len(ids[index])] = 1
            logits = loaded.model(input_ids=input_ids.to(loaded.device), attention_mask=mask.to(loaded.device)).logits
            for index, value in zip(batch, logits[:, 0].float().tolist(), strict=True):
                out[index] = value
    return out
