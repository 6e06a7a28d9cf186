"""The multi-process launcher, with a stand-in worker module: ranks, environment, output, failures.

The stand-in records what each rank was given and can fail on one rank in the ways real workers fail (an
exception, a rejected input, a kill), while the other rank waits in a collective that can never complete.
Crash tests run the launcher in a child interpreter with a generous timeout, so a regression that hangs
fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from alignkit.errors import RunError
from alignkit.launch.plan import LaunchOptions, plan_launch
from alignkit.recipe.resolve import resolve_recipe

pytestmark = pytest.mark.slow

FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']}", flush=True)
    keys = ("ACCELERATE", "FSDP", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER")
    (out / f"rank{rank}.json").write_text(json.dumps({k: v for k, v in os.environ.items() if k.startswith(keys)}))
    crash, how = os.environ.get("FAKE_CRASH_RANK"), os.environ.get("FAKE_CRASH_HOW", "raise")
    if crash is None:
        sys.exit(0)
    if str(rank) == crash:
        time.sleep(1)
        if how == "raise":
            raise ValueError(f"boom on rank {rank}")
        if how == "usererror":
            print(f"error: data/train.jsonl: file not found on rank {rank}", file=sys.stderr, flush=True)
            sys.exit(2)
        if how == "abort":
            # As a rank does whose error went to its own log before a runtime thread aborted it at shutdown.
            log = "rank 1 failed\\nTraceback (most recent call last):\\nRuntimeError: simulated crash at step 5\\n"
            with (out / f"alignkit.rank{rank}.log").open("a") as handle:
                handle.write(log)
            os.abort()
        os.kill(os.getpid(), signal.SIGKILL)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()  # never completes: the other rank is gone
    time.sleep(600)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    """Put the stand-in worker module on the workers' import path."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fake_worker.py").write_text(FAKE_WORKER, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")]))
    return modules


def _plan(profile: str, port: int):
    recipe = resolve_recipe("sft", "tiny-demo").recipe
    return plan_launch(recipe, LaunchOptions(launch=profile, num_processes=2, main_process_port=port))


@pytest.mark.parametrize("profile", ["ddp", "zero3", "fsdp"])
def test_two_ranks_start_with_the_profiles_environment_and_rank_prefixed_output(tmp_path, fake_worker, capfd, profile):
    from alignkit.launch.profiles import launcher_precision
    from alignkit.launch.spawn import launch_workers

    out = tmp_path / "run"
    out.mkdir()
    port = _free_port()
    plan = _plan(profile, port)
    launch_workers(out, plan, module="fake_worker")

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [env["RANK"] for env in ranks] == ["0", "1"]
    assert all(env["WORLD_SIZE"] == "2" for env in ranks)
    assert all(env["MASTER_PORT"] == str(port) for env in ranks)
    output = capfd.readouterr().out
    assert "[rank0] hello from rank 0 of 2" in output
    assert "[rank1] hello from rank 1 of 2" in output
    folder = out / "launch" / "node0"
    assert (folder / "accelerate_config.yaml").is_file()
    env = ranks[1]
    if profile == "zero3":
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str((folder / "deepspeed_config.json").resolve())
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    elif profile == "fsdp":
        assert env["ACCELERATE_USE_FSDP"] == "true"
        assert env["FSDP_VERSION"] == "2"
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
        assert env["ACCELERATE_MIXED_PRECISION"] == launcher_precision(plan)
    else:
        assert "ACCELERATE_USE_DEEPSPEED" not in env
        assert "ACCELERATE_USE_FSDP" not in env


