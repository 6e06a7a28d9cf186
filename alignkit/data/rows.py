"""Per-batch row work for one source: normalise, render and tokenize, as `datasets.map` calls it.

The rows come out in the shape the recipe's method asks for (`DataNeeds.rows`): raw text, token ids with a
loss mask, rendered preference pairs, labelled unpaired completions (grouped until `unpaired.flatten`), or
prompts as message lists with the method's passthrough columns beside them, unchanged.
Runs inside `data.num_proc` worker processes, so everything here pickles: the tokenizer, the loss policy,
the detected format. A refused row raises `RowFailure(position, message)`; `prepare` adds the source's name.
Besides the output columns each batch returns `_length` (tokens before truncation), `_drop` (KEEP, or why
the row is dropped) and `_cut` (truncated), which `prepare` reads for the report and then removes.
"""

from __future__ import annotations

from alignkit.data import formats, unpaired
from alignkit.data.decontaminate import Benchmarks, row_text
from alignkit.data.masking import (
    LossPolicy,
    render_conversation,
    render_prompt_completion,
    render_text,
    tokenize_with_masks,
)
from alignkit.data.preference import TrainerTokens, raw_pair, render_pair
from alignkit.data.templates import TemplateRowError, adds_bos_on_encode, render
from alignkit.methods.method import PAIR_ROWS, PROMPT_ROWS, TEXT_ROWS, TOKEN_ROWS, UNPAIRED_ROWS

KEEP, NO_LOSS, EMPTY, TOO_LONG = 0, 1, 2, 3
"""Row outcomes (the `_drop` column): kept, no token left to train on, empty or identical responses."""

OUTPUT_COLUMNS = {
    TEXT_ROWS: ["text"],
    TOKEN_ROWS: ["input_ids", "assistant_masks"],
    PAIR_ROWS: ["prompt", "chosen", "rejected"],
    UNPAIRED_ROWS: unpaired.OUTPUT_COLUMNS,
    PROMPT_ROWS: ["prompt"],
}
"""The columns handed to the trainer, per shape of prepared rows (besides the method's passthrough columns)."""


class RowFailure(ValueError):
    """A row the preprocessor refused: (position in the processed slice, message). Picklable across workers."""


def features(rows: str, passthrough=None):
    """Compact column types: token ids fit int32 and masks int8 (half and an eighth of the default int64).
    `passthrough`: the source's features of the columns carried through unchanged."""
    from datasets import Features, List, Value

    meta = {"_length": Value("int32"), "_drop": Value("int8"), "_cut": Value("bool")}
    if rows == PROMPT_ROWS:
        message = {"role": Value("string"), "content": Value("string")}
        columns = {"prompt": List(message), **dict(passthrough or {})}
    elif rows == TOKEN_ROWS:
        columns = {"input_ids": List(Value("int32")), "assistant_masks": List(Value("int8"))}
    elif rows == UNPAIRED_ROWS:
        columns = unpaired.group_features()
    else:
        columns = {name: Value("string") for name in OUTPUT_COLUMNS[rows]}
    return Features({**columns, **meta})


def policy(recipe, tokenizer) -> LossPolicy:
    """Which tokens carry the loss, as the recipe's method says (methods that mask nothing: the trainer decides)."""
    make = recipe.method.data.loss_policy
    return make(recipe.section, tokenizer) if make is not None else LossPolicy()


def prompt_column(recipe) -> str | None:
    """The column a prompt-row method's recipe names as the prompt, or None (the format decides)."""
    field = recipe.method.data.prompt_column_field
    return getattr(recipe.section, field) if field else None


def text_column(recipe) -> str:
    """The source column raw-text methods read (a section field names it), else `text`."""
    field = recipe.method.data.text_column_field
    return getattr(recipe.section, field) if field else "text"


class Contaminated:
    """Batched flagging of rows that contain benchmark text."""

    def __init__(self, benchmarks: Benchmarks, columns: tuple[str, ...]):
        self.benchmarks = benchmarks
        self.columns = tuple(c for c in columns if c not in formats.TEMPLATE_CONTEXT)  # template input, not text

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        size = len(next(iter(batch.values())))
        rows = [{c: batch[c][i] for c in self.columns} for i in range(size)]
        return {"_contaminated": [self.benchmarks.contains(row_text(row, self.columns)) for row in rows]}


