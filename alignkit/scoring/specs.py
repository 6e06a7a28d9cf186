"""The scorers a recipe names, as validated specs, and the checks that run before any weights load.

A recipe lists scorers, each item one kind with its settings and an optional weight:

    scorers:
    - reward_model: runs/rm                  # or {path: runs/rm, batch_size: 16, max_length: 2048}
    - exact_match: answer                    # or {column: answer}
      weight: 2                              # beside the kind, or inside its mapping (not both)
    - regex: '^\\d+$'                        # or {pattern: '^\\d+$', weight: 0.5}
    - python: mypkg.rewards:brevity          # or {function: mypkg.rewards:brevity}
    - math: answer                           # or {column: answer}; needs alignkit[math] (math-verify)
    - think_format: true                     # or {weight: 0.5}
    - overlong: {max_completion_length: 4096, buffer: 1024}

A spec dumps to the mapping form (`{exact_match: {column: answer, weight: 2.0}}`), which validates back to
the same spec, so a frozen recipe re-reads as written. Errors are located under the kind
(`scorers.1.exact_match.column`), as a callable discriminator tags them. `check_scorers` finds what
validation cannot (a column the prompt rows lack, a module that does not import, a causal LM given as a
reward model, math-verify not installed) before anything heavy is loaded. Light: no torch, transformers or peft.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_serializer, model_validator

from alignkit.errors import Problem, UserError, either
from alignkit.recipe.bounds import TokenLength, within
from alignkit.recipe.sections import Section, at

KINDS = ("reward_model", "exact_match", "regex", "python", "math", "think_format", "overlong")
_KIND_LIST = either(list(KINDS))
_TARGET = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


class ScorerSpec(Section):
    """Base of the scorer specs: the recipe shape `{kind: settings}` they read and write, and the weight."""

    kind: ClassVar[str]
    shorthand: ClassVar[str | None]
    """The setting a bare string stands for (`exact_match: answer` is `exact_match: {column: answer}`); None when
    the kind takes no string."""
    extras: ClassVar[tuple[str, ...]] = ()
    """alignkit's optional extras the kind imports (installed by a cloud job that runs it)."""

    weight: within(-1e6, 1e6, float) = 1.0
    """Factor of this scorer's value in a candidate's total; negative makes it a penalty."""

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: float) -> float:
        if value == 0:
            raise ValueError("a weight of 0 scores nothing; remove the scorer")
        return value

    @model_validator(mode="before")
    @classmethod
    def _recipe_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict) or cls.kind not in data:
            return data  # keyword construction, or a wrong type that the fields' errors describe
        beside = {key: value for key, value in data.items() if key != cls.kind}
        settings = cls._settings(data[cls.kind])
        if "weight" in beside and "weight" in settings:
            raise ValueError(f"weight is given both beside {cls.kind} and inside it; give it once")
        cls._known_settings(settings)
        return {**settings, **beside}

    @classmethod
    def _settings(cls, value: Any) -> dict[str, Any]:
        """The settings the recipe's value under the kind stands for: none, the shorthand's string, or a mapping."""
        if value is None:
            return {}
        if isinstance(value, str) and cls.shorthand is not None:
            return {cls.shorthand: value}
        if isinstance(value, dict):
            return dict(value)
        if cls.shorthand is None:
            raise ValueError(f"{cls.kind} takes a mapping of its settings (given: {value!r})")
        raise ValueError(
            f"{cls.kind} takes its {cls.shorthand} as a string, or a mapping of its settings (given: {value!r})"
        )

    @classmethod
    def _known_settings(cls, settings: dict[str, Any]) -> None:
        """Refuse a misspelt setting with the closest one (a recipe error path cannot see inside the kinds)."""
        unknown = [key for key in settings if key not in cls.model_fields]
        if not unknown or not isinstance(unknown[0], str) or not re.fullmatch(r"\w+", unknown[0]):
            return  # none, or a key no path can name: pydantic's own error says it
        key, valid = unknown[0], [*(name for name in cls.model_fields if name != "weight"), "weight"]
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"valid keys here: {', '.join(valid)}"
        raise ValueError(at(key, f"unknown key; {hint}"))

    @model_serializer(mode="wrap")
    def _as_recipe(self, handler) -> dict[str, Any]:
        settings = handler(self)
        if "weight" in settings:
            settings["weight"] = settings.pop("weight")  # last, as a reader expects it after the settings
        return {self.kind: settings}

    @property
    def label(self) -> str:
        """The scorer's name in reports and candidate records (`labels` tells repeats apart)."""
        return self.kind

    @property
    def columns(self) -> frozenset[str]:
        """The prompt-row columns the scorer reads."""
        return frozenset()