def _launch_in_child(
    tmp_path, fake_worker, crash_rank: int, how: str, earlier_log: str | None = None
) -> subprocess.CompletedProcess:
    out = tmp_path / "run"
    out.mkdir()
    if earlier_log is not None:  # rank 1's own log as an earlier run into the same folder left it
        (out / "alignkit.rank1.log").write_text(earlier_log)
    driver = textwrap.dedent(
        f"""
        import sys
        from alignkit.errors import AlignkitError
        from alignkit.launch.plan import LaunchOptions, plan_launch
        from alignkit.launch.spawn import launch_workers
        from alignkit.recipe.resolve import resolve_recipe

        recipe = resolve_recipe("sft", "tiny-demo").recipe
        plan = plan_launch(recipe, LaunchOptions(launch="ddp", num_processes=2, main_process_port={_free_port()}))
        try:
            launch_workers({str(out)!r}, plan, module="fake_worker")
        except AlignkitError as err:
            print("LAUNCH FAILED", type(err).__name__)
            print(err)
            sys.exit(err.exit_code)
        """
    )
    env = {**os.environ, "FAKE_CRASH_RANK": str(crash_rank), "FAKE_CRASH_HOW": how}
    # The timeout only turns a hang into a failure; the launch itself ends within seconds.
    return subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, env=env, timeout=240, check=False
    )


def test_a_crashing_rank_fails_the_launch_with_its_error(tmp_path, fake_worker):
    result = _launch_in_child(tmp_path, fake_worker, crash_rank=1, how="raise")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "LAUNCH FAILED RunError" in result.stdout
    assert "worker rank 1 of 2 failed (exit code 1)" in result.stdout
    assert "ValueError: boom on rank 1" in result.stdout
    log = tmp_path / "run" / "launch" / "node0" / "logs"
    assert "full log: " + str(log) in result.stdout
    assert "[rank1] ValueError: boom on rank 1" in result.stderr  # the traceback also reached the console


def test_a_rank_killed_by_a_signal_is_named_not_the_rank_the_launcher_stopped(tmp_path, fake_worker):
    result = _launch_in_child(tmp_path, fake_worker, crash_rank=0, how="kill")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker rank 0 of 2 failed (signal SIGKILL)" in result.stdout


EARLIER = "rank 1 failed\nTraceback (most recent call last):\nValueError: from an earlier run\n"


def test_a_rank_aborted_after_logging_its_error_is_reported_with_that_error(tmp_path, fake_worker):
    result = _launch_in_child(tmp_path, fake_worker, crash_rank=1, how="abort", earlier_log=EARLIER)
    assert result.returncode == 1, result.stdout + result.stderr
    own = tmp_path / "run" / "alignkit.rank1.log"
    assert f"worker rank 1 of 2 failed (signal SIGABRT); full log: {own}" in result.stdout
    assert "RuntimeError: simulated crash at step 5" in result.stdout
    assert "from an earlier run" not in result.stdout


def test_an_earlier_runs_error_in_the_ranks_log_is_not_reported_as_this_ones(tmp_path, fake_worker):
    result = _launch_in_child(tmp_path, fake_worker, crash_rank=1, how="kill", earlier_log=EARLIER)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker rank 1 of 2 failed (signal SIGKILL); full log: " in result.stdout
    assert "alignkit.rank1.log" not in result.stdout and "from an earlier run" not in result.stdout


def test_a_rank_rejecting_the_input_is_a_user_error(tmp_path, fake_worker):
    result = _launch_in_child(tmp_path, fake_worker, crash_rank=1, how="usererror")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "LAUNCH FAILED UserError" in result.stdout
    assert "rank 1: data/train.jsonl: file not found on rank 1" in result.stdout


def test_an_unusable_launch_config_is_a_run_error(tmp_path, fake_worker, monkeypatch):
    from alignkit.launch import spawn

    def broken(args):
        raise ValueError("bf16 mixed precision requires a supported device")

    monkeypatch.setattr("accelerate.commands.launch.launch_command", broken)
    with pytest.raises(RunError, match=r"could not start the workers \(ddp, 2 processes\): bf16 mixed precision"):
        spawn.launch_workers(tmp_path, _plan("ddp", _free_port()), module="fake_worker")
