"""Preprocessing runs once: a second run of the same recipe reads the cache, anything that matters misses it."""

from __future__ import annotations

import json

import pytest

from alignkit.data import prepare as prepare_module
from alignkit.data import rows as rows_module
from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.methods import METHODS


def chats(count: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"what is {i} plus {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ]
        }
        for i in range(count)
    ]


def write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def run(path, chat_template=None, sft=None, **data):
    recipe = METHODS["sft"].recipe.model_validate(
        {
            "model": {"name_or_path": "tiny"},
            "data": {
                "datasets": [{"path": str(path), **data.pop("source", {})}],
                "chat_template": chat_template,
                **data,
            },
            "sft": {"assistant_only_loss": True, **(sft or {})},
        }
    )
    tokenizer = build_tokenizer()
    ensure_chat_template(tokenizer, recipe)
    return prepare_data(recipe, tokenizer)


def test_second_run_reads_the_cache(tmp_path, monkeypatch):
    path = write(tmp_path, chats(20))
    first = run(path, source={"weight": 0.5})
    assert first.report.cached is False
    assert len(list((tmp_path / "cache").glob("*/report.json"))) == 1

    def refuse(*args, **kwargs):  # any preprocessing now fails: a passing run came from the cache
        raise AssertionError("preprocessing ran")

    monkeypatch.setattr(rows_module.Preprocessor, "for_recipe", refuse)
    second = run(path, source={"weight": 0.5}, num_proc=4)  # workers change speed, not rows: same entry
    assert second.report.cached is True
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.train["assistant_masks"] == first.train["assistant_masks"]
    assert second.report.sources == first.report.sources
    assert second.report.fingerprint == first.report.fingerprint


def test_settings_that_do_not_change_rows_keep_the_cache(tmp_path):
    path = write(tmp_path, chats(6))
    first = run(path)
    second = run(path, num_proc=2, sft={"packing": True, "padding_free": True})
    assert second.report.cached is True
    assert second.report.fingerprint == first.report.fingerprint


@pytest.mark.parametrize("change", ["file", "weight", "template", "seed", "max_length", "assistant_only"])
def test_what_changes_the_rows_misses_the_cache(tmp_path, change):
    path = write(tmp_path, chats(10))
    first = run(path)
    kwargs: dict = {}
    if change == "file":
        write(tmp_path, chats(11))
    elif change == "weight":
        kwargs["source"] = {"weight": 0.5}
    elif change == "template":
        kwargs["chat_template"] = "zephyr"
    elif change == "seed":
        kwargs["seed"] = 1
    elif change == "max_length":
        kwargs["sft"] = {"max_length": 20}
    else:
        kwargs["sft"] = {"assistant_only_loss": False}
    second = run(path, **kwargs)
    assert second.report.cached is False
    assert second.report.fingerprint != first.report.fingerprint


def test_caching_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_DATA_CACHE", "off")
    path = write(tmp_path, chats(4))
    assert run(path).report.cached is False
    assert run(path).report.cached is False
    assert not (tmp_path / "cache").exists()


def test_two_workers_give_the_same_rows_as_one(tmp_path, monkeypatch):
    path = write(tmp_path, chats(1100))
    one = run(path)
    monkeypatch.setenv("ALIGNKIT_DATA_CACHE", str(tmp_path / "cache-2"))
    two = run(path, num_proc=2)
    assert two.report.cached is False
    assert two.train["input_ids"] == one.train["input_ids"]
    assert two.train["assistant_masks"] == one.train["assistant_masks"]


def test_a_bad_row_is_named_by_its_place_in_the_source_with_workers(tmp_path):
    from alignkit.errors import UserError

    rows = chats(1100)
    rows[1050] = {"messages": [{"role": "user"}]}
    path = write(tmp_path, rows)
    with pytest.raises(UserError) as err:
        run(path, num_proc=2)
    assert str(err.value) == f"{path}: data.datasets.0: row 1051: messages[0] needs role and content (found ['role'])"


class _FakeState:
    """Stands in for accelerate's PartialState on one rank, recording the order of work and barriers."""

    def __init__(self, rank: int, local_rank: int, log: list[str]):
        self.is_main_process = rank == 0
        self.is_local_main_process = local_rank == 0
        self.log = log

    def wait_for_everyone(self):
        self.log.append("barrier")


@pytest.mark.parametrize(
    ("rank", "local_rank", "expected"),
    [
        (0, 0, ["work", "barrier", "barrier"]),  # the global main prepares first, then releases the rest
        (1, 0, ["barrier", "work", "barrier"]),  # another node's main: after the global main, before its node
        (3, 1, ["barrier", "barrier", "work"]),  # everyone else reads the cache last
    ],
)
def test_main_process_prepares_first(monkeypatch, rank, local_rank, expected):
    import accelerate

    log: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(accelerate, "PartialState", lambda: _FakeState(rank, local_rank, log))
    assert prepare_module._main_process_first(lambda: log.append("work") or "done") == "done"
    assert log == expected


def test_a_failing_main_process_still_releases_the_others(monkeypatch):
    import accelerate

    log: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", lambda: _FakeState(0, 0, log))

    def fail():
        raise ValueError("bad data")

    with pytest.raises(ValueError, match="bad data"):
        prepare_module._main_process_first(fail)
    assert log == ["barrier", "barrier"]
