"""The vLLM backend of `alignkit sample`: the same `Generator` interface on vLLM's offline engine (`vllm.LLM`).

Imported only when generating with vLLM. Prompts are rendered with the recipe's chat template and tokenized
here, exactly as the transformers backend does, and handed to vLLM as token ids, so neither a second
beginning-of-sequence token nor a different template can slip in. vLLM gets the same tokenizer, saved to a
temporary folder, for detokenizing and stop strings.

A LoRA adapter is merged into its base with transformers first and the merged model is saved to that
temporary folder (as is a model whose embeddings grew for chat-template tokens); vLLM's own LoRA serving is
not used because it cannot load the resized embeddings alignkit trains when the template adds tokens. The
folder (the size of the model, under TMPDIR) is deleted on `close()`.

Each prompt gets its own sampling seed derived from the `generate` seed and its position, so the results do
not depend on how vLLM batches the requests.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alignkit.adapters import adapter_base
from alignkit.errors import RunError
from alignkit.sampling.generation import (
    Completion,
    GenerationSettings,
    cut_at_stop,
    encode_prompt,
    eos_token_ids,
    load_causal_lm,
    load_chat_tokenizer,
)


def sampling_kwargs(settings: GenerationSettings, *, seed: int, stop_token_ids: list[int]) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one prompt; greedy asks for one sequence (vLLM refuses n > 1)."""
    return {
        "n": 1 if settings.greedy else settings.num_samples,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k if settings.top_k > 0 else -1,
        "max_tokens": settings.max_new_tokens,
        "stop": list(settings.stop),
        "stop_token_ids": list(stop_token_ids),
        "seed": seed,
    }


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of the prompt at `index`: distinct per prompt, fixed by the run's seed."""
    return seed * 1_000_003 + index


def to_completion(output, stop: tuple[str, ...]) -> Completion:
    """A vLLM `CompletionOutput` (text, token_ids, finish_reason, stop_reason) as a Completion.

    vLLM finishes with "length", or "stop" whose stop_reason is the stop string (str), a stop token id (int:
    our eos ids) or None (the tokenizer's eos).
    """
    if output.finish_reason not in ("stop", "length"):
        raise RunError(f"vLLM ended a completion with finish reason {output.finish_reason!r}")
    text, cut = cut_at_stop(output.text, stop)
    if cut or isinstance(output.stop_reason, str):
        finish = "stop"
    elif output.finish_reason == "length":
        finish = "length"
    else:
        finish = "eos"
    return Completion(text=text, tokens=len(output.token_ids), finish=finish)


class VllmGenerator:
    """Sampling with vLLM's offline `LLM.generate`: every prompt in one call, vLLM schedules the batches."""

    name = "vllm"

    def __init__(self, llm, tokenizer, eos_ids: list[int], workdir: Path):
        self.llm = llm
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.workdir = workdir

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings, *, seed: int) -> list[list[Completion]]:
        from vllm import SamplingParams

        requests = [{"prompt_token_ids": encode_prompt(self.tokenizer, messages)} for messages in prompts]
        params = [
            SamplingParams(**sampling_kwargs(settings, seed=prompt_seed(seed, index), stop_token_ids=self.eos_ids))
            for index in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False) if requests else []
        results = []
        for output in outputs:
            completions = [to_completion(sample, settings.stop) for sample in output.outputs]
            results.append(completions * settings.num_samples if settings.greedy else completions)
        return results

    def close(self) -> None:
        """Free the engine and its GPU memory as far as vLLM allows in-process, and delete the temporary folder."""
        import gc

        import torch

        self.llm = None
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except (ImportError, AssertionError, RuntimeError):
            pass  # another vLLM version, or nothing was initialised: the process ends soon anyway
        gc.collect()
        torch.cuda.empty_cache()
        shutil.rmtree(self.workdir, ignore_errors=True)


def load_vllm_generator(recipe) -> VllmGenerator:
    """vLLM's engine on the recipe's model (an adapter merged first), its tokenizer and chat template."""
    from vllm import LLM

    spec = recipe.model
    sample = getattr(recipe, "sample", None)
    tokenizer, added = load_chat_tokenizer(recipe)
    workdir = Path(tempfile.mkdtemp(prefix="alignkit-vllm-"))
    try:
        tokenizer.save_pretrained(workdir / "tokenizer")
        model, revision = spec.name_or_path, spec.revision
        if added or adapter_base(spec.name_or_path, spec.revision) is not None:
            model, revision = str(_save_merged(recipe, tokenizer, added, workdir / "model")), "main"
        llm = LLM(
            model=model,
            tokenizer=str(workdir / "tokenizer"),
            revision=revision,
            dtype=spec.dtype,
            seed=0,  # sampling seeds are per request (prompt_seed)
            trust_remote_code=spec.trust_remote_code,
            tensor_parallel_size=getattr(sample, "tensor_parallel_size", 1),
            gpu_memory_utilization=getattr(sample, "gpu_memory_utilization", 0.9),
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return VllmGenerator(llm, tokenizer, _eos_ids(model, revision, tokenizer), workdir)


def _save_merged(recipe, tokenizer, added: bool, target: Path) -> Path:
    """The adapter merged into its base (or the model with grown embeddings), saved where vLLM can load it."""
    import gc

    import torch

    model = load_causal_lm(recipe, tokenizer, added_tokens=added, device="cuda")
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    del model
    gc.collect()
    torch.cuda.empty_cache()  # vLLM sizes its KV cache from the memory free when it starts
    return target


def _eos_ids(model: str, revision: str, tokenizer) -> list[int]:
    """The tokenizer's eos and the checkpoint's generation-config eos ids: where the transformers backend stops."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model, revision=revision)
    except OSError:  # the checkpoint has no generation_config.json
        config = None
    return eos_token_ids(SimpleNamespace(generation_config=config), tokenizer)
