"""A run never loses work nor trains on a wrong state: complete checkpoints only, `--overwrite` that keeps the
old run until the new one trains, one run per output folder, Ctrl-C exiting 130, path problems as exit 2,
and a failing rank reported once.

The fast tests replace training with a stand-in (`fake_training`), so what happens around it (the lock, the
folder, the exit code) is tested in a second; the slow ones train the tiny model for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import MINIMAL_SFT, chat_file

from alignkit.errors import Problem, UserError
from alignkit.launch.lock import LOCK_FILE
from alignkit.methods import METHODS
from alignkit.run_record import RunRecord

# The chat fine-tuning method: the one that reads token rows (conversations).
METHOD = next(name for name, method in METHODS.items() if method.data.rows == "tokens")


class FakeTraining:
    """Stands in for the worker's `train`: runs `behaviour(out)` and records what it saw."""

    def __init__(self):
        self.behaviour = self.finish
        self.calls: list[Path] = []
        self.lock_seen: list[dict | None] = []

    @staticmethod
    def finish(out: Path) -> dict:
        (out / "model.safetensors").write_bytes(os.urandom(64))
        RunRecord.load(out).mark_finished({"train_loss": 1.0})
        return {}

    def train(self, out: Path, **kwargs) -> dict:
        self.calls.append(out)
        lock = out / LOCK_FILE
        self.lock_seen.append(json.loads(lock.read_text()) if lock.is_file() else None)
        return self.behaviour(out)


@pytest.fixture
def fake_training(monkeypatch):
    import alignkit.train.worker as worker

    fake = FakeTraining()

    def setup_logging(out: Path) -> Path:
        path = out / "alignkit.log"
        path.touch()
        return path

    monkeypatch.setattr(worker, "setup_logging", setup_logging)
    monkeypatch.setattr(worker, "train", fake.train)
    return fake


@pytest.fixture
def recipe(write_recipe, tmp_path) -> Path:
    return write_recipe(MINIMAL_SFT.format(output_dir=tmp_path / "run", data=chat_file(tmp_path)))


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _finished_run(cli, recipe: Path, fake: FakeTraining) -> Path:
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 0, result.output
    out = recipe.parent / "run"
    assert json.loads((out / "alignkit_run.json").read_text())["finished"] is True
    return out


# Ctrl-C


def test_ctrl_c_exits_130_after_saying_how_to_resume(cli, recipe, fake_training):
    def interrupt(out):
        raise KeyboardInterrupt

    fake_training.behaviour = interrupt
    result = cli(METHOD, "--recipe", recipe)
    out = recipe.parent / "run"
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: interrupted; run the same command again to resume from the last checkpoint in {out}"
    )
    assert not (out / LOCK_FILE).exists()


