"""`alignkit slurm`: the generated sbatch script, run against `srun`/`scontrol`/`sbatch` stand-ins.

The stand-ins are tiny shell scripts on PATH: `scontrol` names the allocation's nodes and records requeues,
`srun` runs its command once as node 0 (one node here), `sbatch` records the submitted script. The real run of
the script (one node, two CPU processes, the tiny model) is in test_launch_train.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from alignkit.launch.job import JobSpec, plan_job
from alignkit.launch.slurm import SlurmOptions, sbatch_script
from alignkit.recipe.resolve import resolve_recipe

STAND_INS = {
    "scontrol": """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf '%s\\n' ${STANDIN_HOSTS:-node-a node-b}; exit 0; fi
if [ "$1" = "requeue" ]; then echo "requeue $2" >> "$STANDIN_LOG"; exit 0; fi
exit 1
""",
    # Drop srun's own options, then run the command once per node of the allocation (all on this host), as
    # --ntasks-per-node=1 does; when a task fails, stop the others and fail, as --kill-on-bad-exit does.
    # STANDIN_LATE_NODE0: node 0 starts that many seconds after the others, as on a slow node.
    "srun": """#!/bin/bash
echo "srun $*" >> "$STANDIN_LOG"
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
pids=()
for ((node = 0; node < ${SLURM_NNODES:-1}; node++)); do
  (
    if [ "$node" -eq 0 ]; then sleep "${STANDIN_LATE_NODE0:-0}"; fi
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 exec "$@"
  ) &
  pids+=($!)