class Preprocessor:
    """Normalise, render and tokenize a batch of one source's rows into `rows` (picklable for workers)."""

    def __init__(self, needs, tokenizer, policy: LossPolicy, system_prompt: str | None, section, text_column):
        self.rows = needs.rows
        # Carried beside the method's own columns (a passthrough column of the same name is that column).
        self.passthrough = tuple(c for c in needs.passthrough(section) if c not in OUTPUT_COLUMNS[needs.rows])
        self.tokenizer = tokenizer
        self.policy = policy
        self.system_prompt = system_prompt
        self.max_length = getattr(section, "max_length", None)
        self.max_prompt_length = getattr(section, "max_prompt_length", None)
        self.prompt_budget = needs.prompt_budget(section)
        self.text_column = text_column
        self.pair_tokens = None
        if self.rows in (PAIR_ROWS, UNPAIRED_ROWS):
            self.pair_tokens = TrainerTokens(
                bos_rule=needs.trainer_adds_bos,
                bos=tokenizer.bos_token,
                eos=tokenizer.eos_token,
                encode_adds_bos=adds_bos_on_encode(tokenizer),
            )

    @classmethod
    def for_recipe(cls, recipe, tokenizer) -> Preprocessor:
        return cls(
            recipe.method.data,
            tokenizer,
            policy(recipe, tokenizer),
            recipe.data.system_prompt,
            recipe.section,
            text_column(recipe),
        )

    def bound(self, detected: formats.Detected) -> _Bound:
        return _Bound(self, detected)

    def loss_description(self, detected: formats.Detected) -> str:
        shape = detected.shape
        if self.rows == TEXT_ROWS:
            return "text: every token"
        if self.rows == PAIR_ROWS:
            return "preference: chosen and rejected responses"
        if self.rows == UNPAIRED_ROWS and shape == "preference":
            return "preference: chosen as desirable, rejected as undesirable completions"
        if self.rows == UNPAIRED_ROWS:
            return "unpaired: each completion, desirable or undesirable by its label"
        if self.rows == PROMPT_ROWS:
            how = "the prompt column" if shape == "prompt" else "conversations minus the final assistant turn"
            return f"prompts ({how}): completions are generated and rewarded"
        if shape == "prompt-completion":
            if self.policy.completion_only:
                return "prompt-completion: the completion only"
            return (
                "prompt-completion: assistant turns only"
                if self.policy.assistant_only
                else "prompt-completion: every token"
            )
        if shape == "conversation":
            return "conversations: assistant turns only" if self.policy.assistant_only else "conversations: every token"
        return "text: every token"