class RewardModelSpec(ScorerSpec):
    """A reward model (a sequence classifier with one output) scores each prompt + completion."""

    kind: ClassVar[str] = "reward_model"
    shorthand: ClassVar[str] = "path"

    path: str = Field(min_length=1)
    """Local folder or Hub id of the reward model (an `alignkit rm` output), or of its LoRA adapter."""
    revision: str = "main"
    """Branch, tag or commit of the reward model on the Hub."""
    batch_size: within(1, 100_000) = 16
    """Texts per forward pass."""
    max_length: TokenLength | None = None
    """Longest text in tokens; a longer one is cut from the left, so its end (where the reward is read) stays.
    Unset: never cut."""


class ExactMatchSpec(ScorerSpec):
    """1 when the completion equals the row's reference answer (normalised; numbers as numbers), else 0."""

    kind: ClassVar[str] = "exact_match"
    shorthand: ClassVar[str] = "column"

    column: str = Field(min_length=1)
    """The prompt-row column holding the reference answer (a string, a number, or a list of accepted ones)."""

    @property
    def label(self) -> str:
        return f"exact_match:{self.column}"

    @property
    def columns(self) -> frozenset[str]:
        return frozenset({self.column})


class RegexSpec(ScorerSpec):
    """1 when the regular expression is found in the completion (`re.search`), else 0."""

    kind: ClassVar[str] = "regex"
    shorthand: ClassVar[str] = "pattern"

    pattern: str = Field(min_length=1)
    """A Python regular expression; anchor it (`^...$`) to match the whole completion."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from None
        return value


class PythonSpec(ScorerSpec):
    """Your function scores the completions, called as a TRL reward function (so GRPO can reuse it)."""

    kind: ClassVar[str] = "python"
    shorthand: ClassVar[str] = "function"

    function: str
    """`package.module:function`, imported from the installed packages or the current directory."""

    @field_validator("function")
    @classmethod
    def _target(cls, value: str) -> str:
        if not _TARGET.fullmatch(value):
            raise ValueError("must name a function as package.module:function, such as mypkg.rewards:brevity")
        return value

    @property
    def label(self) -> str:
        return f"python:{self.function.rpartition(':')[2]}"


class MathSpec(ScorerSpec):
    """1 when the completion's final answer equals the row's reference mathematically (math-verify), else 0."""

    kind: ClassVar[str] = "math"
    shorthand: ClassVar[str] = "column"
    extras: ClassVar[tuple[str, ...]] = ("math",)

    column: str = Field(min_length=1)
    """The prompt-row column holding the reference answer (LaTeX or plain: `\\frac{1}{2}`, `0.5`, `1/2`)."""

    @property
    def label(self) -> str:
        return f"math:{self.column}"

    @property
    def columns(self) -> frozenset[str]:
        return frozenset({self.column})


class ThinkFormatSpec(ScorerSpec):
    """1 when the completion opens with its reasoning in one `<think>...</think>` block, else 0."""

    kind: ClassVar[str] = "think_format"
    shorthand: ClassVar[str | None] = None

    @classmethod
    def _settings(cls, value: Any) -> dict[str, Any]:
        if value is True:
            return {}
        if value is False:
            raise ValueError("think_format: false scores nothing; remove the scorer")
        if value is None or isinstance(value, dict):
            return super()._settings(value)
        raise ValueError(
            f"think_format takes true, or a mapping of its settings such as {{weight: 0.5}} (given: {value!r})"
        )


class OverlongSpec(ScorerSpec):
    """DAPO's soft overlong punishment: 0 up to `max_completion_length - buffer` tokens, then down to -1 at
    `max_completion_length`, -1 beyond."""

    kind: ClassVar[str] = "overlong"
    shorthand: ClassVar[str | None] = None

    max_completion_length: TokenLength
    """Completion length in tokens at which the penalty reaches -1 (the generation limit, as a rule)."""
    buffer: within(0, 2**24)
    """Tokens before `max_completion_length` over which the penalty grows from 0 to -1; 0 punishes only a
    completion longer than `max_completion_length`."""

    @model_validator(mode="after")
    def _buffer_fits(self) -> OverlongSpec:
        if self.buffer > self.max_completion_length:
            raise ValueError(
                at(
                    "buffer",
                    f"{self.buffer} exceeds max_completion_length ({self.max_completion_length}); the"
                    " penalty starts at max_completion_length - buffer tokens",
                )
            )
        return self


def scorer_extras(specs: list[ScorerSpec]) -> tuple[str, ...]:
    """alignkit's optional extras that the scorers import, each once, in order."""
    return tuple(dict.fromkeys(extra for spec in specs for extra in spec.extras))


