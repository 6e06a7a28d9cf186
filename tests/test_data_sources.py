"""Every kind of source (files, folders, save_to_disk layouts, Hub ids) and every way one can be wrong."""

from __future__ import annotations

import json

import pytest

from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.errors import UserError
from alignkit.methods import METHODS

ROWS = [{"prompt": f"what is {i}? ", "completion": f"{i}", "id": i} for i in range(10)]


def prepare(source: dict, method: str = "sft", **data):
    recipe = METHODS[method].recipe.model_validate(
        {"model": {"name_or_path": "tiny"}, "data": {"datasets": [source], **data}}
    )
    tokenizer = build_tokenizer()
    ensure_chat_template(tokenizer, recipe)
    return prepare_data(recipe, tokenizer), tokenizer


def numbers(prepared, tokenizer) -> list[int]:
    """Which fixture rows made it, read back from the tokens (the completion is the row's number)."""
    out = []
    for row in prepared.train:
        text = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m])
        out.append(int(text.replace("<|im_end|>", "")))
    return sorted(out)


def error_of(source: dict, method: str = "sft") -> str:
    with pytest.raises(UserError) as err:
        prepare(source, method)
    return str(err.value)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_json_parquet_csv_and_arrow_files_load_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    table = Dataset.from_list(ROWS).data.table
    files = {
        "rows.jsonl": lambda p: write_jsonl(p, ROWS),
        "rows.json": lambda p: p.write_text(json.dumps(ROWS), encoding="utf-8"),
        "rows.parquet": lambda p: pq.write_table(table, p),
        "rows.csv": lambda p: Dataset.from_list(ROWS).to_csv(str(p), index=False),
    }
    for name, write in files.items():
        write(tmp_path / name)
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for name in [*files, "rows.arrow"]:
        prepared, tokenizer = prepare({"path": str(tmp_path / name)})
        assert numbers(prepared, tokenizer) == list(range(10)), name
        assert prepared.report.sources[0].format == "prompt-completion"


def test_slices_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    prepared, tokenizer = prepare({"path": str(path), "split": "train[2:5]"})
    assert numbers(prepared, tokenizer) == [2, 3, 4]
    prepared, tokenizer = prepare({"path": str(path), "split": "train[-30%:]", "columns": ["prompt", "completion"]})
    assert numbers(prepared, tokenizer) == [7, 8, 9]


def test_save_to_disk_dataset_dict_with_any_split_names_and_slices(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"train_sft": Dataset.from_list(ROWS), "test_sft": Dataset.from_list(ROWS[:3])}).save_to_disk(
        str(folder)
    )
    prepared, tokenizer = prepare({"path": str(folder), "split": "train_sft[:40%]"})
    assert numbers(prepared, tokenizer) == [0, 1, 2, 3]
    message = error_of({"path": str(folder), "split": "train_gen"})
    assert message == (
        f"{folder}: data.datasets.0: split 'train_gen' not found; the folder has splits train_sft, test_sft (fix split)"
    )


def test_save_to_disk_dataset_and_per_split_folders(tmp_path):
    from datasets import Dataset

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    prepared, tokenizer = prepare({"path": str(tmp_path / "one"), "split": "train[5:]"})
    assert numbers(prepared, tokenizer) == [5, 6, 7, 8, 9]
    # the handbook's fallback layout: <path>/<split> holding one saved Dataset each
    Dataset.from_list(ROWS[:4]).save_to_disk(str(tmp_path / "hb" / "train_prefs"))
    Dataset.from_list(ROWS[4:]).save_to_disk(str(tmp_path / "hb" / "test_prefs"))
    prepared, tokenizer = prepare({"path": str(tmp_path / "hb"), "split": "train_prefs"})
    assert numbers(prepared, tokenizer) == [0, 1, 2, 3]
    message = error_of({"path": str(tmp_path / "hb"), "split": "train"})
    assert message == (
        f"{tmp_path / 'hb'}: data.datasets.0: split 'train' not found; the folder has splits test_prefs, train_prefs"
    )


