"""`prepare_data`: a validated recipe and a tokenizer in, the datasets a TRL trainer consumes out.

Per source: load, detect the format, remove benchmark rows (training rows only), pick the weighted rows,
then normalise, render and tokenize the picked rows in one pass (`data.num_proc` workers). The sources are
pooled (several shuffled together; a single source's training rows keep its order, which the trainer's
sampler shuffles), and re-split when `test_split_size` asks for it. The result is cached by content
fingerprint; on several processes the main process prepares it first and the others read the cache.

Output columns, by the shape of rows the recipe's method asks for (what TRL 1.16 takes without
re-tokenizing):

    text     text                                  the trainer tokenizes (and packs) it
    tokens   input_ids, assistant_masks            the trainer folds the mask into labels (any flags)
    pairs    prompt, chosen, rejected (strings)    the trainer tokenizes; no BOS/EOS is doubled
    unpaired prompt, completion (strings), label   the same; a pair gives two rows (see unpaired.py)
    prompts  prompt (messages), passthrough cols   the trainer generates; the rewards read the other columns
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from alignkit.chat_templates import CHATML
from alignkit.data import cache, formats, mixture, sources, unpaired
from alignkit.data.decontaminate import Benchmarks, load_benchmarks
from alignkit.data.report import DataReport, LengthStats, SourceReport
from alignkit.data.rows import (
    KEEP,
    OUTPUT_COLUMNS,
    Contaminated,
    Preprocessor,
    RowFailure,
    features,
    prompt_column,
    text_column,
)
from alignkit.data.templates import ensure_chat_template
from alignkit.errors import Problem, UserError
from alignkit.methods.method import PAIR_ROWS, TOKEN_ROWS, UNPAIRED_ROWS

logger = logging.getLogger("alignkit.data")

_META = ["_length", "_drop", "_cut"]


@dataclass
class PreparedData:
    """The datasets a trainer consumes, and the report of how they were made."""

    train: Any
    """datasets.Dataset with the method's columns (see the module docstring)."""
    test: Any | None
    report: DataReport
    notices: list[str] = field(default_factory=list)


def prepare_data(recipe, tokenizer) -> PreparedData:
    """Load, normalise, mix, split and tokenize the recipe's data for its method.

    Raises:
        UserError: for any problem with the data (exit 2), naming the source and what to fix.
    """
    if recipe.method.data.chat_template and ensure_chat_template(tokenizer, recipe):
        raise RuntimeError("call ensure_chat_template(tokenizer, recipe) before loading the model: it adds tokens")
    prepared = _main_process_first(lambda: _prepare(recipe, tokenizer))
    # Notices on settings the cache key leaves out (a loss weight): made on every run, never cached.
    method_notices = recipe.method.data_notices(recipe.section, prepared.report)
    prepared.report.notices += method_notices
    prepared.notices += method_notices
    origin = "from the cache" if prepared.report.cached else "prepared"
    logger.info("%s data %s (fingerprint %s)", recipe.method.name, origin, prepared.report.fingerprint)
    for line in prepared.notices:
        logger.info(line)
    return prepared


