"""The recipe of `alignkit sample`: which policy generates, from which prompts, how many candidates, how
they are scored and which are kept.

    model:    {name_or_path: runs/sft}          # a model, an alignkit output, or a LoRA adapter (merged)
    data:     {datasets: [{path: prompts.jsonl}]}
    sample:   {num_samples: 4, temperature: 0.8, scorers: [...], select: best}
    training: {output_dir: runs/sample}

`training` holds only where the output goes (the key every stage shares, so a pipeline wires outputs the
same way for every stage). Validated once here, like the training recipes; nothing heavy is imported.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from alignkit.errors import either
from alignkit.recipe.bounds import Seed, within
from alignkit.recipe.sections import DataSection, LaunchSection, ModelSection, Section, at
from alignkit.scoring.specs import KINDS, ScorerList

Selection = Literal["best", "best_worst", "threshold"]
Backend = Literal["auto", "transformers", "vllm"]


class SampleSection(Section):
    """Generation, scoring and selection settings of `alignkit sample`."""

    num_samples: within(1, 4096) = 4
    """Completions generated for every prompt."""
    max_new_tokens: within(1, 1_000_000) = 256
    """Longest completion, in tokens; a completion cut here is marked finish `length`."""
    temperature: within(0, 100, float) = 1.0
    """Sampling temperature; 0 is greedy decoding (one completion per prompt)."""
    top_p: within(0, 1, float, above_low=True) = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1: off)."""
    top_k: within(0, 10_000_000) = 0
    """Keep only the k most likely tokens (0: off)."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings: a completion ends before the first one it produces."""
    seed: Seed = 0
    """The same seed, prompts and settings give the same candidates."""
    prompt_column: str | None = None
    """The column holding the prompt (a string or a message list). Unset: prompt, then messages or
    conversations (the conversation minus its final assistant turn), then instruction (+ input), question or
    problem."""
    max_prompts: within(1, 10**12) | None = None
    """Use only the first N prompts of the mixture (a quick look before the full run)."""
    backend: Backend = "auto"
    """auto: vLLM when it is installed and a CUDA device is present, else transformers; the run says which."""
    batch_size: within(1, 1_000_000) = 16
    """Prompts per generation call of the transformers backend (each expands to num_samples sequences)."""
    tensor_parallel_size: within(1, 1024) = 1
    """vLLM: GPUs one model is split over."""
    gpu_memory_utilization: within(0, 1, float, above_low=True) = 0.9
    """vLLM: fraction of each GPU's memory it may take."""
    shard_size: within(1, 10**9) = 256
    """Prompts per shard; finished shards are kept, so a killed run resumes at the first unfinished one."""
    scorers: ScorerList = Field(default_factory=list)
    """How candidates are scored: reward_model, exact_match, regex, python, math, think_format, overlong; each
    with an optional weight. A candidate's score is the weighted sum."""
    select: Selection = "best"
    """best: the top candidate per prompt as an SFT row; best_worst: highest and lowest as a DPO pair;
    threshold: every candidate scoring at least min_score, as SFT rows."""
    min_margin: within(0, 10**12, float) = 0.0
    """best_worst: keep a pair only when chosen scores at least this much above rejected."""
    min_score: float | None = None
    """threshold: the score a candidate needs (required); best: the score the top candidate needs (optional)."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        if any(not text for text in value):
            raise ValueError("an empty stop string would end every completion at once; remove it")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SampleSection:
        if not self.scorers:
            raise ValueError(at("scorers", f"give at least one scorer ({either(list(KINDS))}) to select by"))
        if self.select in ("best", "best_worst") and self.num_samples < 2:
            raise ValueError(
                at("num_samples", f"select {self.select} compares candidates: generate at least 2 per prompt")
            )
        if self.temperature == 0 and self.num_samples > 1:
            raise ValueError(
                at(
                    "temperature",
                    "0 is greedy decoding, which gives num_samples identical completions; set a temperature above 0"
                    " (0.7 to 1.0 is usual for best-of-n)",
                )
            )
        if self.select == "threshold" and self.min_score is None:
            raise ValueError(at("min_score", "select threshold keeps candidates scoring at least min_score; set it"))
        if self.min_margin and self.select != "best_worst":
            raise ValueError(at("min_margin", f"applies to select best_worst, not {self.select}; remove it"))
        if self.min_score is not None and self.select == "best_worst":
            raise ValueError(at("min_score", "does not apply to select best_worst (use min_margin); remove it"))
        return self


class SampleOutputSection(Section):
    """Where `alignkit sample` writes (the `training` key every stage shares)."""

    output_dir: str | None = None
    """Where the candidates, the selected rows and the card go. Unset: outputs/<recipe>-sample."""
    overwrite_output_dir: bool = False
    """Start over even if output_dir holds a finished sample run."""


class SampleRecipe(Section):
    """A recipe for `alignkit sample`."""

    stage: ClassVar[str] = "sample"
    description: str = ""
    """One line on what the recipe makes."""
    model: ModelSection
    data: DataSection
    sample: SampleSection
    training: SampleOutputSection = SampleOutputSection()
    launch: LaunchSection = LaunchSection()

    @model_validator(mode="after")
    def _data_for_prompts(self) -> SampleRecipe:
        if self.data.test_split_size is not None:
            raise ValueError(
                at("data.test_split_size", "sample reads prompts and keeps no test split; remove test_split_size")
            )
        if not any(source.role in ("train", "both") for source in self.data.datasets):
            raise ValueError(
                at("data.datasets", "every source has role test; sample reads the prompts of train (or both) sources")
            )
        return self
