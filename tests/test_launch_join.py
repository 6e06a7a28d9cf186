"""Machines other than the first join the run machine 0 starts: they wait for its frozen record and write no
run files of their own, so machine 0's output-folder checks never see a folder another machine half made."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from alignkit.errors import RunError
from alignkit.launch import start


def _record(out, *, finished=False, **stamps):
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignkit_run.json").write_text(json.dumps({"method": "sft", "finished": finished, **stamps}))


def _stamp(seconds_ago: float = 0) -> str:
    return time.strftime(start.TIME_FORMAT, time.localtime(time.time() - seconds_ago))


@pytest.fixture
def launched(monkeypatch):
    calls = []
    monkeypatch.setattr("alignkit.launch.spawn.launch_workers", lambda out, plan: calls.append((out, plan)))
    monkeypatch.setattr(start, "JOIN_POLL_SECONDS", 0.05)
    return calls


def test_a_joining_machine_writes_nothing_until_machine_0_has_frozen_the_run(tmp_path, launched):
    out, plan = tmp_path / "run", SimpleNamespace(machine_rank=1)
    seen_before = []

    def machine_0():
        time.sleep(0.4)
        seen_before.append(out.exists())  # the joining machine made nothing meanwhile
        _record(out, started_at=_stamp())

    thread = threading.Thread(target=machine_0)
    thread.start()
    lines = []
    assert start._join(out, plan, echo=lines.append) is None
    thread.join()
    assert seen_before == [False]
    assert launched == [(out, plan)]
    assert lines == [f"machine 1: waiting for machine 0 to start the run in {out}"]


def test_an_earlier_record_is_not_this_launch(tmp_path, launched, monkeypatch):
    """A finished run (about to be refused or replaced) and an old unfinished one (about to be resumed, which
    stamps resumed_at) are not joined until machine 0 has written this launch's record."""
    out = tmp_path / "run"
    monkeypatch.setattr(start, "JOIN_SECONDS", 0.3)
    for old in ({"finished": True, "started_at": _stamp()}, {"started_at": _stamp(3 * 3600)}):
        _record(out, **old)
        with pytest.raises(RunError) as err:
            start._join(out, SimpleNamespace(machine_rank=2), echo=lambda line: None)
        assert str(err.value) == (
            f"{out}: machine 0 did not start the run within 0.3 s of machine 2 (its output says why: a refused"
            " recipe or output folder, or it never started)"
        )
    assert launched == []
    _record(out, started_at=_stamp(3 * 3600), resumed_at=_stamp(5))
    start._join(out, SimpleNamespace(machine_rank=2), echo=lambda line: None)
    assert len(launched) == 1


def test_only_an_unfinished_record_of_this_launch_counts():
    assert start._started_since(None, 0) is False
    assert start._started_since({"finished": False, "started_at": "not a time"}, 0) is False
    assert start._started_since({"finished": True, "started_at": _stamp()}, time.time() - 60) is False
    assert start._started_since({"finished": False, "started_at": _stamp()}, time.time() - 60) is True
