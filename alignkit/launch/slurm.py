"""`alignkit slurm`: a readable sbatch script that runs one validated recipe on N nodes.

The script asks Slurm for one task per node, derives the main node from the allocation (`scontrol show
hostnames`), and starts alignkit once per node through `srun`, passing the node's rank and the counts; alignkit
then starts that node's workers itself. A stage that runs as one process (`sample`) is one task on one node,
started directly. A run that generates on a separate vLLM server (grpo's `vllm: server`) starts it first, on
the last node or on the node's first GPUs, and waits until it answers. The job requeues itself when
preempted or near its time limit, and a requeued job resumes where it stopped (a training run from its last
checkpoint, sample at its first unfinished shard), because alignkit resumes an unfinished run of the same
recipe. Secrets are never written: sbatch passes the
submitting shell's environment (HF_TOKEN, WANDB_API_KEY) to the job.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import Problem, RunError, UserError
from alignkit.launch.inference_server import SERVE_MODULE, address_argument, quoted, wait_lines
from alignkit.launch.job import Job, refuse_overwrite

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
REQUEUE_SIGNAL_SECONDS = 300
"""Slurm signals the job this long before its time limit, leaving time to requeue it cleanly."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time: str | None = None
    main_process_port: int = 29500


def check_options(options: SlurmOptions) -> None:
    if options.time is not None and not _TIME.match(options.time):
        raise UserError(
            Problem(
                source="--time",
                message=f"{options.time!r} is not a Slurm time limit; use minutes, HH:MM:SS or D-HH:MM:SS"
                " (e.g. 2-00:00:00)",
            )
        )
    if options.partition is not None and not re.fullmatch(r"[\w.,-]+", options.partition):
        raise UserError(Problem(source="--partition", message=f"{options.partition!r} is not a partition name"))


def _directives(job: Job, options: SlurmOptions) -> list[str]:
    spec = job.spec
    directives = [
        f"--job-name={job.name}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",  # one alignkit per node; it starts the node's workers itself
        f"--gpus-per-node={spec.gpus_per_node}",
        "--exclusive",
        "--requeue",
        f"--signal=B:USR1@{REQUEUE_SIGNAL_SECONDS}",
        "--output=%x-%j.out",
    ]
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.time:
        directives.append(f"--time={options.time}")
    return directives


def sbatch_script(job: Job, options: SlurmOptions) -> str:
    """The sbatch script for `job`."""
    check_options(options)
    python = shlex.quote(sys.executable)
    resumes = "from the run's last checkpoint" if job.plan else "where the unfinished run in its output folder stopped"
    lines = [
        "#!/bin/bash",
        *_summary(job),
        "# HF_TOKEN and WANDB_API_KEY are taken from the environment you submit from; none is written here.",
        *(f"#SBATCH {d}" for d in _directives(job, options)),
        "",
        "set -euo pipefail",
        "",
        "# The Python environment alignkit was installed in when this script was written (override: ALIGNKIT).",
        f'ALIGNKIT="${{ALIGNKIT:-{python} -m alignkit}}"',
        *([f'VLLM_SERVE="${{VLLM_SERVE:-{python} -m {SERVE_MODULE}}}"'] if job.server else []),
        "",
        *(_main_node(options, job) if job.plan else []),
        "# Near the time limit (Slurm sends USR1, see --signal): requeue. Preemption requeues through --requeue.",
        f"# Either way the requeued job resumes {resumes}.",
        "requeue() {",
        '  echo "alignkit: requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "}",
        "trap requeue USR1",
        "",
        *(_start_server(job) if job.server else []),
        *(_srun_per_node(job) if job.plan else _srun_once(job)),
        "# Wait in the background so the requeue trap can run while alignkit works.",
        "wait $!",
        "",
    ]
    return "\n".join(lines)


def _summary(job: Job) -> list[str]:
    spec, plan = job.spec, job.plan
    if plan is None:
        what = f"# alignkit {spec.method} on 1 node x {spec.gpus_per_node} GPU(s): one process, no launch profile."
    else:
        what = (
            f"# alignkit {spec.method} on {spec.nodes} node(s) x {spec.gpus_per_node} GPU(s), launch profile"
            f" {plan.profile}: {plan.world_size} processes, effective batch {plan.effective_batch_size}."
        )
    return [
        what,
        f"# Recipe: {job.resolved.name} ({job.resolved.source}). Submit with: sbatch <this file>",
        *_batch_note(job),
    ]


def _main_node(options: SlurmOptions, job: Job) -> list[str]:
    server = job.server
    lines = [
        "# The first node of the allocation hosts rank 0; every node is told its address.",
        "# (Read whole: `| head -n 1` would end scontrol with SIGPIPE, which pipefail turns into a failure.)",
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'MAIN_NODE="${NODES[0]}"',
        f'MAIN_PORT="${{MAIN_PORT:-{options.main_process_port}}}"',
    ]
    if server is not None and server.own_node:
        lines.append('SERVER_NODE="${NODES[-1]}"  # the last node serves generation; the others train')
    elif server is not None:
        lines += [
            f"# The node's first {server.server_gpus} GPU(s) serve generation; the other"
            f" {server.training_gpus_per_node} train.",
            f'IFS=, read -ra GPUS <<< "${{CUDA_VISIBLE_DEVICES:-$(seq -s, 0 {job.spec.gpus_per_node - 1})}}"',
            f'SERVE_GPUS=$(IFS=,; echo "${{GPUS[*]:0:{server.server_gpus}}}")',
            f'export TRAIN_GPUS=$(IFS=,; echo "${{GPUS[*]:{server.server_gpus}}}")',
        ]
    lines += ["export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a failed rank ends the job instead of hanging it", ""]
    return lines