class _Bound:
    """The preprocessor for one source, whose format is known."""

    def __init__(self, pre: Preprocessor, detected: formats.Detected):
        self.pre = pre
        self.detected = detected

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        pre = self.pre
        columns = list(batch)
        size = len(indices)
        rows = [{c: batch[c][i] for c in columns} for i in range(size)]
        detected = self.detected
        if pre.rows == TEXT_ROWS:
            return self._text(rows, detected, indices)
        if pre.rows == TOKEN_ROWS:
            return self._tokens(rows, detected, indices)
        if pre.rows == PAIR_ROWS:
            return self._pairs(rows, detected, indices)
        if pre.rows == UNPAIRED_ROWS:
            return self._unpaired(rows, detected, indices)
        if pre.rows == PROMPT_ROWS:
            return self._prompts(rows, detected, indices, batch)
        raise ValueError(f"unknown shape of prepared rows {pre.rows!r}")

    def _text(self, rows, detected, indices) -> dict[str, list]:
        texts = []
        for position, row in enumerate(rows):
            try:
                texts.append(formats.text_of(row, detected))
            except formats.RowError as err:
                raise RowFailure(indices[position], str(err)) from None
        encoded = self.pre.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return {
            "text": texts,
            # The trainer appends an end-of-sequence token to each text.
            "_length": [len(ids) + 1 for ids in encoded],
            "_drop": [EMPTY if not t.strip() else KEEP for t in texts],
            "_cut": [False] * len(texts),
        }

    def _tokens(self, rows, detected, indices) -> dict[str, list]:
        pre = self.pre
        rendered = []
        empty = []
        for position, row in enumerate(rows):
            try:
                context = formats.template_context(row, detected)
                if detected.shape == "conversation":
                    messages = formats.with_system(formats.conversation(row, detected), pre.system_prompt)
                    empty.append(not messages)
                    rendered.append(
                        render_conversation(pre.tokenizer, messages, pre.policy, context) if messages else None
                    )
                elif detected.shape == "prompt-completion":
                    prompt, completion = formats.prompt_completion(row, detected)
                    is_string = isinstance(prompt, str)
                    if not is_string:
                        prompt = formats.with_system(prompt, pre.system_prompt)
                    empty.append(False)
                    rendered.append(
                        render_prompt_completion(pre.tokenizer, prompt, completion, pre.policy, is_string, context)
                    )
                else:
                    text = formats.text_of(row, detected)
                    empty.append(not text.strip())
                    rendered.append(render_text(text, pre.policy))
            except (formats.RowError, TemplateRowError) as err:
                raise RowFailure(indices[position], str(err)) from None
        present = [r for r in rendered if r is not None]
        ids, masks = tokenize_with_masks(pre.tokenizer, present) if present else ([], [])
        out: dict[str, list] = {"input_ids": [], "assistant_masks": [], "_length": [], "_drop": [], "_cut": []}
        cursor = 0
        for item, is_empty in zip(rendered, empty, strict=True):
            if item is None:
                row_ids, row_mask = [], []
            else:
                row_ids, row_mask = ids[cursor], masks[cursor]
                cursor += 1
            length = len(row_ids)
            if pre.max_length is not None and length > pre.max_length:
                row_ids, row_mask = row_ids[: pre.max_length], row_mask[: pre.max_length]
            out["input_ids"].append(row_ids)
            out["assistant_masks"].append(row_mask)
            out["_length"].append(length)
            out["_drop"].append(EMPTY if is_empty else (KEEP if any(row_mask) else NO_LOSS))
            out["_cut"].append(length > len(row_ids))
        return out

    def _pairs(self, rows, detected, indices) -> dict[str, list]:
        pre = self.pre
        out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "_length": [], "_drop": [], "_cut": []}
        for position, row in enumerate(rows):
            try:
                if formats.is_plain_text_pair(row, detected):
                    pair = raw_pair(
                        pre.tokenizer,
                        row.get("prompt") if detected.format == formats.PREFERENCE else None,
                        row["chosen"],
                        row["rejected"],
                        pre.pair_tokens,
                        pre.max_prompt_length,
                    )
                    self._keep_pair(out, pair)
                    continue
                prompt, chosen, rejected = formats.preference(row, detected)
                prompt = formats.with_system(prompt, pre.system_prompt)
                if not chosen or not rejected:
                    out["prompt"].append("")
                    out["chosen"].append("")
                    out["rejected"].append("")
                    out["_length"].append(0)
                    out["_drop"].append(EMPTY)
                    out["_cut"].append(False)
                    continue
                pair = render_pair(
                    pre.tokenizer,
                    prompt,
                    chosen,
                    rejected,
                    pre.pair_tokens,
                    pre.max_prompt_length,
                    formats.template_context(row, detected),
                )
            except (formats.RowError, TemplateRowError) as err:
                raise RowFailure(indices[position], str(err)) from None
            self._keep_pair(out, pair)
        return out

    def _unpaired(self, rows, detected, indices) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in (*unpaired.GROUP_COLUMNS, "_length", "_drop", "_cut")}
        for position, row in enumerate(rows):
            try:
                group = unpaired.group_of(self.pre, row, detected)
            except (formats.RowError, TemplateRowError) as err:
                raise RowFailure(indices[position], str(err)) from None
            unpaired.add_group(out, group, KEEP, EMPTY)
        return out

    def _prompts(self, rows, detected, indices, batch) -> dict[str, list]:
        """Prompts as role/content messages (the trainer renders them with the chat template), their rendered
        length in tokens, and the passthrough columns as they are."""
        pre = self.pre
        prompts, texts = [], []
        for position, row in enumerate(rows):
            try:
                messages = formats.with_system(formats.prompt_of(row, detected), pre.system_prompt)
                prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
                texts.append(render(pre.tokenizer, prompt, add_generation_prompt=True))
            except (formats.RowError, TemplateRowError) as err:
                raise RowFailure(indices[position], str(err)) from None
            prompts.append(prompt)
        encoded = pre.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        budget = pre.prompt_budget
        return {
            "prompt": prompts,
            **{column: batch[column] for column in pre.passthrough},
            "_length": [len(ids) for ids in encoded],
            "_drop": [TOO_LONG if budget is not None and len(ids) > budget else KEEP for ids in encoded],
            "_cut": [False] * len(prompts),
        }

    @staticmethod
    def _keep_pair(out: dict[str, list], pair) -> None:
        out["prompt"].append(pair.prompt)
        out["chosen"].append(pair.chosen)
        out["rejected"].append(pair.rejected)
        out["_length"].append(pair.prompt_tokens + max(pair.chosen_tokens, pair.rejected_tokens))
        out["_drop"].append(KEEP if pair.chosen and pair.rejected and pair.chosen != pair.rejected else EMPTY)
        out["_cut"].append(pair.prompt_cut)
