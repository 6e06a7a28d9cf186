"""Generation backends of `alignkit sample`: N completions for every prompt, from transformers or vLLM.

The types here (settings, a completion, the `Generator` protocol) are light to import; torch and transformers
load only when a model does. Both backends render a prompt with the recipe's chat template exactly as
training does (`alignkit.data.templates.ensure_chat_template`), so the policy sees the prompts it learned on.

A completion's text is decoded without special tokens and cut before the first stop string; leading and
trailing whitespace stay as generated. Its finish reason is "eos" when an end-of-sequence token ended it
(the tokenizer's or any of the generation config's, such as ChatML's `<|im_end|>`), "stop" when it was cut
at a stop string, else "length". Greedy decoding (temperature 0) generates once per prompt and repeats it.

The transformers backend generates `batch_size` prompts per `model.generate` call, each expanded to
`num_samples` sequences, with prompts sorted by length so that a batch pads little; results come back in the
input order. Seeding happens once per `generate` call: the same prompts, settings and seed give the same
completions on the same machine and batch size.
"""

from __future__ import annotations

import bisect
import importlib.util
from dataclasses import dataclass
from typing import Any, Protocol

from alignkit.adapters import adapter_base
from alignkit.errors import Problem, RunError, UserError

BACKENDS = ("auto", "transformers", "vllm")
VLLM_FIX = "install it with `pip install 'alignkit[vllm]'` on a CUDA machine, or set sample.backend: transformers"


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample completions for every prompt."""

    num_samples: int
    """Completions per prompt."""
    max_new_tokens: int
    temperature: float
    """0 is greedy: one completion per prompt, repeated num_samples times."""
    top_p: float = 1.0
    top_k: int = 0
    """0 turns top-k filtering off."""
    stop: tuple[str, ...] = ()
    """Stop strings: a completion is cut before the first one and finishes with "stop"."""
    batch_size: int = 16
    """Prompts per generate call (each expands to num_samples sequences)."""

    def __post_init__(self):
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1 or self.temperature < 0:
            raise ValueError(f"invalid generation settings: {self}")
        if any(not text for text in self.stop):
            raise ValueError("a stop string cannot be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    """One generated answer to a prompt."""

    text: str
    """Decoded without special tokens and cut before the first stop string; whitespace kept as generated."""
    tokens: int
    """Tokens generated up to the end: the eos token included, or up to the token that completed the stop string."""
    finish: str
    """"eos", "stop" or "length"."""


class Generator(Protocol):
    """A loaded policy that samples completions for chat prompts."""

    name: str

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings, *, seed: int) -> list[list[Completion]]:
        """settings.num_samples completions for each prompt (a list of chat messages), in the prompts' order.

        `seed` (0 <= seed < 2**32) fixes the sampling: the same prompts, settings and seed give the same result.
        """
        ...

    def close(self) -> None:
        """Free the model (and its GPU memory); the generator is unusable afterwards."""
        ...


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to generate with ("transformers" or "vllm") for `requested` ("auto", "transformers", "vllm"),
    and why.

    auto picks vllm only when vllm imports and torch sees a CUDA device. Asking for vllm where it cannot run is
    a UserError that names what is missing and the fix.
    """
    if requested not in BACKENDS:
        raise UserError(
            Problem(
                source="recipe", path="sample.backend", message=f"must be auto, transformers or vllm, not {requested!r}"
            )
        )
    if requested == "transformers":
        return "transformers", "sample.backend is transformers"
    missing = _vllm_missing()
    if not missing:
        return "vllm", "vllm is installed and a CUDA device is present"
    why = " and ".join(missing)
    if requested == "vllm":
        raise UserError(
            Problem(source="recipe", path="sample.backend", message=f"vllm cannot run here: {why}; {VLLM_FIX}")
        )
    return "transformers", why