def _main_process_first(work):
    """Run `work` on the global main process first, then each node's main, then the rest (cache readers).

    A failure on a main process still releases the others (they then fail the same way themselves), so a
    data error never leaves ranks waiting at a barrier until the distributed timeout.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return work()
    from accelerate import PartialState

    state = PartialState()

    def first(is_main: bool, inner):
        if not is_main:
            state.wait_for_everyone()
        try:
            return inner()
        finally:
            if is_main:
                state.wait_for_everyone()

    return first(state.is_main_process, lambda: first(state.is_local_main_process, work))


def _template_origin(recipe, tokenizer) -> str:
    if not recipe.method.data.chat_template:
        return f"none ({recipe.method.name} trains on raw text)"
    if recipe.data.chat_template:
        name = recipe.data.chat_template.strip().lower()
        return f"recipe: {name}" if name in ("chatml", "zephyr") else "recipe: inline Jinja"
    if getattr(tokenizer, "chat_template", None) == CHATML:
        return "ChatML (alignkit's)"
    return "the tokenizer's own"


def _prepare(recipe, tokenizer) -> PreparedData:
    loaded: dict[int, Any] = {}
    key = _cache_key(recipe, tokenizer, loaded)
    hit = cache.load(key)
    if hit is not None:
        train, test, report_dict = hit
        report = DataReport.from_dict(report_dict)
        report.cached = True
        return PreparedData(train=train, test=test, report=report, notices=report.summary_lines() + report.notices)
    data, method, section = recipe.data, recipe.method, recipe.section
    benchmarks = load_benchmarks(list(data.decontaminate)) if data.decontaminate else Benchmarks()
    report = DataReport(
        method=method.name,
        max_length=getattr(section, "max_length", None),
        chat_template=_template_origin(recipe, tokenizer),
        fingerprint=key,
    )
    if benchmarks.skipped_short:
        report.notices.append(
            f"decontamination ignores {benchmarks.skipped_short} benchmark strings shorter than 3 words"
        )
    preprocessor = Preprocessor.for_recipe(recipe, tokenizer)
    parts: list[tuple[int, _Processed]] = []
    with cache.scratch() as scratch:
        for index, source in enumerate(data.datasets):
            dataset = loaded.get(index) or sources.load_source(source, index, cache_dir=sources.hf_cache_dir())
            work = _SourceWork(source, index, key, scratch)
            source_report, processed = _process_source(work, dataset, recipe, preprocessor, benchmarks)
            if processed is not None:
                parts.append((len(report.sources), processed))
            report.sources.append(source_report)
        train, test, meta = _pool(recipe, parts, report)
        if method.data.rows == UNPAIRED_ROWS:
            train, test, meta = unpaired.flatten(train, test, meta, report, data.seed)
        packing = section.packing_strategy if getattr(section, "packing", False) else None
        _finish_report(report, train, test, method.data.rows, meta, packing=packing, too_long=method.data.too_long)
        # The method's columns only, always in the same order (datasets keeps updated columns where they were).
        columns = [*OUTPUT_COLUMNS[method.data.rows], *preprocessor.passthrough]
        train = train.select_columns(columns)
        if test is not None:
            test = test.select_columns(columns)
        train, test = cache.store(key, train, test, report.to_dict())
    return PreparedData(train=train, test=test, report=report, notices=report.summary_lines() + report.notices)


def _cache_key(recipe, tokenizer, loaded: dict[int, Any]) -> str:
    """The content fingerprint of what the prepared data depends on; Hub sources are loaded into `loaded`."""
    data, method = recipe.data, recipe.method
    signatures = []
    for index, source in enumerate(data.datasets):
        signature = sources.signature(source)
        if signature is None:  # a Hub dataset: its own fingerprint is its content signature
            loaded[index] = sources.load_source(source, index, cache_dir=sources.hf_cache_dir())
            signature = {"hub": loaded[index]._fingerprint}
        signatures.append(signature)
    return cache.fingerprint(
        {
            "method": method.name,
            "data": data.model_dump(mode="json", exclude={"num_proc"}),
            # Only the fields that change the rows: a new beta or loss_type reuses the prepared data.
            "section": {name: getattr(recipe.section, name) for name in method.data.row_fields},
            "passthrough": sorted(method.data.passthrough(recipe.section)),
            "tokenizer": cache.tokenizer_fingerprint(tokenizer),
            "sources": signatures,
            "benchmarks": [sources.path_signature(p) for p in data.decontaminate],
        }
    )


@dataclass
class _Processed:
    """One source after preprocessing: its rows, their outcomes, and which positions feed train and test."""

    dataset: Any
    """The preprocessing output (no indices mapping), method columns only."""
    meta: dict[str, Any]
    """numpy arrays per processed row: _length, _cut, and _source (the source's position in the report)."""
    train: Any
    """Positions into `dataset` for the training set (repeated for oversampled rows), dropped rows left out."""
    test: Any


@dataclass(frozen=True)
class _SourceWork:
    """One source of the mixture on its way through preprocessing, and where its map outputs go."""

    source: Any
    index: int
    key: str
    scratch: Any
    """The scratch folder for map outputs, or None when caching is off (outputs stay in memory)."""

    def problem(self, message: str) -> UserError:
        return sources.problem(self.source, self.index, message)

    def map_kwargs(self, step: str, rows: int, num_proc: int | None) -> dict[str, Any]:
        where = (
            {"keep_in_memory": True}
            if self.scratch is None
            else {"cache_file_name": str(self.scratch / f"{step}-{self.index}.arrow")}
        )
        return {
            "batched": True,
            "num_proc": _workers(num_proc, rows),
            "new_fingerprint": f"{self.key}-{step}-{self.index}",
            **where,
        }


def _process_source(work: _SourceWork, dataset, recipe, preprocessor, benchmarks):
    """Detect, decontaminate, pick and preprocess one source; returns its report and rows (None if none)."""
    import numpy as np

    detected, report = _detect(work, dataset, recipe)
    passthrough = _passthrough(work, dataset, recipe, preprocessor)
    dataset = dataset.select_columns(list(dict.fromkeys([*detected.columns, *passthrough])))
    train_idx, test_idx = _pick(work, dataset, detected, recipe.data, benchmarks, report)
    unique = np.unique(np.concatenate([train_idx, test_idx]))
    report.loss = preprocessor.loss_description(detected)
    if len(unique) == 0:
        return report, None
    # Each picked row is processed once, however many copies oversampling takes of it.
    subset = dataset.select(unique) if len(unique) < len(dataset) else dataset
    try:
        processed = subset.map(
            preprocessor.bound(detected),
            batch_size=256,
            with_indices=True,
            remove_columns=subset.column_names,
            features=features(recipe.method.data.rows, {c: dataset.features[c] for c in preprocessor.passthrough}),
            desc=f"Preparing {work.source.path} ({detected.format})",
            **work.map_kwargs("prep", len(unique), recipe.data.num_proc),
        )
    except RowFailure as err:
        position, message = err.args
        # Counted from 1, as a JSON Lines file's line numbers and every editor count them.
        raise work.problem(f"row {int(unique[position]) + 1}: {message}") from None
    return report, _kept_rows(processed, unique, train_idx, test_idx, report)


def _passthrough(work: _SourceWork, dataset, recipe, preprocessor) -> tuple[str, ...]:
    """The columns carried through unchanged (what the rewards read); a source lacking one is refused, naming the
    recipe field that reads it and the columns the source has."""
    fields = recipe.method.data.passthrough(recipe.section)
    for column in preprocessor.passthrough:
        if column not in dataset.column_names:
            found = ", ".join(dataset.column_names) or "none"
            raise UserError(
                Problem(
                    source="recipe",
                    path=fields[column],
                    message=f"reads the column {column!r}, which data.datasets.{work.index} ({work.source.path}) lacks"
                    f" (its columns: {found}); name one of them, or add the column to the data",
                )
            )
    return preprocessor.passthrough


def _detect(work: _SourceWork, dataset, recipe) -> tuple[formats.Detected, SourceReport]:
    source, method = work.source, recipe.method
    if len(dataset) == 0:
        raise work.problem(f"split {source.split!r} has no rows")
    try:
        detected = formats.detect(dataset.column_names, dataset[0], method, text_column(recipe), prompt_column(recipe))
    except ValueError as err:
        raise work.problem(f"no {method.name} format fits: {err}") from None
    report = SourceReport(
        path=source.path,
        name=source.name,
        split=source.split,
        role=source.role,
        weight=source.weight,
        format=detected.format,
        rows_in=len(dataset),
    )
    return detected, report


def _pick(work: _SourceWork, dataset, detected, data, benchmarks, report: SourceReport):
    """Row indices for training (benchmark rows removed, then weighted) and for testing (weighted)."""
    import numpy as np

    source, rows_in = work.source, len(dataset)
    seed = mixture.source_seed(data.seed, work.index)
    train_idx = test_idx = np.zeros(0, dtype=np.int64)
    if source.role in ("train", "both"):
        clean = np.arange(rows_in)
        if benchmarks:
            flagged = dataset.map(
                Contaminated(benchmarks, detected.columns),
                remove_columns=dataset.column_names,
                desc=f"Decontaminating {source.path}",
                **work.map_kwargs("decon", rows_in, data.num_proc),
            )
            clean = np.flatnonzero(~_flat_column(flagged, "_contaminated").astype(bool))
            report.decontaminated = rows_in - len(clean)
        picked = mixture.weighted_indices(len(clean), source.weight, seed)
        train_idx = clean[np.asarray(picked, dtype=np.int64)] if picked else train_idx
    if source.role in ("test", "both"):
        test_idx = np.asarray(mixture.weighted_indices(rows_in, source.weight, seed + 1), dtype=np.int64)
    return train_idx, test_idx


def _kept_rows(processed, unique, train_idx, test_idx, report: SourceReport) -> _Processed:
    """The processed rows with the dropped ones left out of train and test; counts go into `report`."""
    import numpy as np

    meta = {name: _flat_column(processed, name) for name in ("_length", "_drop", "_cut")}
    drops = meta.pop("_drop")

    def kept(indices):
        positions = np.searchsorted(unique, indices)
        return positions[drops[positions] == KEEP], len(positions)

    train_positions, train_picked = kept(train_idx)
    test_positions, test_picked = kept(test_idx)
    report.dropped = train_picked - len(train_positions) + test_picked - len(test_positions)
    report.train_rows, report.test_rows = len(train_positions), len(test_positions)
    report.rows_out = report.train_rows + report.test_rows
    return _Processed(
        dataset=processed.remove_columns([c for c in _META if c in processed.column_names]),
        meta=meta,
        train=train_positions,
        test=test_positions,
    )


def _workers(num_proc: int | None, rows: int) -> int | None:
    # Worker start-up costs more than it saves on small inputs.
    if not num_proc or num_proc <= 1 or rows < 2 * num_proc * 256:
        return None
    return num_proc


def _pool(recipe, parts: list[tuple[int, _Processed]], report: DataReport):
    """Pool the sources, shuffle, split; returns (train, test, per-train-row meta arrays)."""
    import numpy as np
    from datasets import concatenate_datasets

    data = recipe.data
    if not parts or not any(len(p.train) for _, p in parts):
        raise _empty("train", report)
    offsets = np.cumsum([0] + [len(p.dataset) for _, p in parts])
    pooled = concatenate_datasets([p.dataset for _, p in parts]) if len(parts) > 1 else parts[0][1].dataset
    meta = {name: np.concatenate([p.meta[name] for _, p in parts]) for name in ("_length", "_cut")}
    meta["_source"] = np.concatenate([np.full(len(p.dataset), position) for position, p in parts])
    train_idx = np.concatenate([p.train + offset for (_, p), offset in zip(parts, offsets, strict=False)])
    test_idx = np.concatenate([p.test + offset for (_, p), offset in zip(parts, offsets, strict=False)])
    order = np.random.default_rng(data.seed).permutation(len(train_idx))
    if len(test_idx):
        if data.test_split_size:
            report.notices.append("test_split_size is ignored: the sources with role test (or both) are the test set")
    elif any(s.role in ("test", "both") for s in data.datasets):
        raise _empty("test", report)
    elif data.test_split_size:
        n_test = mixture.test_rows(len(train_idx), data.test_split_size)
        if n_test >= len(train_idx) or n_test == 0:
            raise UserError(
                Problem(
                    source="recipe",
                    path="data.test_split_size",
                    message=f"{data.test_split_size:g} of {len(train_idx)} pooled rows gives {n_test} test rows,"
                    f" leaving {len(train_idx) - n_test} to train on; use a smaller fraction or count",
                )
            )
        # The shuffled pool's last rows become the test set.
        order, test_idx = order[: len(order) - n_test], train_idx[order[len(order) - n_test :]]
        train_idx = train_idx[_training_order(order, parts)]
        size = len(report.sources)
        train_counts = np.bincount(meta["_source"][train_idx], minlength=size)
        test_counts = np.bincount(meta["_source"][test_idx], minlength=size)
        for position, source in enumerate(report.sources):
            source.train_rows, source.test_rows = int(train_counts[position]), int(test_counts[position])
    else:
        train_idx = train_idx[_training_order(order, parts)]
    train = pooled.select(train_idx)
    test = pooled.select(test_idx) if len(test_idx) else None
    return train, test, {name: values[train_idx] for name, values in meta.items()}


def _training_order(order, parts: list[tuple[int, _Processed]]):
    """The pool positions of the training rows, in the order the trainer gets them. The rows of a single source
    keep the source's order: the trainer's sampler shuffles them with `training.seed` as plain TRL's does over
    the same file, so the same seed draws the same batches as a TRL script. Several sources are shuffled
    together (`data.seed`), so that packing and sequential reading see them interleaved."""
    import numpy as np

    if sum(1 for _, part in parts if len(part.train)) > 1:
        return order
    return np.sort(order)


def _empty(which: str, report: DataReport) -> UserError:
    per_source = "; ".join(
        f"{s.path} [{s.split}]: {s.rows_in} found, weight {s.weight:g}, {s.decontaminated} decontaminated,"
        f" {s.dropped} dropped"
        for s in report.sources
    )
    return UserError(
        Problem(
            source="recipe",
            path="data.datasets",
            message=f"no {which} rows left after weighting, decontamination and dropping ({per_source}); check the"
            " weights, splits and roles",
        )
    )


def _finish_report(
    report: DataReport, train, test, rows: str, meta: dict[str, Any], packing: bool = False, too_long: str = "cut"
) -> None:
    report.train_rows = len(train)
    report.test_rows = len(test) if test is not None else 0
    lengths = meta["_length"]
    report.train_lengths = LengthStats.of(lengths)
    if report.max_length:
        report.truncated = int((lengths > report.max_length).sum())
    if rows in (PAIR_ROWS, UNPAIRED_ROWS):
        report.prompt_truncated = int(meta["_cut"].astype(bool).sum())
    if report.truncated:
        what = "cut to it" if rows == TOKEN_ROWS else f"{too_long} by the trainer"
        if packing in ("wrapped", "bfd_split"):
            what = f"{packing} packing carries the rest into the next sequences"
        report.notices.append(f"{report.truncated} of {report.train_rows} training rows exceed max_length ({what})")
    if report.prompt_truncated:
        report.notices.append(f"{report.prompt_truncated} prompts were cut from the left to max_prompt_length")
    loss = sorted({s.loss for s in report.sources if s.loss})
    report.loss = "; ".join(loss)


def _flat_column(dataset, name: str):
    """One scalar column of a dataset without an indices mapping, as a numpy array (no Python lists)."""
    return dataset.data.column(name).to_numpy()
