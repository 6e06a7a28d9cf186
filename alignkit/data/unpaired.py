"""Unpaired rows: one completion per row with a desirability label, as TRL's KTOTrainer takes them.

Two kinds of source feed them: unpaired rows (`prompt`, `completion`, `label`) and preference pairs (every
layout `formats` reads), each pair split into a desirable row (the chosen response) and an undesirable one (the
rejected). While the data layer weights, pools and splits, a source row stays one *group*: a prompt and its one
or two labelled completions, so both halves of a pair land on the same side of the train/test split.
`flatten` then makes one row per completion and shuffles the rows: the trainer estimates its KL term by pairing
each prompt with the completion of the row before it in the batch, which must not be the other half of the
same pair.

Rendering follows the preference pairs' rules (`preference.py`): KTOTrainer tokenizes the strings with the
tokenizer's own special tokens and appends EOS to a completion that does not end with it, so a completion
keeps the template's end-of-turn token, a template BOS is dropped when encoding adds one anyway, and the
prompt is cut from the left to `max_prompt_length`, counting that BOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignkit.data import formats
from alignkit.data.preference import raw_pair, render_pair

OUTPUT_COLUMNS = ["prompt", "completion", "label"]
"""The columns the trainer gets."""
GROUP_COLUMNS = ["prompt", "completions", "labels", "lengths"]
"""The columns of a group while the data layer mixes and splits (`lengths`: tokens of prompt + completion)."""


@dataclass(frozen=True)
class Group:
    """One source row rendered: its prompt and its labelled completions (one, or a pair's two)."""

    prompt: str
    completions: tuple[str, ...]
    labels: tuple[bool, ...]
    lengths: tuple[int, ...]
    """Tokens the trainer sees per completion (prompt with its BOS, completion with its EOS)."""
    prompt_cut: bool
    keep: bool
    """False for an empty completion, or a pair whose two responses are the same (nothing to prefer)."""


def group_features():
    from datasets import List, Value

    return {
        "prompt": Value("string"),
        "completions": List(Value("string")),
        "labels": List(Value("bool")),
        "lengths": List(Value("int32")),
    }


def group_of(pre, row: dict[str, Any], detected: formats.Detected) -> Group:
    """Render one source row for the preprocessor `pre` (a `rows.Preprocessor`).

    Raises:
        formats.RowError, templates.TemplateRowError: a row that does not have its format's shape.
    """
    if detected.format == formats.UNPAIRED:
        return _unpaired(pre, row, detected)
    if formats.is_plain_text_pair(row, detected):
        prompt = row.get("prompt") if detected.format == formats.PREFERENCE else None
        pair = raw_pair(pre.tokenizer, prompt, row["chosen"], row["rejected"], pre.pair_tokens, pre.max_prompt_length)
    else:
        prompt, chosen, rejected = formats.preference(row, detected)
        if not chosen or not rejected:
            return Group("", (), (), (), False, keep=False)
        pair = _render_messages(pre, row, detected, prompt, chosen, rejected)
    return Group(
        prompt=pair.prompt,
        completions=(pair.chosen, pair.rejected),
        labels=(True, False),
        lengths=(pair.prompt_tokens + pair.chosen_tokens, pair.prompt_tokens + pair.rejected_tokens),
        prompt_cut=pair.prompt_cut,
        keep=bool(pair.chosen and pair.rejected and pair.chosen != pair.rejected),
    )


def _unpaired(pre, row: dict[str, Any], detected: formats.Detected) -> Group:
    label = formats.label_of(row)
    prompt, completion = formats.prompt_completion(row, detected)
    # A completion is rendered as a pair with itself: the pair's rules (template, BOS/EOS, prompt cut) are
    # exactly the ones a single completion needs, at the price of rendering it twice.
    if isinstance(prompt, str):
        rendered = raw_pair(pre.tokenizer, prompt, completion, completion, pre.pair_tokens, pre.max_prompt_length)
    else:
        if not completion:
            return Group("", (), (), (), False, keep=False)
        rendered = _render_messages(pre, row, detected, prompt, completion, completion)
    return Group(
        prompt=rendered.prompt,
        completions=(rendered.chosen,),
        labels=(label,),
        lengths=(rendered.prompt_tokens + rendered.chosen_tokens,),
        prompt_cut=rendered.prompt_cut,
        keep=bool(rendered.chosen.strip()),
    )


def _render_messages(pre, row: dict[str, Any], detected: formats.Detected, prompt, first, second):
    """Message lists rendered with the chat template, the recipe's system prompt and the row's template inputs."""
    return render_pair(
        pre.tokenizer,
        formats.with_system(prompt, pre.system_prompt),
        first,
        second,
        pre.pair_tokens,
        pre.max_prompt_length,
        formats.template_context(row, detected),
    )


def flatten(train, test, meta: dict[str, Any], report, seed: int):
    """One row per completion, shuffled; the per-row meta arrays and the report's counts follow.

    Returns:
        (train, test, meta) with OUTPUT_COLUMNS, as `prepare._pool` returns them.
    """
    import numpy as np

    train, parents, lengths, labels = _flat(train, seed)
    meta = {"_length": lengths, "_cut": meta["_cut"][parents], "_source": meta["_source"][parents]}
    if test is not None:
        test = _flat(test, seed + 1)[0]
    report.desirable_rows = int(np.count_nonzero(labels))
    report.undesirable_rows = int(len(labels) - report.desirable_rows)
    # A kept pair always gives two rows and an unpaired row one, so a source's counts scale by its format.
    pairs = 0
    for source in report.sources:
        if source.format in (formats.PREFERENCE, formats.PREFERENCE_IMPLICIT):
            pairs += source.rows_out
            source.train_rows, source.test_rows, source.rows_out = (
                2 * source.train_rows,
                2 * source.test_rows,
                2 * source.rows_out,
            )
    if pairs:
        counted = f"{pairs} preference pair" + ("s" if pairs != 1 else "")
        report.notices.append(
            f"{counted} split into {2 * pairs} unpaired rows: the chosen response desirable, the rejected one"
            " undesirable"
        )
    return train, test, meta


def _flat(dataset, seed: int):
    """(shuffled rows, source group of each row, token lengths, labels), the arrays in the rows' order."""
    import numpy as np

    columns = dataset.select_columns(["labels", "lengths"]).with_format("arrow")[:]
    counts = columns["labels"].combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
    labels = columns["labels"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    lengths = columns["lengths"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(len(counts)), counts)
    flat = dataset.map(
        _explode,
        batched=True,
        remove_columns=dataset.column_names,
        new_fingerprint=f"{dataset._fingerprint}-unpaired",
        desc="Splitting into unpaired rows",
    )
    order = np.random.default_rng(seed).permutation(len(flat))
    return flat.select(order), parents[order], lengths[order], labels[order]


def _explode(batch: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    for prompt, completions, labels in zip(batch["prompt"], batch["completions"], batch["labels"], strict=True):
        for completion, label in zip(completions, labels, strict=True):
            out["prompt"].append(prompt)
            out["completion"].append(completion)
            out["label"].append(label)
    return out


def add_group(out: dict[str, list], group: Group, keep: int, empty: int) -> None:
    """Append a group to a batch's output columns (`keep`/`empty`: the row outcomes of `rows`)."""
    out["prompt"].append(group.prompt)
    out["completions"].append(list(group.completions))
    out["labels"].append(list(group.labels))
    out["lengths"].append(list(group.lengths))
    out["_length"].append(max(group.lengths, default=0))
    out["_drop"].append(keep if group.keep else empty)
    out["_cut"].append(group.prompt_cut)
