"""Running `alignkit sample`: generate candidates shard by shard, score them, select, write the output folder.

The prompts are cut into shards of `sample.shard_size`; each finished shard is written whole
(`shards/shard-NNNNN.jsonl`, atomically), so a killed run resumes at the first unfinished shard and never
generates a finished prompt again. Each generation call is seeded from `sample.seed` and the position of its
first prompt, so a resumed run gives the candidates an uninterrupted one would have. Nothing is selected
until every shard is done; then `candidates.jsonl`, `selected.jsonl`, `alignkit_sample.json`, `scores.png`
and the card are written, and the run file says finished last. The folder follows the training runs' rules
(alignkit.launch.start): a finished run is never overwritten without `--overwrite`, an unfinished one of a
different recipe is refused, and the folder is locked while the run works in it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import UserError
from alignkit.files import atomic_write
from alignkit.launch.lock import output_lock
from alignkit.launch.replacing import REPLACING, drop_replaced, move_aside, put_back
from alignkit.launch.start import freeze_run, prepare_output_dir
from alignkit.recipe.resolve import ResolvedRecipe
from alignkit.run_record import RunRecord, read_info
from alignkit.sampling import report
from alignkit.sampling.select import merge_duplicates, select

SHARDS = "shards"


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    def path(self, out: Path) -> Path:
        return out / SHARDS / f"shard-{self.index:05d}.jsonl"


def shards(count: int, size: int) -> list[Shard]:
    """The shards of `count` prompts, `size` prompts each (the last one shorter)."""
    return [Shard(i, start, min(start + size, count)) for i, start in enumerate(range(0, count, size))]


def start_sample(
    resolved: ResolvedRecipe,
    *,
    overwrite: bool = False,
    argv: list[str] | None = None,
    echo=print,
    num_processes: int = 1,
):
    """Run `resolved` (a sample recipe) into its output folder; returns the summary.

    With `num_processes` above 1, that many worker processes on this machine (one GPU each on a GPU machine)
    share the unfinished shards (alignkit.sampling.worker), and this process selects once they are done.
    """
    out = resolved.output_dir
    with output_lock(out, echo=echo):
        action = prepare_output_dir(resolved, overwrite=overwrite)
        previous = read_info(out) if action == "resume" else None
        aside = move_aside(out) if action == "replace" else None
        if aside is not None:
            echo(f"note: replacing the run in {out} (--overwrite); it waits in {aside} until generation starts")
        try:
            record = freeze_run(resolved, list(argv or sys.argv), previous=previous, replacing=aside)
            return _sample(resolved, record, aside, echo=echo, num_processes=num_processes)
        except BaseException as err:
            if aside is not None and aside.is_dir():
                put_back(out, aside)
                echo(f"note: the new run did not start generating; the old run is back in {out}")
            elif action == "new" and isinstance(err, UserError) and not (out / SHARDS).is_dir():
                shutil.rmtree(out, ignore_errors=True)  # bad input found late: leave nothing half written
            raise


def _sample(resolved: ResolvedRecipe, record: RunRecord, aside: Path | None, *, echo, num_processes: int) -> dict:
    from alignkit.quiet import quiet_libraries
    from alignkit.sampling.generation import choose_backend
    from alignkit.sampling.prompts import load_prompts
    from alignkit.scoring.specs import labels

    quiet_libraries()
    recipe, out, source = resolved.recipe, resolved.output_dir, str(resolved.source)
    prompt_set = load_prompts(recipe, source)
    _check_scorers(recipe, prompt_set.columns, source)
    backend, reason = choose_backend(recipe.sample.backend)
    echo(f"note: generating with {backend}: {reason}")
    names = labels(recipe.sample.scorers)
    planned = shards(len(prompt_set.prompts), recipe.sample.shard_size)
    todo = [shard for shard in planned if not shard.path(out).is_file()]
    if len(todo) < len(planned):
        done = len(planned) - len(todo)
        where = f"resuming at shard {todo[0].index}" if todo else "selecting"
        echo(f"note: {done} of {len(planned)} shards are finished; {where}")
    record.info["backend"] = backend
    record.save_info()
    if todo and num_processes > 1:
        timing = _generate_in_workers(out, num_processes, todo, echo)
    elif todo:
        timing = generate_shards(recipe, backend, prompt_set.prompts, todo, names, out, echo=echo, aside=aside)
    else:
        timing = {}
    drop_replaced(aside)
    records = [json.loads(line) for shard in planned for line in shard.path(out).read_text("utf-8").splitlines()]
    run_facts = {"backend": backend, "backend_reason": reason, "generation": timing}
    run_facts["prompts_read_as"] = prompt_set.read_as
    summary = _finish(recipe, records, names, out, source, run_facts)
    atomic_write(out / report.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    record.info.pop(REPLACING, None)
    record.mark_finished(summary["counts"])
    echo(_closing_line(summary, out))
    return summary


def _check_scorers(recipe, columns: set[str], source: str) -> None:
    from alignkit.scoring.specs import check_scorers

    problems = check_scorers(recipe.sample.scorers, columns, where="sample.scorers", source=source)
    if problems:
        raise UserError(problems)


def _generate_in_workers(out: Path, processes: int, todo: list[Shard], echo) -> dict[str, Any]:
    """Start `processes` workers on this machine to share the unfinished shards; wait for them; returns the
    throughput of all of them together (worker start-up included)."""
    from alignkit.launch.spawn import launch_workers
    from alignkit.sampling.worker import WORKER_MODULE, worker_plan

    echo(f"note: {processes} processes share the {len(todo)} unfinished shards")
    started = time.monotonic()
    launch_workers(out, worker_plan(processes), module=WORKER_MODULE, module_args=[str(out.resolve())])
    elapsed = time.monotonic() - started
    candidates = [
        c
        for shard in todo
        for line in shard.path(out).read_text("utf-8").splitlines()
        for c in json.loads(line)["candidates"]
    ]
    completions = sum(c["copies"] for c in candidates)
    tokens = sum(c["tokens"] * c["copies"] for c in candidates)
    return {
        "seconds": round(elapsed, 3),
        "processes": processes,
        "prompts": sum(shard.stop - shard.start for shard in todo),
        "generated_tokens": tokens,
        "completions_per_second": round(completions / elapsed, 3),
        "tokens_per_second": round(tokens / elapsed, 3),
    }


def generate_shards(
    recipe, backend: str, prompts, todo: list[Shard], names, out: Path, *, echo, aside=None, device=None
) -> dict[str, Any]:
    """Generate and score every shard of `todo`, writing each as it finishes; returns the throughput figures."""
    from alignkit.sampling.generation import GenerationSettings, load_generator
    from alignkit.scoring.build import build_scorers

    section = recipe.sample
    settings = GenerationSettings(
        num_samples=section.num_samples,
        max_new_tokens=section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        top_k=section.top_k,
        stop=tuple(section.stop),
        batch_size=section.batch_size,
    )
    generator = load_generator(recipe, backend, device=device)
    scorers = build_scorers(section.scorers, names)
    drop_replaced(aside)  # every input is read and every model loaded: the replaced run can go
    progress = Progress(sum(shard.stop - shard.start for shard in todo), section.num_samples, echo=echo)
    try:
        for shard in todo:
            lines = []
            for start in range(shard.start, shard.stop, section.batch_size):
                chunk = prompts[start : min(start + section.batch_size, shard.stop)]
                # Seeded by position, so a resumed run draws what an uninterrupted one would have.
                seed = (section.seed + start) % 2**32
                generated = generator.generate([p.messages for p in chunk], settings, seed=seed)
                lines += scored_records(chunk, generated, scorers, first_id=start)
                progress.advance(len(chunk), sum(c.tokens for group in generated for c in group))
            atomic_write(shard.path(out), "".join(json.dumps(line) + "\n" for line in lines))
    finally:
        progress.stop()
        generator.close()
        for scorer in scorers:
            scorer.close()
    return progress.figures()


def scored_records(chunk, generated, scorers, *, first_id: int) -> list[dict[str, Any]]:
    """One record per prompt: its distinct completions, each with every scorer's value and the weighted total."""
    from alignkit.scoring.build import weighted_total

    records, flat = [], []
    for offset, (prompt, completions) in enumerate(zip(chunk, generated, strict=True)):
        candidates = [
            {"completion": c.text, "tokens": c.tokens, "finish": c.finish, "copies": copies}
            for c, copies in merge_duplicates(completions)
        ]
        record = {"id": first_id + offset, "prompt": prompt.messages, "row": prompt.row, "candidates": candidates}
        records.append(record)
        flat += [(prompt, candidate) for candidate in candidates]
    messages = [prompt.messages for prompt, _ in flat]
    texts = [candidate["completion"] for _, candidate in flat]
    rows = [prompt.row for prompt, _ in flat]
    tokens = [candidate["tokens"] for _, candidate in flat]
    values = {scorer.label: scorer.score(messages, texts, rows, tokens=tokens) for scorer in scorers}
    totals = weighted_total(scorers, values)
    for index, (_, candidate) in enumerate(flat):
        candidate["scores"] = {label: found[index] for label, found in values.items()}
        candidate["total"] = totals[index]
    return records