done
status=0
for ((left = ${#pids[@]}; left > 0; left--)); do
  wait -n "${pids[@]}"
  code=$?
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=$code; kill "${pids[@]}" 2>/dev/null; fi
done
exit $status
""",
    "sbatch": """#!/bin/bash
if [ -n "$SBATCH_REJECT" ]; then echo "sbatch: error: invalid partition specified: nope" >&2; exit 1; fi
echo "sbatch $*" >> "$STANDIN_LOG"
echo "Submitted batch job 12345"
""",
}

# Records the arguments and environment alignkit would have been started with, then waits if told to.
FAKE_ALIGNKIT = """#!/bin/bash
printf '%s\\n' "$@" > "$STANDIN_DIR/alignkit_args"
echo "${SLURM_NODEID:-unset}" > "$STANDIN_DIR/alignkit_node"
if [ -n "$FAKE_SLEEP" ]; then touch "$STANDIN_DIR/started"; sleep "$FAKE_SLEEP"; fi
"""


ONE_NODE = ("--nodes", "1", "--gpus-per-node", "2")


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {**STAND_INS, "fake-alignkit": FAKE_ALIGNKIT}.items():
        path = bin_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "standin.log"))
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path))
    return bin_dir


def _slurm_env(tmp_path, **extra) -> dict[str, str]:
    return {
        **os.environ,
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "1",
        "SLURM_JOB_ID": "4242",
        **extra,
    }


def _script(tmp_path, **spec) -> Path:
    spec = {"method": "sft", "recipe": "tiny-demo", "nodes": 1, "gpus_per_node": 2, **spec}
    path = tmp_path / "job.sbatch"
    path.write_text(sbatch_script(plan_job(JobSpec(**spec)), SlurmOptions(partition="gpu", time="1-00:00:00")))
    path.chmod(0o755)
    return path


def test_script_has_the_directives_and_a_valid_bash_syntax(tmp_path):
    text = _script(tmp_path, recipe="zephyr-7b-gemma", nodes=2, gpus_per_node=8, launch="zero3").read_text()
    for directive in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --job-name=alignkit-zephyr-7b-gemma-sft",
    ):
        assert directive in text.splitlines()
    assert "  --launch zero3\n" in text
    assert "  --num-machines 2\n  --num-processes 8\n" in text
    assert f"  --output-dir {Path('outputs/zephyr-7b-gemma-sft').resolve()}\n" in text
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --wait=60" in text
    assert "effective batch 256" in text
    assert "# Note: the recipe was tuned for 8 GPU(s), effective batch 128" in text
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=False).returncode == 0


def test_a_recipe_file_is_passed_by_absolute_path(tmp_path, write_recipe, tiny_model_dir, monkeypatch):
    recipe = write_recipe(
        f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{datasets: [{{path: data.jsonl}}]}}\n", name="mine.yaml"
    )
    monkeypatch.chdir(tmp_path)
    text = _script(tmp_path, recipe="mine.yaml").read_text()
    assert f"  --recipe {recipe.resolve()}\n" in text


def test_script_runs_alignkit_once_per_node_with_rank_and_main_node(tmp_path, stand_ins):
    script = _script(tmp_path)
    env = _slurm_env(tmp_path, ALIGNKIT=str(stand_ins / "fake-alignkit"))
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "alignkit_args").read_text().splitlines()
    assert args[:3] == ["sft", "--recipe", "tiny-demo"]
    joined = " ".join(args)
    assert "--launch ddp" in joined
    assert "--num-machines 1 --num-processes 2" in joined
    assert "--main-process-ip node-a --main-process-port 29500" in joined
    assert args[-2:] == ["--machine-rank", "0"]
    assert (tmp_path / "alignkit_node").read_text().strip() == "0"
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --wait=60 bash -c" in (tmp_path / "standin.log").read_text()
    assert "main node node-a:29500" in result.stdout


def test_near_the_time_limit_the_job_requeues_itself(tmp_path, stand_ins):
    script = _script(tmp_path)
    env = _slurm_env(tmp_path, ALIGNKIT=str(stand_ins / "fake-alignkit"), FAKE_SLEEP="60")
    log = tmp_path / "standin.log"
    with (tmp_path / "job.out").open("w") as out:
        process = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True, stdout=out)
    try:
        _wait_for(lambda: (tmp_path / "started").exists())
        process.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends to the batch shell
        _wait_for(lambda: log.exists() and "requeue 4242" in log.read_text().splitlines())
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the stand-in's training would otherwise sleep on
        process.wait()
    assert "alignkit: requeueing job 4242" in (tmp_path / "job.out").read_text()


def _wait_for(condition, seconds: float = 60) -> None:
    """Poll until `condition()` holds; a guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_cli_writes_and_submits(tmp_path, stand_ins, cli):
    out = tmp_path / "jobs" / "tiny.sbatch"
    result = cli(
        "slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2", "--output", out, "--submit"
    )
    assert result.exit_code == 0, result.output
    training = resolve_recipe("sft", "tiny-demo").recipe.training
    batch = training.per_device_train_batch_size * training.gradient_accumulation_steps * 2
    assert f"wrote {out}: 1 node(s) x 2 GPU(s), profile ddp, effective batch {batch}" in result.stdout
    assert "submitted job 12345" in result.stdout
    assert f"sbatch {out}" in (tmp_path / "standin.log").read_text()
    assert os.access(out, os.X_OK)


def test_cli_reports_sbatch_rejecting_the_script(tmp_path, stand_ins, cli, monkeypatch):
    monkeypatch.setenv("SBATCH_REJECT", "1")
    out = tmp_path / "tiny.sbatch"
    result = cli(
        "slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2", "--output", out, "--submit"
    )
    assert result.exit_code == 1
    assert f"error: sbatch rejected {out}: sbatch: error: invalid partition specified: nope" in result.stderr


def test_submit_without_sbatch_is_a_user_error(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH, sbatch included
    out = tmp_path / "tiny.sbatch"
    result = cli(
        "slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2", "--output", out, "--submit"
    )
    assert result.exit_code == 2
    assert "error: --submit: sbatch is not on PATH" in result.stderr
    assert out.is_file()  # the script is still there to submit later


def test_a_bad_recipe_never_produces_a_script(tmp_path, cli):
    out = tmp_path / "bad.sbatch"
    args = ("slurm", "sft", "--recipe", "tiny-demo", "--nodes", "2", "--gpus-per-node", "8", "--output", out)
    result = cli(*args, "--set", "training.learning_rate=-1")
    assert result.exit_code == 2
    assert "training.learning_rate" in result.stderr
    assert not out.exists()
    result = cli(*args, "--launch", "fsdp-qlora")
    assert result.exit_code == 2
    assert "fsdp-qlora shards a 4-bit base model" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--time", "3days", "--time: '3days' is not a Slurm time limit"),
        ("--nodes", "0", "--nodes: must be at least 1 (given: 0)"),
        ("--partition", "gpu;rm -rf /", "--partition: 'gpu;rm -rf /' is not a partition name"),
    ],
)
def test_bad_slurm_flags_are_user_errors(tmp_path, cli, flag, value, message):
    base = {"--nodes": "1", "--gpus-per-node": "2", "--output": str(tmp_path / "x.sbatch")}
    base[flag] = value
    args = [a for pair in base.items() for a in pair]
    result = cli("slurm", "sft", "--recipe", "tiny-demo", *args)
    assert result.exit_code == 2
    assert f"error: {message}" in result.stderr
    assert not (tmp_path / "x.sbatch").exists()


def test_secrets_are_never_written(tmp_path, cli, monkeypatch):
    token = "hf_" + "a1B2" * 9
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    out = tmp_path / "job.sbatch"
    result = cli("slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2", "--output", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert token not in text
    assert "f" * 40 not in text
    assert "HF_TOKEN and WANDB_API_KEY are taken from the environment you submit from" in text
    refused = cli(
        "slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2",
        "--output", tmp_path / "leak.sbatch", "--set", f"hub.hub_model_id={token}",
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "hub.hub_model_id: looks like a Hugging Face token" in refused.stderr
    assert not (tmp_path / "leak.sbatch").exists()
    # A commit hash pinning a revision is 40 hex digits too, and is no secret.
    sha = "0123456789abcdef0123456789abcdef01234567"
    pinned = cli(
        "slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2",
        "--output", tmp_path / "pinned.sbatch", "--set", f"model.revision={sha}",
    )  # fmt: skip
    assert pinned.exit_code == 0, pinned.output
    assert sha in (tmp_path / "pinned.sbatch").read_text()
    wandb_like = cli(
        "slurm", "sft", "--recipe", "tiny-demo", "--nodes", "1", "--gpus-per-node", "2",
        "--output", tmp_path / "key.sbatch", "--set", f"hub.hub_model_id={sha}",
    )  # fmt: skip
    assert wandb_like.exit_code == 2


# --- sample: one `alignkit sample` process on one node ----------------------------------------------------

SAMPLE_RECIPE = """\
model: {name_or_path: some/model}
data: {datasets: [{path: prompts.jsonl}]}
sample:
  num_samples: 4
  tensor_parallel_size: 2
  scorers: [{exact_match: {column: answer}}]
"""


def _sample_job(cli, tmp_path, write_recipe, monkeypatch, *flags):
    """Write the sbatch script of a sample recipe (tensor_parallel_size 2) from tmp_path; returns it and the result."""
    recipe = write_recipe(SAMPLE_RECIPE, "mine.yaml")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sample.sbatch"
    result = cli("slurm", "sample", "--recipe", "mine.yaml", "--output", out, *flags)
    return recipe, out, result


def test_sample_job_runs_one_alignkit_sample_with_the_requested_gpus(tmp_path, cli, write_recipe, monkeypatch):
    recipe, out, result = _sample_job(
        cli, tmp_path, write_recipe, monkeypatch, "--nodes", "1", "--gpus-per-node", "2", "--partition", "gpu",
        "--time", "04:00:00",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote {out}: 1 node x 2 GPU(s), one alignkit sample process",
        f"submit it with: sbatch {out}",
    ]
    assert result.stderr == ""  # the job asks for exactly the GPUs the process uses
    text = out.read_text()
    assert [line for line in text.splitlines() if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=alignkit-mine-sample",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --exclusive",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --output=%x-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=04:00:00",
    ]
    assert text.splitlines()[1] == "# alignkit sample on 1 node x 2 GPU(s): one process, no launch profile."
    output_dir = tmp_path / "outputs" / "mine-sample"
    assert f"ALIGNKIT_ARGS=(\n  sample\n  --recipe {recipe.resolve()}\n  --output-dir {output_dir}\n)\n" in text
    assert '\nsrun --ntasks=1 $ALIGNKIT "${ALIGNKIT_ARGS[@]}" &\n' in text
    assert "# Either way the requeued job resumes where the unfinished run in its output folder stopped." in text
    for launcher in ("--launch", "--num-processes", "--machine-rank", "accelerate", "torchrun", "MAIN_NODE"):
        assert launcher not in text
    assert subprocess.run(["bash", "-n", str(out)], check=False).returncode == 0


def test_sample_job_starts_exactly_the_sample_command_and_requeues(tmp_path, stand_ins, cli, write_recipe, monkeypatch):
    recipe, out, result = _sample_job(
        cli, tmp_path, write_recipe, monkeypatch, "--nodes", "1", "--gpus-per-node", "2", "--set",
        "sample.num_samples=8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    env = _slurm_env(tmp_path, ALIGNKIT=str(stand_ins / "fake-alignkit"))
    ran = subprocess.run(["bash", str(out)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "alignkit_args").read_text().splitlines() == [
        "sample",
        "--recipe",
        str(recipe.resolve()),
        "--set",
        "sample.num_samples=8",
        "--output-dir",
        str(tmp_path / "outputs" / "mine-sample"),
    ]
    assert (tmp_path / "standin.log").read_text().splitlines() == [
        f"srun --ntasks=1 {stand_ins / 'fake-alignkit'} sample --recipe {recipe.resolve()} --set"
        f" sample.num_samples=8 --output-dir {tmp_path / 'outputs' / 'mine-sample'}"
    ]
    # Near the time limit it requeues itself, as a training job does; the rerun resumes the unfinished shards.
    log = tmp_path / "standin.log"
    with (tmp_path / "job.out").open("w") as job_out:
        process = subprocess.Popen(
            ["bash", str(out)], env={**env, "FAKE_SLEEP": "60"}, start_new_session=True, stdout=job_out
        )
    try:
        _wait_for(lambda: (tmp_path / "started").exists())
        process.send_signal(signal.SIGUSR1)
        _wait_for(lambda: "requeue 4242" in log.read_text().splitlines())
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert "alignkit: requeueing job 4242" in (tmp_path / "job.out").read_text()


def test_sample_job_notes_gpus_its_one_process_leaves_idle(tmp_path, cli, write_recipe, monkeypatch):
    _, out, result = _sample_job(cli, tmp_path, write_recipe, monkeypatch, "--nodes", "1", "--gpus-per-node", "8")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        "note: the job asks for 8 GPU(s); alignkit sample runs one process on 2 of them"
        " (sample.tensor_parallel_size is 2; raise it to use more)\n"
    )
    assert "#SBATCH --gpus-per-node=8" in out.read_text().splitlines()


def test_sample_job_refuses_what_one_process_cannot_use(tmp_path, cli, write_recipe, monkeypatch):
    _, out, result = _sample_job(
        cli, tmp_path, write_recipe, monkeypatch, "--nodes", "2", "--gpus-per-node", "2", "--launch", "ddp", "--qlora"
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --nodes: alignkit sample runs as one process on one node (given: 2); give --nodes 1, and more GPUs"
        " with --gpus-per-node if the model needs them",
        "error: --launch: alignkit sample has no launch profile: it runs as one process, not through accelerate;"
        " remove it",
        "error: --qlora: applies to the training methods; alignkit sample loads the model as its recipe says;"
        " remove it",
    ]
    assert not out.exists()
    result = cli("slurm", "sample", "--recipe", "mine.yaml", "--nodes", "1", "--gpus-per-node", "1", "--output", out)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --gpus-per-node: gives 1 GPU(s), but sample.tensor_parallel_size is 2 (the GPUs one alignkit sample"
        " process spreads the model over); ask for at least 2, or --set sample.tensor_parallel_size=1\n"
    )
    assert not out.exists()
    fixed = cli(
        "slurm", "sample", "--recipe", "mine.yaml", "--nodes", "1", "--gpus-per-node", "1", "--output", out,
        "--set", "sample.tensor_parallel_size=1",
    )  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    result = cli("slurm", "ppo", "--recipe", "mine.yaml", "--nodes", "1", "--gpus-per-node", "1")
    assert result.exit_code == 2
    assert (
        "error: --method: unknown method 'ppo'; one of cpt, sft, dpo, orpo, simpo, kto, rm, grpo, rloo, sample, eval"
        in result.stderr
    )


def test_sample_job_file_is_replaced_only_with_overwrite_and_submits(
    tmp_path, stand_ins, cli, write_recipe, monkeypatch
):
    _, out, _ = _sample_job(cli, tmp_path, write_recipe, monkeypatch, "--nodes", "1", "--gpus-per-node", "2")
    out.write_text("# edited by hand\n")
    args = ("slurm", "sample", "--recipe", "mine.yaml", "--nodes", "1", "--gpus-per-node", "2", "--output", out)
    refused = cli(*args, "--submit")
    assert refused.exit_code == 2
    assert f"error: {out}: already exists; not overwriting it (pass --overwrite" in refused.stderr
    assert out.read_text() == "# edited by hand\n"
    assert not (tmp_path / "standin.log").exists()
    replaced = cli(*args, "--overwrite", "--submit")
    assert replaced.exit_code == 0, replaced.output
    assert "submitted job 12345" in replaced.stdout
    assert (tmp_path / "standin.log").read_text().splitlines() == [f"sbatch {out}"]
    assert "  sample\n" in out.read_text()


# --- grpo with `vllm: server`: the job starts trl vllm-serve beside the trainers ------------------------------

GRPO_SERVER_RECIPE = """\
model: {name_or_path: some/model}
data: {datasets: [{path: prompts.jsonl}]}
grpo:
  vllm: server
  num_generations: 4
  rewards: [{exact_match: answer}]
training: {per_device_train_batch_size: 4}
"""

# Stands in for trl vllm-serve: records its arguments and GPUs, says it is up, then serves until killed.
FAKE_SERVER = """#!/bin/bash
printf '%s\\n' "$@" > "$STANDIN_DIR/server_args"
echo "${CUDA_VISIBLE_DEVICES:-unset}" > "$STANDIN_DIR/server_gpus"
echo $$ > "$STANDIN_DIR/server_pid"
if [ -n "$FAKE_SERVER_FAILS" ]; then exit 3; fi
touch "$STANDIN_DIR/server_up"
exec sleep 600
"""
# Stands in for curl: the server answers once it said it is up.
FAKE_CURL = """#!/bin/bash
echo "curl $*" >> "$STANDIN_LOG"
[ -e "$STANDIN_DIR/server_up" ]
"""
FAKE_TRAINER = """#!/bin/bash
printf '%s\\n' "$@" > "$STANDIN_DIR/alignkit_args"
echo "${CUDA_VISIBLE_DEVICES:-unset}" > "$STANDIN_DIR/alignkit_gpus"
"""


def _server_job(cli, tmp_path, write_recipe, monkeypatch, *flags):
    write_recipe(GRPO_SERVER_RECIPE, "rl.yaml")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rl.sbatch"
    return out, cli("slurm", "grpo", "--recipe", "rl.yaml", "--output", out, *flags)


def _server_stand_ins(stand_ins: Path) -> dict[str, str]:
    for name, text in {"fake-server": FAKE_SERVER, "curl": FAKE_CURL, "fake-trainer": FAKE_TRAINER}.items():
        (stand_ins / name).write_text(text, encoding="utf-8")
        (stand_ins / name).chmod(0o755)
    return {"VLLM_SERVE": str(stand_ins / "fake-server"), "ALIGNKIT": str(stand_ins / "fake-trainer")}


def test_a_vllm_server_takes_the_first_gpus_and_the_trainers_the_rest(
    tmp_path, stand_ins, cli, write_recipe, monkeypatch
):
    out, result = _server_job(cli, tmp_path, write_recipe, monkeypatch, "--nodes", "1", "--gpus-per-node", "4")
    assert result.exit_code == 0, result.output
    assert (
        "note: vLLM server (trl vllm-serve, port 8000) on 1 GPU(s) of the node; training on 1 node(s) x 3 GPU(s)"
        in (result.stderr)
    )
    # Slurm lists the allocation's GPUs in CUDA_VISIBLE_DEVICES; the server gets the first, the trainers the rest.
    env = _slurm_env(tmp_path, **_server_stand_ins(stand_ins), CUDA_VISIBLE_DEVICES="4,5,6,7")
    run = subprocess.run(["bash", str(out)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "server_args").read_text().split() == [
        "--model", "some/model", "--revision", "main", "--tensor_parallel_size", "1", "--data_parallel_size", "1",
        "--port", "8000", "--gpu_memory_utilization", "0.9",
    ]  # fmt: skip
    assert (tmp_path / "server_gpus").read_text().strip() == "4"
    assert (tmp_path / "alignkit_gpus").read_text().strip() == "5,6,7"
    args = " ".join((tmp_path / "alignkit_args").read_text().splitlines())
    assert "--num-machines 1 --num-processes 3" in args
    assert "--set grpo.vllm_server=http://localhost:8000" in args
    assert "curl -sfL http://localhost:8000/health/" in (tmp_path / "standin.log").read_text()
    # The server is stopped when the job ends.
    pid = int((tmp_path / "server_pid").read_text())
    for _ in range(50):
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False).returncode:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the vLLM server outlived the job")


def test_a_server_that_dies_ends_the_job_before_training(tmp_path, stand_ins, cli, write_recipe, monkeypatch):
    out, result = _server_job(cli, tmp_path, write_recipe, monkeypatch, "--nodes", "1", "--gpus-per-node", "2")
    assert result.exit_code == 0, result.output
    env = _slurm_env(tmp_path, **_server_stand_ins(stand_ins), FAKE_SERVER_FAILS="1")
    run = subprocess.run(["bash", str(out)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert "alignkit: the vLLM server exited before answering" in run.stdout
    assert not (tmp_path / "alignkit_args").exists()


def test_on_several_nodes_the_last_one_serves(tmp_path, cli, write_recipe, monkeypatch):
    out, result = _server_job(
        cli, tmp_path, write_recipe, monkeypatch, "--nodes", "3", "--gpus-per-node", "8",
        "--set", "grpo.vllm_tensor_parallel_size=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert 'SERVER_NODE="${NODES[-1]}"' in text
    assert (
        'srun --nodes=1 --ntasks=1 --nodelist="$SERVER_NODE" $VLLM_SERVE --model some/model --revision main'
        " --tensor_parallel_size 2 --data_parallel_size 4 --port 8000 --gpu_memory_utilization 0.9 &"
    ) in text
    assert "  --num-machines 2\n  --num-processes 8\n" in text
    assert '  --set "grpo.vllm_server=http://$SERVER_NODE:8000"\n' in text
    assert '--exclude="$SERVER_NODE"' in text and '--machine-rank "$SLURM_PROCID"' in text
    assert subprocess.run(["bash", "-n", str(out)], check=False).returncode == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--nodes", "1", "--gpus-per-node", "1"),
            "--gpus-per-node: gives 1 GPU(s); the vLLM server takes 1 (grpo.vllm_tensor_parallel_size) and training"
            " needs at least one more: give at least 2, add a node (--nodes 2: the last node serves), or set"
            " grpo.vllm: colocate",
        ),
        (
            ("--nodes", "2", "--gpus-per-node", "3", "--set", "grpo.vllm_tensor_parallel_size=2"),
            "--gpus-per-node: gives 3 GPU(s) per node; the server's node runs copies of the model on 2 GPU(s) each"
            " (grpo.vllm_tensor_parallel_size), so give a multiple of 2",
        ),
    ],
)
def test_a_job_without_gpus_for_both_is_refused(tmp_path, cli, write_recipe, monkeypatch, flags, message):
    out, result = _server_job(cli, tmp_path, write_recipe, monkeypatch, *flags)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_a_server_the_recipe_addresses_is_not_started(tmp_path, cli, write_recipe, monkeypatch):
    flags = ("--nodes", "1", "--gpus-per-node", "2", "--set", "grpo.vllm_server=http://rl-server:8000")
    out, result = _server_job(cli, tmp_path, write_recipe, monkeypatch, *flags)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "VLLM_SERVE" not in text and "--num-processes 2" in text
