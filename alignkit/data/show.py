"""`alignkit data`: prepare a recipe's data with the tokenizer only and show what will be trained on.

No model weights are loaded and nothing is written to the run's output directory (prepared data goes to
the data cache, where the training run then finds it). The text view highlights the spans that carry the
loss; `--json` prints one document for scripts and tests.
"""

from __future__ import annotations

import json
from typing import Any

from alignkit.methods.method import PAIR_ROWS, UNPAIRED_ROWS


def segments(prepared, tokenizer, count: int) -> list[list[tuple[str, str]]]:
    """The first `count` training rows as (text, style) pieces: 'trained', 'context', 'chosen', 'rejected' or
    'label' (an unpaired row's completion is styled chosen when desirable, rejected when not)."""
    dataset = prepared.train
    out = []
    for row in dataset.select(range(min(count, len(dataset)))):
        if "input_ids" in row:
            pieces: list[tuple[str, str]] = []
            ids, mask = row["input_ids"], row["assistant_masks"]
            start = 0
            for position in range(1, len(ids) + 1):
                if position == len(ids) or mask[position] != mask[start]:
                    text = tokenizer.decode(ids[start:position], skip_special_tokens=False)
                    pieces.append((text, "trained" if mask[start] else "context"))
                    start = position
            out.append(pieces)
        elif "label" in row:
            kind = "chosen" if row["label"] else "rejected"
            tag = "\n--- desirable ---" if row["label"] else "\n--- undesirable ---"
            out.append([(row["prompt"], "context"), (row["completion"], kind), (tag, "label")])
        elif "chosen" in row:
            out.append(
                [
                    (row["prompt"], "context"),
                    (row["chosen"], "chosen"),
                    ("\n--- rejected ---\n", "label"),
                    (row["rejected"], "rejected"),
                ]
            )
        else:
            out.append([(row["text"], "trained")])
    return out


def document(resolved, prepared, tokenizer, show: int) -> dict[str, Any]:
    from alignkit.data.report import examples

    report = prepared.report.to_dict()
    return {
        "method": resolved.method,
        "recipe_name": resolved.name,
        "source": str(resolved.source),
        **report,
        "examples": examples(prepared, tokenizer, show),
    }


def report_data(method: str, recipe_ref: str, overrides: tuple[str, ...], show: int, as_json: bool) -> None:
    """Resolve the recipe, prepare its data for `method`, and print the report (text or JSON)."""
    from alignkit.data.tokenizer import training_tokenizer
    from alignkit.quiet import quiet_libraries
    from alignkit.recipe.resolve import resolve_recipe

    resolved = resolve_recipe(method, recipe_ref, overrides=overrides)
    quiet_libraries()  # the report, and with --json one JSON document, is all that is printed
    recipe = resolved.recipe
    tokenizer, _ = training_tokenizer(recipe, run_code=False)  # a preview reads data; it never runs a model's code
    from alignkit.data.prepare import prepare_data

    prepared = prepare_data(recipe, tokenizer)
    if as_json:
        print(json.dumps(document(resolved, prepared, tokenizer, show), indent=2, ensure_ascii=False))
        return
    _print_text(resolved, prepared, tokenizer, show)


def _print_text(resolved, prepared, tokenizer, show: int) -> None:
    from rich.text import Text

    from alignkit.terminal import output_console, print_rule

    report = prepared.report
    console = output_console()
    for notice in resolved.notices:
        console.print(Text(f"note: {notice}", style="yellow"))
    state = "from the cache" if report.cached else "prepared and cached"
    console.print(
        Text.assemble(
            (f"{resolved.method}", "bold"),
            " data of recipe ",
            (resolved.name, "bold"),
            f" ({resolved.source}), {state}",
        )
    )
    console.print(_sources_table(report))
    console.print(_facts_table(report, resolved.recipe.method.data.rows in (PAIR_ROWS, UNPAIRED_ROWS)))
    for notice in report.notices:
        console.print(Text(f"note: {notice}", style="yellow"))
    styles = {
        "trained": "bold green",
        "context": "dim",
        "chosen": "bold green",
        "rejected": "bold red",
        "label": "italic",
    }
    for number, pieces in enumerate(segments(prepared, tokenizer, show), start=1):
        print_rule(console, f"example {number} (green: trained on)")
        text = Text()
        for piece, kind in pieces:
            text.append(piece, style=styles[kind])
        console.print(text)


def _sources_table(report):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="sources", title_justify="left")
    # The path folds onto several lines rather than being cut: it is what the user must recognise.
    table.add_column(escape("path [split]"), overflow="fold", ratio=1)
    table.add_column("role, format", overflow="fold")
    for column in ("found", "decont.", "weight", "train", "test", "dropped"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in report.sources:
        table.add_row(
            escape(f"{s.path} [{s.split}]"),  # a path or split may hold [brackets], which rich reads as markup
            escape(f"{s.role}, {s.format}"),
            str(s.rows_in),
            str(s.decontaminated),
            f"{s.weight:g}",
            str(s.train_rows),
            str(s.test_rows),
            str(s.dropped),
        )
    return table


def _facts_table(report, pairs: bool):
    from rich.markup import escape
    from rich.table import Table

    lengths = report.train_lengths
    facts = Table(show_header=False, title="data", title_justify="left")
    facts.add_column("key")
    facts.add_column("value")
    facts.add_row("train / test rows", f"{report.train_rows} / {report.test_rows}")
    facts.add_row(
        "tokens per train row",
        f"min {lengths.min}, mean {lengths.mean:g}, median {lengths.median:g}, p95 {lengths.p95:g}, max {lengths.max}"
        f" ({lengths.total} in all)",
    )
    if report.max_length:
        facts.add_row(
            "rows over max_length", f"{report.truncated} of {report.train_rows} (max_length {report.max_length})"
        )
    if pairs:
        facts.add_row("prompts cut from the left", str(report.prompt_truncated))
    if report.desirable_rows or report.undesirable_rows:
        facts.add_row("desirable / undesirable rows", f"{report.desirable_rows} / {report.undesirable_rows}")
    facts.add_row("loss on", escape(report.loss))
    facts.add_row("chat template", escape(report.chat_template))
    return facts