def _vllm_missing() -> list[str]:
    """What keeps vLLM from running on this machine; empty when it can."""
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("vllm is not installed")
    if not torch.cuda.is_available():
        missing.append("there is no CUDA device (torch.cuda.is_available() is false)")
    if missing:
        return missing
    try:
        import vllm  # noqa: F401  (vllm pins its own torch: an installed vllm can still fail to import)
    except Exception as err:
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        return [f"vllm is installed but does not import ({lines[-1] if lines else type(err).__name__})"]
    return []


def load_generator(recipe, backend: str, *, device: str | None = None) -> Generator:
    """Load the recipe's model (a LoRA adapter is merged into its base) for `backend` ("transformers" or "vllm").

    `recipe` needs `.model` and `.data` (for the tokenizer and its chat template); vllm also reads
    `.sample.tensor_parallel_size` and `.sample.gpu_memory_utilization`. `device` (transformers only) defaults
    to cuda when torch sees one, else cpu.
    """
    if backend == "vllm":
        from alignkit.sampling.vllm_backend import load_vllm_generator

        return load_vllm_generator(recipe)
    if backend != "transformers":
        raise ValueError(f"unknown generation backend {backend!r}")
    import torch

    tokenizer, added = load_chat_tokenizer(recipe)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(recipe, tokenizer, added_tokens=added, device=device)
    return TransformersGenerator(model, tokenizer)