def _start_server(job: Job) -> list[str]:
    """Start the generation server (on the last node, or on the node's first GPUs) and wait until it answers."""
    server = job.server
    host = "$SERVER_NODE" if server.own_node else "localhost"
    serve = quoted(server.serve_argv())
    if server.own_node:
        start = f'srun --nodes=1 --ntasks=1 --nodelist="$SERVER_NODE" $VLLM_SERVE {serve} &'
    else:
        start = f'CUDA_VISIBLE_DEVICES="$SERVE_GPUS" $VLLM_SERVE {serve} &'
    return [
        f"# {server.describe()}.",
        "# shellcheck disable=SC2086",
        start,
        "VLLM_PID=$!",
        "trap 'kill \"$VLLM_PID\" 2>/dev/null || true' EXIT",
        *wait_lines(f"http://{host}:{server.server.port}", "$VLLM_PID"),
        "",
    ]


def _srun_per_node(job: Job) -> list[str]:
    """A training method: alignkit once per node, told the counts, the main node and (by srun) its rank."""
    plan, server = job.plan, job.server
    args = "\n  ".join(_argument_lines(job.argv))
    extra = []
    if server is not None:
        extra.append("  " + address_argument(server, "$SERVER_NODE" if server.own_node else "localhost"))
    lines = [
        f"ALIGNKIT_ARGS=(\n  {args}\n  --num-machines {plan.num_machines}\n"
        f"  --num-processes {plan.processes_per_machine}",
        '  --main-process-ip "$MAIN_NODE"\n  --main-process-port "$MAIN_PORT"',
        *extra,
        ")",
        "",
        f'echo "alignkit: {plan.num_machines} training node(s), main node $MAIN_NODE:$MAIN_PORT"',
    ]
    return [*lines, *_training_srun(plan, server)]


def _training_srun(plan, server) -> list[str]:
    if server is not None and server.own_node:
        # The step excludes the server's node; one task per node, so a task's rank in the step is its node's.
        return [
            "# One task per training node; SLURM_PROCID (0..nodes-1) is expanded by each node's own shell.",
            "# shellcheck disable=SC2016,SC2086",
            f'srun --nodes={plan.num_machines} --ntasks-per-node=1 --exclude="$SERVER_NODE" --kill-on-bad-exit=1'
            " --wait=60 \\",
            '  bash -c \'exec "$@" --machine-rank "$SLURM_PROCID"\' \\',
            '  alignkit $ALIGNKIT "${ALIGNKIT_ARGS[@]}" &',
        ]
    # srun hands a step all of the node's GPUs; the trainers keep off the server's.
    visible = 'export CUDA_VISIBLE_DEVICES="$TRAIN_GPUS"; ' if server is not None else ""
    return [
        "# One task per node; SLURM_NODEID (0..nodes-1) is expanded by each node's own shell.",
        "# shellcheck disable=SC2016,SC2086",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --wait=60 \\",
        f'  bash -c \'{visible}exec "$@" --machine-rank "$SLURM_NODEID"\' \\',
        '  alignkit $ALIGNKIT "${ALIGNKIT_ARGS[@]}" &',
    ]


def _srun_once(job: Job) -> list[str]:
    """A stage that runs as one process (sample): one task with all the job's GPUs, no launcher."""
    args = "\n  ".join(_argument_lines(job.argv))
    return [
        f"ALIGNKIT_ARGS=(\n  {args}\n)",
        "",
        f'echo "alignkit: {job.spec.method} on $(hostname), GPUs ${{CUDA_VISIBLE_DEVICES:-none visible}}"',
        "# shellcheck disable=SC2086",
        'srun --ntasks=1 $ALIGNKIT "${ALIGNKIT_ARGS[@]}" &',
    ]


def _argument_lines(argv: tuple[str, ...]) -> list[str]:
    """One line per flag and its value, shell-quoted."""
    lines: list[str] = []
    for arg in argv:
        if lines and not arg.startswith("--") and lines[-1].startswith("--") and " " not in lines[-1]:
            lines[-1] += " " + shlex.quote(arg)
        else:
            lines.append(shlex.quote(arg))
    return lines


def _batch_note(job: Job) -> list[str]:
    plan = job.plan
    if plan is None or plan.effective_batch_size == plan.recipe_effective_batch_size:
        return []
    return [
        f"# Note: the recipe was tuned for {plan.recipe_gpus} GPU(s), effective batch"
        f" {plan.recipe_effective_batch_size}; adjust training.gradient_accumulation_steps (--set) to match."
    ]


def write_script(job: Job, options: SlurmOptions, path: Path, *, overwrite: bool = False) -> Path:
    """Write the sbatch script; an existing file is replaced only with `overwrite`."""
    path = Path(path)
    refuse_overwrite([path], overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sbatch_script(job, options), encoding="utf-8")
    path.chmod(0o755)
    return path


def submit_script(path: Path) -> str:
    """Submit the script with `sbatch`; returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            Problem(
                source="--submit",
                message="sbatch is not on PATH; run this on a Slurm login node, or submit the script later"
                f" with `sbatch {path}`",
            )
        )
    result = subprocess.run([sbatch, str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise RunError(f"sbatch rejected {path}: {detail[-1] if detail else f'exit code {result.returncode}'}")
    match = re.search(r"(\d+)", result.stdout)
    return match.group(1) if match else result.stdout.strip()