SPECS: dict[str, type[ScorerSpec]] = {
    spec.kind: spec
    for spec in (RewardModelSpec, ExactMatchSpec, RegexSpec, PythonSpec, MathSpec, ThinkFormatSpec, OverlongSpec)
}


def _one_kind(item: Any) -> Any:
    """Refuse an item that is not one scorer kind (and its weight) with a message naming the kinds."""
    if isinstance(item, ScorerSpec):
        return item
    if not isinstance(item, dict):
        raise ValueError(
            f"a scorer is a mapping of one kind ({_KIND_LIST}) to its settings, such as `exact_match: answer`"
        )
    kinds = [key for key in item if key in SPECS]
    unknown = [key for key in item if key not in SPECS and key != "weight"]
    if len(kinds) > 1:
        raise ValueError(
            f"one item holds {', '.join(kinds[:-1])} and {kinds[-1]}; give each scorer its own list item"
            f" (kinds: {_KIND_LIST})"
        )
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, [*KINDS, "weight"], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? An item" if close else "an item"
        beside = f" beside {kinds[0]}" if kinds else ""
        raise ValueError(
            f"unknown key {key!r}{beside}; {hint} holds one scorer kind ({_KIND_LIST}) and, optionally, weight"
        )
    if not kinds:
        raise ValueError(f"no scorer kind given; add one of {_KIND_LIST}")
    return item


def _kind_of(item: Any) -> str | None:
    if isinstance(item, ScorerSpec):
        return item.kind
    if isinstance(item, dict):
        return next((key for key in item if key in SPECS), None)
    return None


AnyScorerSpec = Annotated[
    Annotated[
        Annotated[RewardModelSpec, Tag("reward_model")]
        | Annotated[ExactMatchSpec, Tag("exact_match")]
        | Annotated[RegexSpec, Tag("regex")]
        | Annotated[PythonSpec, Tag("python")]
        | Annotated[MathSpec, Tag("math")]
        | Annotated[ThinkFormatSpec, Tag("think_format")]
        | Annotated[OverlongSpec, Tag("overlong")],
        Discriminator(_kind_of),
    ],
    BeforeValidator(_one_kind),
]
"""One scorer of a recipe, in any of its shapes."""
ScorerList = list[AnyScorerSpec]
"""The type of a recipe's `scorers` field (give it `Field(min_length=1)` where one is required)."""


def labels(specs: Sequence[ScorerSpec]) -> list[str]:
    """Each spec's label, a repeat suffixed with its count (`regex`, `regex#2`), so every one is unique."""
    seen: Counter[str] = Counter()
    out = []
    for spec in specs:
        seen[spec.label] += 1
        count = seen[spec.label]
        out.append(spec.label if count == 1 else f"{spec.label}#{count}")
    return out


def check_scorers(specs: Sequence[ScorerSpec], columns: set[str] | None, *, where: str, source: str) -> list[Problem]:
    """What would fail once the run has started, found before any weights load.

    Args:
        specs: the recipe's scorers.
        columns: the prompt rows' columns; None skips the column check (rows not read yet).
        where: the field path of the list (`sample.scorers`), prefixed to each problem's path.
        source: the recipe file, each problem's source.
    """
    problems = []
    for index, spec in enumerate(specs):
        path = f"{where}.{index}.{spec.kind}"
        problems += [Problem(source=source, path=path, message=message) for message in _spec_problems(spec, columns)]
    return problems


def _spec_problems(spec: ScorerSpec, columns: set[str] | None) -> list[str]:
    """What is wrong with one scorer, as `check_scorers` looks for it."""
    from alignkit.scoring.custom import load_function, signature_problem
    from alignkit.scoring.reasoning import math_verify_problem
    from alignkit.scoring.reward_model import reward_model_problem

    messages: list[str | None] = []
    if isinstance(spec, MathSpec):
        messages.append(math_verify_problem())
    if isinstance(spec, ExactMatchSpec | MathSpec) and columns is not None and spec.column not in columns:
        found = ", ".join(sorted(columns)) or "none"
        messages.append(
            f"the prompt rows have no column {spec.column!r} (their columns: {found}); set column to the one"
            " holding the reference answer"
        )
    elif isinstance(spec, PythonSpec):
        try:
            messages.append(signature_problem(load_function(spec.function)))
        except UserError as err:
            messages.append(err.problems[0].message)
    elif isinstance(spec, RewardModelSpec):
        messages.append(reward_model_problem(spec.path))
    return [message for message in messages if message is not None]