def _finish(recipe, records: list[dict], names: list[str], out: Path, source: str, run_facts: dict) -> dict:
    """Select, and write the candidates, the selected rows, the plot and the card; returns the summary."""
    section = recipe.sample
    atomic_write(out / report.CANDIDATES_FILE, "".join(json.dumps(r) + "\n" for r in records))
    chosen = select(records, section)
    atomic_write(out / report.SELECTED_FILE, "".join(json.dumps(r) + "\n" for r in chosen.rows))
    candidates = [c for r in records for c in r["candidates"]]
    generated = sum(c["copies"] for c in candidates)
    finish: dict[str, int] = {}
    for c in candidates:
        finish[c["finish"]] = finish.get(c["finish"], 0) + c["copies"]
    summary = {
        "counts": {
            "prompts": len(records),
            "completions": generated,
            "distinct_completions": len(candidates),
            "duplicates": generated - len(candidates),
            "selected_rows": len(chosen.rows),
        },
        "dropped": dict(chosen.dropped),
        "finish": finish,
        "select": section.select,
        "seed": section.seed,
        "weights": dict(zip(names, (spec.weight for spec in section.scorers), strict=True)),
        "scores": report.score_stats(candidates, names),
        "selected_scores": report.score_stats(chosen.chosen, names),
        **run_facts,
    }
    report.plot_scores(candidates, chosen.chosen, names, out / report.PLOT_FILE)
    atomic_write(out / report.CARD_FILE, report.render_card(recipe, summary, source))
    return summary


