"""Built scorers as TRL reward functions, so a recipe's scorers reward online training as they rank samples.

TRL's GRPOTrainer calls each reward function as

    function(prompts=[...], completions=[...], completion_ids=[[token ids], ...],
             **{column: [value per completion] for every dataset column but prompt},
             trainer_state=..., log_extra=..., log_metric=...)   # and environments, where it has some

with prompts and completions conversational (lists of messages) or plain strings, and takes back one number
per completion, None meaning "cannot say" (TRL leaves it out of the reward). `reward_functions` wraps each
scorer so: the prompts become chat messages (a string as one user message), the completions texts, the
column lists one row per completion, completion_ids token counts, and the scorer's values come back as they
are. Each function's `__name__` is the scorer's label, the name TRL logs its reward under; `reward_weights`
gives the weights in the same order, for the trainer config's `reward_weights`.

The functions are instances of a module-level class, not closures, so they pickle wherever their scorer does
(TRL's asynchronous rollout worker pickles the reward functions into another process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignkit.scoring.build import Scorer

# Keywords TRL passes beside the dataset's columns; none of them is one value per completion of a row.
NOT_COLUMNS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})


def reward_functions(scorers: Sequence[Scorer]) -> list[Callable[..., list[float | None]]]:
    """One TRL reward function per scorer, in order, each named by the scorer's label."""
    return [ScorerReward(scorer) for scorer in scorers]


def reward_weights(scorers: Sequence[Scorer]) -> list[float]:
    """The scorers' weights, in the order of `reward_functions`."""
    return [float(scorer.weight) for scorer in scorers]


class ScorerReward:
    """A scorer called as a TRL reward function."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.__name__ = scorer.label  # what TRL names the reward in its logs

    def __call__(
        self, prompts: list, completions: list, completion_ids: list[list[int]] | None = None, **kwargs: Any
    ) -> list[float | None]:
        count = len(completions)
        if len(prompts) != count:
            raise ValueError(f"{len(prompts)} prompts for {count} completions")
        columns = {
            key: values
            for key, values in kwargs.items()
            if key not in NOT_COLUMNS and isinstance(values, list | tuple) and len(values) == count
        }
        rows = [{key: values[index] for key, values in columns.items()} for index in range(count)]
        tokens = None if completion_ids is None else [len(ids) for ids in completion_ids]
        texts = [completion_text(completion) for completion in completions]
        return list(self.scorer.score([prompt_messages(p) for p in prompts], texts, rows, tokens=tokens))


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages: a conversational one as it is, a plain string as one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def completion_text(completion: str | list[dict]) -> str:
    """A completion as the text the model wrote.

    A conversational completion is a list of messages: usually one assistant message; with tool calls, the
    assistant's turns and the tools' answers. The assistant's contents are joined by newlines (tool answers
    are not the model's text), so one message gives exactly its content, as TRL's own rewards read it.
    """
    if isinstance(completion, str):
        return completion
    return "\n".join(
        _text(message.get("content"))
        for message in completion
        if message.get("role", "assistant") == "assistant" and message.get("content") is not None
    )


def _text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)