def load_chat_tokenizer(recipe):
    """The recipe's tokenizer with its chat template installed as training installs it, padding on the left.

    Returns (tokenizer, whether tokens were added to its vocabulary).
    """
    from alignkit.data.templates import ensure_chat_template
    from alignkit.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(recipe)
    added = ensure_chat_template(tokenizer, recipe)
    tokenizer.padding_side = "left"
    return tokenizer, added


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the chat prompt followed by the assistant's generation prompt.

    The template writes any beginning-of-sequence token itself, so encoding adds none (as training does).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cut_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string in it, and whether one was found."""
    found = [index for index in (text.find(s) for s in stop) if index >= 0]
    return (text[: min(found)], True) if found else (text, False)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a completion: the generation config's eos ids and the tokenizer's eos."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def load_causal_lm(recipe, tokenizer, *, added_tokens: bool, device: str):
    """The recipe's causal LM on `device` in eval mode; a LoRA adapter is loaded onto its base and merged.

    Embeddings grow for tokens the chat template added exactly as training grows them (to a multiple of 8), so
    an adapter trained with resized embeddings loads into a base of the same shape.
    """
    from transformers import AutoModelForCausalLM

    spec = recipe.model
    base = adapter_base(spec.name_or_path, spec.revision)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(spec.dtype, device),
        "trust_remote_code": spec.trust_remote_code,
        # Off unless asked: transformers would otherwise fetch layer kernels from the Hub on CUDA.
        "use_kernels": bool(spec.use_kernels),
        "device_map": {"": device},
    }
    attention = _attention(spec.attn_implementation, device)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    source = base or spec.name_or_path
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision="main" if base else spec.revision, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(
            Problem(source="recipe", path="model.name_or_path", message=f"cannot load {source!r}: {err}")
        ) from None
    if added_tokens or len(tokenizer) > model.config.get_text_config().vocab_size:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
    if base is not None:
        model = _merge_adapter(model, spec)
    model.eval()
    return model


def _merge_adapter(model, spec):
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(spec.name_or_path, revision=spec.revision)
    if config.task_type not in (None, "CAUSAL_LM"):
        raise UserError(
            Problem(
                source="recipe",
                path="model.name_or_path",
                message=f"{spec.name_or_path} is a {config.task_type} adapter; sampling needs a causal LM (CAUSAL_LM)",
            )
        )
    adapted = PeftModel.from_pretrained(model, spec.name_or_path, revision=spec.revision, config=config)
    return adapted.merge_and_unload()


def torch_dtype(name: str, device: str):
    """Weights dtype: auto is bfloat16 on CUDA (float16 without bf16 support); a CPU always gets float32."""
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32  # half precision on a CPU is slow and, for float16, partly unsupported
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def _attention(name: str, device: str) -> str | None:
    """None lets transformers pick; flash-attention where it cannot run falls back to SDPA, as training does."""
    if name == "auto":
        return None
    if name.startswith("flash_attention") and (
        not str(device).startswith("cuda") or importlib.util.find_spec("flash_attn") is None
    ):
        return "sdpa"
    from alignkit.train.attention import loadable

    return loadable(name)


class TransformersGenerator:
    """Batched sampling with `model.generate`: several prompts per call, num_samples sequences each."""

    name = "transformers"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings, *, seed: int) -> list[list[Completion]]:
        import torch
        import transformers

        transformers.set_seed(seed)
        torch.manual_seed(seed)
        encoded = [encode_prompt(self.tokenizer, messages) for messages in prompts]
        # Longest first: a batch holds prompts of similar length (little padding), and memory peaks at once.
        order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
        results: list[list[Completion]] = [[] for _ in prompts]
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            for index, completions in zip(chunk, self._batch([encoded[i] for i in chunk], settings), strict=True):
                results[index] = completions * settings.num_samples if settings.greedy else completions
        return results

    def _batch(self, batch: list[list[int]], settings: GenerationSettings) -> list[list[Completion]]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        sequences = 1 if settings.greedy else settings.num_samples
        kwargs = self._generate_kwargs(settings, sequences, width)
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids.to(self.model.device),
                    attention_mask=attention_mask.to(self.model.device),
                    **kwargs,
                )
        except torch.OutOfMemoryError:
            raise RunError(
                f"out of memory generating {len(batch)} prompts x {sequences} samples of up to"
                f" {settings.max_new_tokens} tokens: lower the batch size (prompts per generate call)"
            ) from None
        rows = [self._completion(row[width:].tolist(), settings) for row in output]
        return [rows[i * sequences : (i + 1) * sequences] for i in range(len(batch))]

    def _generate_kwargs(self, settings: GenerationSettings, sequences: int, prompt_width: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "num_return_sequences": sequences,
            "do_sample": not settings.greedy,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
            "use_cache": True,
            # The settings say how to sample; a checkpoint's own penalty (Qwen ships 1.05) would change it
            # behind them, and vLLM ignores it too once sampling parameters are given.
            "repetition_penalty": 1.0,
        }
        if not settings.greedy:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        if settings.stop:
            kwargs["stopping_criteria"] = _stop_string_criteria(self.tokenizer, settings.stop, prompt_width)
        return kwargs

    def _completion(self, ids: list[int], settings: GenerationSettings) -> Completion:
        eos_ids = set(self.eos_ids)
        end = next((i for i, token in enumerate(ids) if token in eos_ids), None)
        body = ids if end is None else ids[:end]
        text, stopped = cut_at_stop(self._decode(body), settings.stop)
        if stopped:
            return Completion(text=text, tokens=self._tokens_to_stop(body, settings.stop), finish="stop")
        if end is not None:
            return Completion(text=text, tokens=end + 1, finish="eos")
        return Completion(text=text, tokens=len(ids), finish="length")

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _tokens_to_stop(self, ids: list[int], stop: tuple[str, ...]) -> int:
        """The fewest leading tokens whose text holds a stop string: the tokens that generation needed."""
        return 1 + bisect.bisect_left(
            range(1, len(ids) + 1), True, key=lambda count: cut_at_stop(self._decode(ids[:count]), stop)[1]
        )

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _stop_string_criteria(tokenizer, stop: tuple[str, ...], prompt_width: int):
    """Stop a sequence once its completion's text holds a stop string, to spare the tokens after it.

    Not transformers' `stop_strings`: those also match across the end of the prompt (a "\\n\\n" stop would end
    a completion that starts with a newline after the template's "assistant\\n"). Only the last few tokens are
    decoded per step; the cut on the full text afterwards is what guarantees the result.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    # A character takes at most 4 byte-level tokens; a few more cover the tokens a decode may merge.
    window = 4 * max(len(text) for text in stop) + 4

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = input_ids[:, max(prompt_width, input_ids.shape[1] - window) :]
            texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
            hits = [any(text in tail for text in stop) for tail in texts]
            return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopStrings()])