def _closing_line(summary: dict[str, Any], out: Path) -> str:
    counts = summary["counts"]
    dropped = ", ".join(f"{n} {reason}" for reason, n in summary["dropped"].items())
    return (
        f"sample done: {counts['prompts']} prompts, {counts['completions']} completions"
        f" ({counts['duplicates']} duplicates merged), {counts['selected_rows']} rows selected"
        + (f" (dropped: {dropped})" if dropped else "")
        + f" -> {out / report.SELECTED_FILE}"
    )


class Progress:
    """Prompts done of total, completions/s, tokens/s and ETA: a live line in a terminal, else a line per call
    at most every 10 seconds (CI logs)."""

    def __init__(self, total: int, per_prompt: int, *, echo, stream=None):
        self.total, self.per_prompt, self.echo = total, per_prompt, echo
        self.done = self.tokens = 0
        self.start = self.last_print = time.monotonic()
        self.stream = stream or sys.stderr
        self.bar = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("[bold]prompts {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[rates]}"),
                console=Console(file=self.stream),
            )
            self.bar.start()
            self.task = self.bar.add_task("sample", total=total, rates="")

    def advance(self, prompts: int, tokens: int) -> None:
        self.done += prompts
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rates=self._rates())
        elif time.monotonic() - self.last_print >= 10 or self.done == self.total:
            self.last_print = time.monotonic()
            self.echo(f"prompts {self.done}/{self.total}  {self._rates()}")

    def _rates(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        left = (self.total - self.done) * elapsed / self.done if self.done else 0
        completions = self.done * self.per_prompt / elapsed
        return f"{completions:,.1f} completions/s  {self.tokens / elapsed:,.0f} tokens/s  eta {int(left)}s"

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def figures(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.start
        return {
            "seconds": round(elapsed, 3),
            "prompts": self.done,
            "generated_tokens": self.tokens,
            "completions_per_second": round(self.done * self.per_prompt / elapsed, 3) if elapsed else 0.0,
            "tokens_per_second": round(self.tokens / elapsed, 3) if elapsed else 0.0,
        }