def test_ctrl_c_outside_training_exits_130_too(cli, recipe, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("alignkit.launch.plan.plan_launch", interrupt)
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines()[-1] == "error: interrupted"


# --overwrite moves the old run aside


def test_overwrite_with_a_bad_input_leaves_the_finished_run_as_it_was(cli, recipe, fake_training):
    out = _finished_run(cli, recipe, fake_training)
    before = _tree(out)

    def bad_data(out):
        raise UserError(Problem(source="data/train.jsonl", message="file or folder not found"))

    fake_training.behaviour = bad_data
    result = cli(METHOD, "--recipe", recipe, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "error: data/train.jsonl: file or folder not found" in result.stderr
    assert _tree(out) == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith("run")) == ["run"]


def test_overwrite_keeps_the_old_run_aside_while_the_new_one_starts(cli, recipe, fake_training):
    out = _finished_run(cli, recipe, fake_training)
    old_weights = (out / "model.safetensors").read_bytes()
    seen = {}

    def new_run(out):
        asides = list(out.parent.glob("run.replaced-*"))
        seen["aside"] = asides
        seen["old weights"] = (asides[0] / "model.safetensors").read_bytes() if asides else None
        seen["new run holds"] = sorted(p.name for p in out.iterdir())
        return FakeTraining.finish(out)

    fake_training.behaviour = new_run
    result = cli(METHOD, "--recipe", recipe, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(seen["aside"]) == 1 and seen["old weights"] == old_weights
    assert "model.safetensors" not in seen["new run holds"]
    assert f"note: replacing the run in {out} (--overwrite); it waits in {seen['aside'][0]}" in result.output
    assert not seen["aside"][0].exists()  # the new run finished: the old one is gone


def test_overwrite_of_a_symlinked_run_replaces_it(cli, recipe, fake_training, tmp_path):
    out = _finished_run(cli, recipe, fake_training)
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    before = (out / "model.safetensors").read_bytes()
    result = cli(METHOD, "--recipe", recipe, "--output-dir", link, "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]


# One run per output folder


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def _lock(out: Path, pid: int, host: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started_at": "earlier"}))
    return path


def test_a_second_run_into_a_locked_folder_is_refused(cli, recipe, fake_training, live_process):
    out = recipe.parent / "run"
    lock = _lock(out, live_process)
    before = lock.read_text()
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 2, result.output
    host = socket.gethostname()
    assert result.stderr.strip() == (
        f"error: {out}: another alignkit run (process {live_process} on {host}, started earlier) is training into"
        f" this folder; wait for it to end or choose another --output-dir (if that process is gone, delete {lock})"
    )
    assert fake_training.calls == []
    assert lock.read_text() == before and sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_a_lock_held_on_another_host_is_respected(cli, recipe, fake_training):
    _lock(recipe.parent / "run", os.getpid(), host="some-other-node")
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 2, result.output
    assert f"(process {os.getpid()} on some-other-node" in result.stderr
    assert fake_training.calls == []


def test_a_stale_lock_of_a_dead_process_is_taken_over(cli, recipe, fake_training):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    out = recipe.parent / "run"
    _lock(out, dead)
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 0, result.output
    host = socket.gethostname()
    assert f"note: {out}: taking over the lock of process {dead} on {host}, which is gone" in result.output
    assert fake_training.lock_seen[0]["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_held_while_training_and_released_after(cli, recipe, fake_training):
    _finished_run(cli, recipe, fake_training)
    out = recipe.parent / "run"
    assert fake_training.lock_seen[0]["pid"] == os.getpid()
    assert fake_training.lock_seen[0]["host"] == socket.gethostname()
    assert not (out / LOCK_FILE).exists()


def test_two_runs_started_together_train_one_at_a_time(recipe, tmp_path):
    """Two real processes: the one that trains (a stand-in that waits) holds the folder; the other is refused."""
    started = tmp_path / "started"
    driver = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "import alignkit.train.worker as worker\n"
        "from alignkit.cli import app\n"
        f"started = Path({str(started)!r})\n"
        "def train(out, **kwargs):\n"
        "    started.write_text('yes')\n"
        "    time.sleep(60)\n"
        "worker.setup_logging = lambda out: out / 'alignkit.log'\n"
        "worker.train = train\n"
        f"sys.argv = ['alignkit', {METHOD!r}, '--recipe', {str(recipe)!r}]\n"
        "app()\n"
    )
    first = subprocess.Popen([sys.executable, "-c", driver])
    try:
        for _ in range(600):
            if started.exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), "the first run never began training"
        second = subprocess.run(
            [sys.executable, "-m", "alignkit", METHOD, "--recipe", str(recipe)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"another alignkit run (process {first.pid} on {socket.gethostname()}" in second.stderr


# The exit-code contract: problems with the user's paths are exit 2, naming the path


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("below-a-file", "cannot be a folder: {file} is a file"),
        ("/proc/alignkit-test/run", "cannot create this folder"),
        ("/sys/alignkit-test", "cannot create this folder"),
        ("dangling-link", "is a symbolic link to {tmp}/nowhere, which does not exist"),
    ],
)
def test_an_output_dir_that_cannot_be_made_is_exit_2(cli, recipe, fake_training, tmp_path, where, expected):
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    (tmp_path / "dangling-link").symlink_to(tmp_path / "nowhere")
    out = {"below-a-file": file / "run", "dangling-link": tmp_path / "dangling-link"}.get(where, Path(where))
    result = cli(METHOD, "--recipe", recipe, "--output-dir", out)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {out}: " + expected.format(file=file, tmp=tmp_path)), line
    assert line.endswith("choose another --output-dir") and "Traceback" not in result.output
    assert fake_training.calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_dir_in_a_read_only_folder_is_exit_2(cli, recipe, fake_training, tmp_path):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = cli(METHOD, "--recipe", recipe, "--output-dir", parent / "run")
    finally:
        parent.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(f"error: {parent / 'run'}: cannot create this folder: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable folders")
def test_a_recipe_in_an_unreadable_folder_is_exit_2(cli, recipe, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    inside = folder / "recipe.yaml"
    inside.write_text(recipe.read_text())
    folder.chmod(0)
    try:
        result = cli(METHOD, "--recipe", inside, "--dry-run")
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert str(inside) in result.stderr and "Traceback" not in result.output


def test_any_file_system_error_naming_a_path_is_exit_2_without_traceback(cli, recipe, monkeypatch):
    """The backstop: whatever check a path escapes, a file-system error about it is the user's to fix."""

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/locked/recipe.yaml")

    monkeypatch.setattr("alignkit.recipe.resolve.resolve_recipe", unreadable)
    result = cli(METHOD, "--recipe", recipe, "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: /data/locked/recipe.yaml: Permission denied"


# Resume only from a complete checkpoint


def _checkpoint(out: Path, step: int, *, marked: bool = True, leave_out: tuple[str, ...] = ()) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    files = {
        "model.safetensors": b"weights",
        "optimizer.pt": b"optimizer",
        "scheduler.pt": b"scheduler",
        "trainer_state.json": json.dumps({"global_step": step}).encode(),
    }
    if marked:
        files["alignkit_checkpoint.json"] = b'{"complete": true}'
    for name, content in files.items():
        if name not in leave_out:
            (folder / name).write_bytes(content)
    return folder


def test_the_newest_complete_checkpoint_is_chosen(tmp_path):
    from alignkit.train.checkpoints import resume_point

    _checkpoint(tmp_path, 2)
    four = _checkpoint(tmp_path, 4)
    assert resume_point(tmp_path, marked=True) == (four, [])


@pytest.mark.parametrize(
    ("leave_out", "marked", "missing"),
    [
        (("optimizer.pt",), True, "optimizer.pt"),
        (("scheduler.pt",), True, "scheduler.pt"),
        (("model.safetensors",), True, "weights"),
        (("trainer_state.json",), True, "trainer_state.json"),
        ((), False, "alignkit_checkpoint.json"),  # written, but never marked: a kill during saving
    ],
)
def test_an_incomplete_newest_checkpoint_is_skipped_with_a_notice(tmp_path, leave_out, marked, missing):
    from alignkit.train.checkpoints import resume_point

    two = _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, marked=marked, leave_out=leave_out)
    chosen, notices = resume_point(tmp_path, marked=True)
    assert chosen == two
    assert notices == [
        f"{tmp_path / 'checkpoint-4'} is incomplete (no {missing}), probably cut short while saving; not resuming"
        " from it"
    ]


def test_a_half_written_trainer_state_is_incomplete(tmp_path):
    from alignkit.train.checkpoints import resume_point

    two = _checkpoint(tmp_path, 2)
    (_checkpoint(tmp_path, 4) / "trainer_state.json").write_text('{"global_st')
    assert resume_point(tmp_path, marked=True)[0] == two


def test_no_complete_checkpoint_starts_from_step_0(tmp_path):
    from alignkit.train.checkpoints import resume_point

    (tmp_path / "checkpoint-3").mkdir()
    chosen, notices = resume_point(tmp_path, marked=True)
    assert chosen is None
    assert notices[-1] == "no complete checkpoint: training starts from step 0"


def test_checkpoints_from_before_markers_are_judged_by_their_files(tmp_path):
    from alignkit.train.checkpoints import resume_point

    three = _checkpoint(tmp_path, 3, marked=False)
    _checkpoint(tmp_path, 6, marked=False, leave_out=("optimizer.pt",))
    chosen, notices = resume_point(tmp_path, marked=False)
    assert chosen == three and "checkpoint-6 is incomplete (no optimizer.pt)" in notices[0]
    # Resumed by a version that marks: an unmarked checkpoint after a marked one was cut short.
    _checkpoint(tmp_path, 9)
    _checkpoint(tmp_path, 12, marked=False)
    assert resume_point(tmp_path, marked=False)[0] == tmp_path / "checkpoint-9"


def test_a_new_run_is_recorded_as_marking_its_checkpoints(cli, recipe, fake_training):
    out = _finished_run(cli, recipe, fake_training)
    assert json.loads((out / "alignkit_run.json").read_text())["marks_checkpoints"] is True


# Real training (slow)


def _training_recipe(folder: Path, model: Path, out: Path, **training) -> Path:
    data = folder / "chat.jsonl"
    if not data.exists():
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"what is {a} + {b}?"},
                    {"role": "assistant", "content": str(a + b)},
                ]
            }
            for a, b in ((i % 10, (3 * i) % 10) for i in range(16))
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = {
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"datasets": [{"path": str(data)}]},
        "training": {
            "output_dir": str(out),
            "learning_rate": 1e-2,
            "max_steps": 6,
            "per_device_train_batch_size": 2,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "save_strategy": "no",
            "seed": 0,
            **training,
        },
        "logging": {"logging_steps": 1},
        METHOD: {"max_length": 48},
    }
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_resume_skips_incomplete_checkpoints_and_matches_an_uninterrupted_run(cli, tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from alignkit.launch.plan import LaunchOptions, plan_launch
    from alignkit.launch.start import freeze
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.train.worker import train

    save = {"save_strategy": "steps", "save_steps": 2}
    straight = tmp_path / "straight"
    assert cli(METHOD, "--recipe", _training_recipe(tmp_path, tiny_model_dir, straight, **save)).exit_code == 0

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise RuntimeError("simulated crash")

    killed = tmp_path / "killed"
    recipe = _training_recipe(tmp_path, tiny_model_dir, killed, **save)
    resolved = resolve_recipe(METHOD, str(recipe))
    freeze(resolved, plan_launch(resolved.recipe, LaunchOptions(launch="none")), ["alignkit"], previous=None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(killed, callbacks=[Crash()])
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (killed / "checkpoint-4" / "alignkit_checkpoint.json").is_file()
    (killed / "checkpoint-4" / "optimizer.pt").unlink()  # a checkpoint without its optimizer state
    (killed / "checkpoint-5").mkdir()  # and one a kill left empty

    resumed = cli(METHOD, "--recipe", recipe)
    assert resumed.exit_code == 0, resumed.output
    assert f"note: {killed / 'checkpoint-5'} is incomplete (no alignkit_checkpoint.json, weights," in resumed.output
    assert f"note: {killed / 'checkpoint-4'} is incomplete (no optimizer.pt)" in resumed.output
    assert "resuming from checkpoint-2 (step 2)" in resumed.output
    a, b = _weights(straight), _weights(killed)
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs after resuming"


@pytest.mark.slow
def test_overwrite_restores_the_old_run_on_bad_data_and_drops_it_once_training_began(
    cli, tiny_model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    recipe = _training_recipe(tmp_path, tiny_model_dir, out, max_steps=2)
    assert cli(METHOD, "--recipe", recipe).exit_code == 0
    # This test process keeps the first run's log handler open, so its log grows; a command line's would not.
    before = {name: digest for name, digest in _tree(out).items() if name != "alignkit.log"}

    data = tmp_path / "chat.jsonl"
    rows = data.read_text()
    # The new run's input is bad in a way found only once the run reads its rows (a missing file is refused
    # before anything moves, by the pre-flight checks).
    data.write_text('{"messages": [{"role": "wizard", "content": "hi"}]}\n')
    refused = cli(METHOD, "--recipe", recipe, "--overwrite")
    assert refused.exit_code == 2, refused.output
    assert re.search(rf"error: {re.escape(str(data))}.*wizard", refused.stderr), refused.stderr
    assert {name: digest for name, digest in _tree(out).items() if name != "alignkit.log"} == before
    assert "note: the new run did not start training; the old run is back in" in refused.output

    data.write_text(rows)
    from transformers import TrainerCallback

    import alignkit.train.worker as worker

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("simulated crash after training began")

    real_train = worker.train
    monkeypatch.setattr(worker, "train", lambda out, **kwargs: real_train(out, callbacks=[Crash()], **kwargs))
    crashed = cli(METHOD, "--recipe", recipe, "--overwrite")
    assert crashed.exit_code == 1, crashed.output
    assert list(tmp_path.glob("run.replaced-*")) == []  # deleted as training began
    info = json.loads((out / "alignkit_run.json").read_text())
    assert info["finished"] is False and "replacing" not in info


@pytest.mark.slow
def test_a_rank_that_dies_is_reported_once_without_the_other_ranks_traceback(tiny_model_dir, tmp_path):
    from test_launch_train import CRASH, _free_port

    (tmp_path / "crash_worker.py").write_text(CRASH, encoding="utf-8")
    out = tmp_path / "run"
    recipe = _training_recipe(tmp_path, tiny_model_dir, out)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "ALIGNKIT_WORKER_MODULE": "crash_worker", "CRASH_AFTER": "2"}
    args = ["--recipe", recipe, "--launch", "ddp", "--num-processes", "2", "--main-process-port", _free_port()]
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", METHOD, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert output.count("simulated crash at step 2") == 1, output[-3000:]
    assert result.stderr.strip().splitlines()[-2:] == [
        f"error: worker rank 1 of 2 failed (exit code 1); full log: {out / 'alignkit.rank1.log'}",
        "error: RuntimeError: simulated crash at step 2",
    ]
    assert "Traceback" not in output and "Connection closed" not in output
    assert "torch/distributed/elastic" not in output and "closing signal" not in output
    assert "Traceback" in (out / "alignkit.rank1.log").read_text()
    assert not (out / LOCK_FILE).exists()