def test_folder_of_data_files_splits_by_file_name(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:7])
    write_jsonl(folder / "test.jsonl", ROWS[7:])
    prepared, tokenizer = prepare({"path": str(folder)})
    assert numbers(prepared, tokenizer) == list(range(7))
    message = error_of({"path": str(folder), "split": "validation"})
    assert message.startswith(f"{folder}: data.datasets.0: split 'validation' not found:")


def test_missing_local_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert error_of({"path": str(missing)}) == f"{missing}: data.datasets.0: file or folder not found: {missing}"


def test_hub_id_goes_through_load_dataset_and_reports_why_it_failed():
    message = error_of({"path": "HuggingFaceH4/no_such_dataset", "split": "train_sft"})
    assert message == (
        "HuggingFaceH4/no_such_dataset: data.datasets.0: not a local file or folder, and loading it from the Hugging"
        " Face Hub failed: Couldn't reach 'HuggingFaceH4/no_such_dataset' on the Hub (OfflineModeIsEnabled)"
    )


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"prompt": "x", "completion": \n')
    assert error_of({"path": str(path)}) == (
        f"{path}: data.datasets.0: {path}:3: not valid JSON (Expecting value at column 31)"
    )


def test_a_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    assert error_of({"path": str(path)}) == (
        f"{path}: data.datasets.0: {path}:2: each line must be a JSON object, found list"
    )


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": "a" "completion": "b"}\n]\n')
    assert error_of({"path": str(path)}) == (
        f"{path}: data.datasets.0: {path}:3: not valid JSON (Expecting ',' delimiter)"
    )


def test_malformed_csv_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,completion\nwhat is 1?,1\nwhat is 2?,2,extra\n")
    assert error_of({"path": str(path)}) == f"{path}: data.datasets.0: {path}:3: 3 fields where the header has 2"


def test_single_file_has_only_a_train_split(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert error_of({"path": str(path), "split": "test"}) == (
        f"{path}: data.datasets.0: a single data file has one split, 'train' (given 'test'); use split: train (slices"
        " such as train[:10%] work) and role: test to evaluate on it"
    )


def test_unsupported_file_and_empty_folder(tmp_path):
    odd = tmp_path / "rows.xlsx"
    odd.write_text("x")
    assert error_of({"path": str(odd)}) == (
        f"{odd}: data.datasets.0: unsupported data file rows.xlsx; use one of .arrow, .csv, .json, .jsonl,"
        " .parquet, .tsv, .txt files"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of({"path": str(empty)}) == (
        f"{empty}: data.datasets.0: folder {empty} holds no data files (.arrow, .csv, .json, .jsonl, .parquet, .tsv,"
        " .txt) and is not a save_to_disk folder"
    )


def test_missing_columns_are_named_with_those_found(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert error_of({"path": str(path), "columns": ["prompt", "answer"]}) == (
        f"{path}: data.datasets.0: columns answer not found; the source has prompt, completion, id (fix"
        " data.datasets[].columns)"
    )


def test_empty_sources_are_errors(tmp_path):
    from datasets import DatasetDict

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert error_of({"path": str(empty)}) == f"{empty}: data.datasets.0: {empty} is empty: no rows"
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert (
        error_of({"path": str(path), "split": "train[10:]"})
        == f"{path}: data.datasets.0: split 'train[10:]' has no rows"
    )
    folder = tmp_path / "saved"
    DatasetDict({"train": prepare_rows(ROWS)}).save_to_disk(str(folder))
    assert error_of({"path": str(folder), "split": "train[:0%]"}) == (
        f"{folder}: data.datasets.0: split 'train[:0%]' has no rows"
    )


def prepare_rows(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize("caching", ["on", "off"])
def test_nothing_is_written_into_the_users_data_folder(tmp_path, monkeypatch, caching):
    from datasets import Dataset

    if caching == "off":
        monkeypatch.setenv("ALIGNKIT_DATA_CACHE", "off")
    folder = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(folder))
    before = sorted(p.name for p in folder.iterdir())
    prepared, tokenizer = prepare({"path": str(folder), "weight": 0.5})
    assert len(numbers(prepared, tokenizer)) == 5
    assert sorted(p.name for p in folder.iterdir()) == before
    if caching == "on":
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [prepared.report.fingerprint]
