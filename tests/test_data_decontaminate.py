"""Decontamination against local benchmark files: which rows go, counted per source."""

from __future__ import annotations

import json

import pytest

from alignkit.data.decontaminate import NGRAM, load_benchmarks
from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.errors import UserError
from alignkit.methods import METHODS

LONG = (
    "a farmer has seventeen sheep and all but nine run away through the broken gate so how many sheep"
    " does the farmer still have in the field"
)  # 26 words
SHORT = "What is the capital of Burkina Faso?"


@pytest.fixture
def benchmarks(tmp_path):
    txt = tmp_path / "bench.txt"
    txt.write_text(f"{SHORT}\nyes\n\n", encoding="utf-8")
    jsonl = tmp_path / "bench.jsonl"
    jsonl.write_text(json.dumps({"task_id": "x/1", "prompt": LONG}) + "\n", encoding="utf-8")
    return [str(txt), str(jsonl)]


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return str(path)


def prepare(method, datasets, **data):
    recipe = METHODS[method].recipe.model_validate(
        {"model": {"name_or_path": "tiny"}, "data": {"datasets": datasets, **data}}
    )
    tokenizer = build_tokenizer()
    if method != "cpt":
        ensure_chat_template(tokenizer, recipe)
    return prepare_data(recipe, tokenizer)


def test_rows_with_benchmark_text_are_removed_and_counted_per_source(tmp_path, benchmarks):
    words = LONG.split()
    texts = [
        "what is the CAPITAL of  burkina faso? it is ouagadougou",  # whole string, other case and spacing
        "quiz: What is the capital of Burkina-Faso",  # punctuation differs, words match
        "intro " + " ".join(words[5 : 5 + NGRAM]) + " outro",  # a 13-word run of the long string
        "intro " + " ".join(words[5 : 5 + NGRAM - 1]) + " outro",  # 12 words: kept
        "yes yes yes",  # the benchmark line 'yes' is too short to count
        "what is the capital of france",
        "cats and dogs",
    ]
    clean = write(tmp_path, "clean.jsonl", [{"text": "sun and rain"}, {"text": "red and blue"}])
    train = write(tmp_path, "train.jsonl", [{"text": t} for t in texts])
    held_out = write(tmp_path, "heldout.jsonl", [{"text": SHORT}])
    prepared = prepare(
        "cpt",
        [{"path": train}, {"path": clean}, {"path": held_out, "role": "test"}],
        decontaminate=benchmarks,
    )
    assert [s.decontaminated for s in prepared.report.sources] == [3, 0, 0]
    assert sorted(prepared.train["text"]) == sorted([*texts[3:], "sun and rain", "red and blue"])
    assert prepared.test["text"] == [SHORT]  # evaluation rows are not filtered
    # "yes" and the task id "x/1" are too short to count
    assert "decontamination ignores 2 benchmark strings shorter than 3 words" in prepared.report.notices


def test_conversations_are_checked_by_their_message_contents(tmp_path, benchmarks):
    rows = [
        {"messages": [{"role": "user", "content": SHORT.lower()}, {"role": "assistant", "content": "ouagadougou"}]},
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}]},
    ]
    prepared = prepare("sft", [{"path": write(tmp_path, "chat.jsonl", rows)}], decontaminate=benchmarks)
    assert prepared.report.sources[0].decontaminated == 1
    assert len(prepared.train) == 1


def test_weights_apply_to_the_clean_rows(tmp_path, benchmarks):
    rows = [{"text": f"cats {i}"} for i in range(8)] + [{"text": SHORT}, {"text": SHORT}]
    prepared = prepare("cpt", [{"path": write(tmp_path, "t.jsonl", rows), "weight": 0.5}], decontaminate=benchmarks)
    source = prepared.report.sources[0]
    assert (source.rows_in, source.decontaminated, source.rows_out) == (10, 2, 4)


def test_benchmark_files_must_exist_and_parse(tmp_path):
    missing = tmp_path / "gsm8k.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"one string"\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_benchmarks([str(missing), str(bad), str(tmp_path / "bench.csv")])
    assert [str(p) for p in err.value.problems] == [
        f"{missing}: data.decontaminate.0: benchmark file not found (decontamination reads local files only)",
        f"{bad}:2: data.decontaminate.1: not valid JSON (Expecting value)",
        f"{tmp_path / 'bench.csv'}: data.decontaminate.2: benchmark file not found (decontamination reads local"
        " files only)",
    ]
