"""The recipe of `alignkit eval`: which models are compared, on what, and where the scorecard goes.

    eval:
      models:                              # side by side; a name and a path (or just a path)
        - {name: base, path: Qwen/Qwen2.5-0.5B-Instruct}
        - {name: sft, path: runs/sft}
      baseline: base                       # what the judge compares every other model against (default: first)
      harness: {tasks: [arc_easy, my_tasks/quiz.yaml], num_fewshot: 0, limit: 200}
      generate: {scorers: [{exact_match: answer}], max_new_tokens: 64}
      judge: {reward_model: runs/rm}
      loss: {datasets: [{path: heldout_chats.jsonl}], max_length: 1024}
    data: {datasets: [{path: heldout_prompts.jsonl}]}   # the prompts generate and judge use
    training: {output_dir: runs/eval}

Each part is optional, but at least one is given. `training` holds only where the output goes (the key every
stage shares). Validated once here; nothing heavy is imported.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from alignkit.recipe.bounds import Seed, within
from alignkit.recipe.sections import DataSection, DatasetSource, LaunchSection, Section, at
from alignkit.scoring.specs import ScorerList

PARTS = ("harness", "generate", "judge", "loss")
"""The kinds of measurement, in the order they run and are reported."""
Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class EvalModel(Section):
    """One model of the comparison."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """How tables and files name it (letters, digits, `.`, `_`, `-`)."""
    path: str = Field(min_length=1)
    """A model folder, an alignkit run's output, a LoRA adapter folder, or a Hub id."""
    revision: str = "main"

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        # A bare path names itself after its last part (runs/sft -> sft).
        if isinstance(data, str):
            return {"name": PurePath(data.rstrip("/")).name or data, "path": data}
        if isinstance(data, dict) and "path" in data and not data.get("name"):
            return {**data, "name": PurePath(str(data["path"]).rstrip("/")).name}
        return data


class HarnessPart(Section):
    """Benchmarks through EleutherAI's lm-evaluation-harness (`pip install 'alignkit[eval]'`)."""

    tasks: list[str] = Field(min_length=1)
    """lm-eval task or group names, or paths to task YAML files of your own (how to run on local data)."""
    num_fewshot: within(0, 1000) | None = None
    """Examples shown before each question; unset: each task's own default."""
    limit: within(0, 10**9, float, above_low=True) | None = None
    """Documents per task: a count, or a fraction below 1 (a quick look; not comparable to published scores)."""
    apply_chat_template: bool | None = None
    """Render prompts with the model's chat template; unset: when its tokenizer has one."""
    batch_size: within(1, 4096) = 8


class GeneratePart(Section):
    """Completions for the held-out prompts (`data`), scored by the scorers of `alignkit sample`."""

    scorers: ScorerList = Field(default_factory=list)
    """exact_match, regex, math, python, ...: each scorer's mean over the prompts is reported."""
    max_new_tokens: within(1, 1_000_000) = 256
    temperature: within(0, 100, float) = 0.0
    """0: greedy decoding, one deterministic completion per prompt."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings: a completion ends before the first one it produces."""
    prompt_column: str | None = None
    """The column holding the prompt; unset: as `alignkit sample` finds it."""
    max_prompts: within(1, 10**12) | None = None
    """Use only the first N prompts."""
    batch_size: within(1, 1_000_000) = 16


class JudgePart(Section):
    """A reward model judges each model's completion against the baseline's, prompt by prompt."""

    reward_model: str = Field(min_length=1)
    """An `alignkit rm` output or any sequence classifier with one output."""
    batch_size: within(1, 1_000_000) = 16


class LossPart(Section):
    """Held-out loss and perplexity on conversations or text, as training computes its loss."""

    datasets: list[DatasetSource] = Field(min_length=1)
    """Sources of held-out rows (any format `alignkit sft` reads); every row is used whatever its role."""
    max_length: within(1, 10**7) = 2048
    """Longer rows are cut to this many tokens."""
    assistant_only: bool = True
    """Loss on the assistant turns only (the answers, as `sft.assistant_only_loss` trains); false: on every
    token of a conversation. Prompt/completion rows count their completion, plain text every token."""
    batch_size: within(1, 4096) = 8


class EvalSection(Section):
    """What `alignkit eval` measures."""

    models: list[EvalModel] = Field(min_length=1)
    """The models compared, side by side."""
    baseline: str | None = None
    """The model the judge compares the others against; unset: the first."""
    dtype: Dtype = "auto"
    """Weights dtype of every model; auto: bfloat16 on a GPU that has it, else float32."""
    seed: Seed = 0
    """Generation and lm-eval seed: the same seed, models and settings give the same scorecard."""
    harness: HarnessPart | None = None
    generate: GeneratePart | None = None
    judge: JudgePart | None = None
    loss: LossPart | None = None

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[EvalModel]) -> list[EvalModel]:
        names = [model.name for model in models]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"two models are named {twice[0]}; give each a name of its own (name: ...)")
        return models

    @model_validator(mode="after")
    def _coherent(self) -> EvalSection:
        if not any(getattr(self, part) is not None for part in PARTS):
            raise ValueError(f"give at least one of {', '.join(PARTS)} to measure")
        names = [model.name for model in self.models]
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(at("baseline", f"{self.baseline!r} is none of the models ({', '.join(names)})"))
        if self.judge is not None:
            if self.generate is None:
                raise ValueError(at("judge", "compares the completions eval.generate makes: add eval.generate"))
            if len(self.models) < 2:
                raise ValueError(at("judge", "compares models against a baseline: give at least two models"))
        return self

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.models[0].name

    @property
    def extras(self) -> tuple[str, ...]:
        """alignkit's optional extras these measurements import (lm-eval; a scorer's own)."""
        from alignkit.scoring.specs import scorer_extras

        scorers = self.generate.scorers if self.generate is not None else []
        return ("eval",) * (self.harness is not None) + scorer_extras(scorers)


class EvalOutputSection(Section):
    """Where `alignkit eval` writes (the `training` key every stage shares)."""

    output_dir: str | None = None
    """Where eval_results.json, the table, the plot and the cache go. Unset: outputs/<recipe>-eval."""
    overwrite_output_dir: bool = False
    """Measure everything anew instead of reusing the cache of an earlier run in output_dir."""


class EvalRecipe(Section):
    """A recipe for `alignkit eval`."""

    stage: ClassVar[str] = "eval"
    description: str = ""
    """One line on what the recipe measures."""
    eval: EvalSection
    data: DataSection | None = None
    """The held-out prompts eval.generate (and the judge) use."""
    training: EvalOutputSection = EvalOutputSection()
    launch: LaunchSection = LaunchSection()

    @model_validator(mode="after")
    def _prompts_for_generation(self) -> EvalRecipe:
        if self.eval.generate is not None and self.data is None:
            raise ValueError(at("data", "eval.generate needs held-out prompts: add data.datasets"))
        if self.eval.generate is None and self.data is not None:
            raise ValueError(at("data", "only eval.generate reads data; add eval.generate, or remove data"))
        return self
