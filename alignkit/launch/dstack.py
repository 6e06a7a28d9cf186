"""`alignkit dstack`: a dstack task (and, for several nodes, a fleet) that runs one validated recipe.

The task installs alignkit on the cloud machine and runs `alignkit METHOD` once per node with dstack's own
node variables (`DSTACK_NODE_RANK`, `DSTACK_MASTER_NODE_IP`, `DSTACK_NODES_NUM`, `DSTACK_GPUS_PER_NODE`); a
stage that runs as one process (`sample`) is one plain command on one node, with the packages its recipe
needs beside alignkit (vLLM for `sample.backend: vllm`). A run that generates on its own vLLM server (grpo's
`vllm: server`) starts it first: on the node's first GPUs, or alone on the last node.
A recipe given as a local file or recipe folder is uploaded beside the task through dstack's `files`.
Secrets travel by name only (`env: [HF_TOKEN, WANDB_API_KEY]`): dstack reads their values from your
environment when you apply.
Writing the files needs no dstack; `--apply` calls the `dstack` command line when it is installed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignkit import __version__
from alignkit.errors import Problem, RunError, UserError
from alignkit.launch.inference_server import SERVE_MODULE, address_argument, quoted, wait_lines
from alignkit.launch.job import Job, JobSpec, plan_job, refuse_overwrite
from alignkit.library.lookup import recipe_folder
from alignkit.stages import run_extras

SECRETS = ("HF_TOKEN", "WANDB_API_KEY")
MAIN_PORT = 29500
REMOTE_RECIPE_DIR = "alignkit-recipes"
_GPU_COUNT = re.compile(r"^(\d+)(\.\.(\d*))?$")
_GPU_TOKEN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


@dataclass(frozen=True)
class DstackFiles:
    """What `alignkit dstack` writes: the task and, for several nodes, the fleet it runs on."""

    task: Path
    fleet: Path | None


def gpus_per_node(spec: str) -> int:
    """The fewest GPUs per node a dstack GPU spec asks for (`H100:8` -> 8, `24GB..` -> 1, `A100:2..8` -> 2)."""
    tokens = [t.strip() for t in spec.split(":") if t.strip()]
    if not tokens or not all(_GPU_TOKEN.match(t) for t in tokens):
        raise UserError(
            Problem(
                source="--gpu",
                message=f"{spec!r} is not a dstack GPU spec; use NAME:COUNT or MEMORY:COUNT (e.g. H100:8, A100:80GB:2,"
                " 24GB..:1)",
            )
        )
    counts = [m for t in tokens if (m := _GPU_COUNT.match(t))]
    if len(counts) > 1:
        raise UserError(Problem(source="--gpu", message=f"{spec!r} gives the GPU count twice"))
    if not counts:
        return 1
    low = int(counts[0].group(1))
    if low < 1:
        raise UserError(Problem(source="--gpu", message=f"{spec!r} asks for no GPUs; alignkit trains on GPUs here"))
    return low


def plan_dstack(method: str, recipe: str, *, gpu: str, nodes: int = 1, **spec_options) -> Job:
    """Validate the recipe for `nodes` nodes of `gpu`; returns the job."""
    spec = JobSpec(method=method, recipe=recipe, nodes=nodes, gpus_per_node=gpus_per_node(gpu), **spec_options)
    local = _uploaded(recipe)
    remote = f"{REMOTE_RECIPE_DIR}/{local.resolve().name}" if local else None
    return plan_job(spec, recipe_ref=remote, shared_disk=False, gpu_flag="--gpu")


def _uploaded(recipe: str) -> Path | None:
    """The local recipe file or recipe folder the task takes along; None for a library recipe."""
    local = Path(recipe).expanduser()
    return local if local.is_file() or recipe_folder(recipe) is not None else None


def task_config(job: Job, gpu: str) -> dict:
    """The dstack task configuration (a mapping that dumps to the task's YAML)."""
    spec = job.spec
    command = shlex.join(["alignkit", *job.argv])
    if job.server is not None:
        commands = _with_server(job, command)
    else:
        if job.plan is not None:  # a training method starts a process per GPU; a stage like sample runs as one
            command += ' --num-machines "$DSTACK_NODES_NUM" --num-processes "$DSTACK_GPUS_PER_NODE"'
        if spec.nodes > 1:
            command += (
                ' --machine-rank "$DSTACK_NODE_RANK" --main-process-ip "$DSTACK_MASTER_NODE_IP"'
                f" --main-process-port {MAIN_PORT}"
            )
        commands = [command]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    config: dict = {"type": "task", "name": job.name}
    if spec.nodes > 1:
        config["nodes"] = spec.nodes
    config["python"] = python if python in _PYTHONS else "3.11"
    config["env"] = list(SECRETS)
    local = _uploaded(spec.recipe)
    if local is not None:
        config["files"] = [f"{local.resolve()}:{REMOTE_RECIPE_DIR}/{local.resolve().name}"]
    extras = run_extras(spec.method, job.resolved.recipe)
    packages = [f"alignkit[{','.join(extras)}]=={__version__}" if extras else f"alignkit=={__version__}"]
    config["commands"] = [shlex.join(["pip", "install", *packages]), *commands]
    # NCCL between the GPUs of a node needs more shared memory than containers get by default.
    config["resources"] = {"gpu": gpu, "shm_size": "24GB"}
    return config


def _with_server(job: Job, command: str) -> list[str]:
    """The commands of a run that generates on its own vLLM server: on one node the server takes the first GPUs;
    on several the last node serves and the others train. One multi-line command: dstack joins the list with
    `&&`, so its first line is an assignment (a first line ending in `&` would background the install too)."""
    layout, plan = job.server, job.plan
    serve = f"python -m {SERVE_MODULE} {quoted(layout.serve_argv())}"
    command += f" --num-machines {plan.num_machines} --num-processes {plan.processes_per_machine}"
    port = layout.server.port
    if not layout.own_node:
        split = layout.server_gpus
        lines = [
            f"SERVE_GPUS=$(seq -s, 0 {split - 1})  # {layout.describe()}",
            f'CUDA_VISIBLE_DEVICES="$SERVE_GPUS" {serve} &',
            "VLLM_PID=$!",
            "trap 'kill \"$VLLM_PID\" 2>/dev/null || true' EXIT",
            *wait_lines(f"http://localhost:{port}", "$VLLM_PID"),
            f"CUDA_VISIBLE_DEVICES=$(seq -s, {split} $((DSTACK_GPUS_PER_NODE - 1))) {command}"
            f" {address_argument(layout, 'localhost')}",
        ]
    else:
        command += (
            ' --machine-rank "$DSTACK_NODE_RANK" --main-process-ip "$DSTACK_MASTER_NODE_IP"'
            f" --main-process-port {MAIN_PORT} {address_argument(layout, '$SERVER_IP')}"
        )
        lines = [
            f'SERVER_IP=$(echo "$DSTACK_NODES_IPS" | tail -n 1)  # {layout.describe()}',
            f'if [ "$DSTACK_NODE_RANK" -eq $((DSTACK_NODES_NUM - 1)) ]; then exec {serve}; fi',
            *wait_lines(f"http://$SERVER_IP:{port}", None),
            command,
        ]
    return ["\n".join(lines)]


def fleet_config(job: Job, gpu: str) -> dict:
    """The cluster fleet a multi-node task needs: its nodes placed together for fast interconnect."""
    return {
        "type": "fleet",
        "name": f"{job.name}-fleet"[:60],
        "nodes": job.spec.nodes,
        "placement": "cluster",
        "resources": {"gpu": gpu},
        "idle_duration": "1h",
    }


class _Dumper(yaml.SafeDumper):
    """Writes a multi-line string as a literal block, as a person would."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def render(config: dict, header: str) -> str:
    return header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def write_files(job: Job, gpu: str, output: Path | None = None, *, overwrite: bool = False) -> DstackFiles:
    """Write the task (and the fleet for several nodes); returns their paths. Existing files are replaced
    only with `overwrite`, and then both are checked before either is written."""
    task_path = Path(output) if output else Path(f"{job.name}.dstack.yml")
    fleet_path = None
    if job.spec.nodes > 1:
        fleet_path = task_path.with_name(task_path.name.replace(".dstack.yml", "") + "-fleet.dstack.yml")
    refuse_overwrite([p for p in (fleet_path, task_path) if p is not None], overwrite=overwrite)
    how = f"launch profile {job.plan.profile}" if job.plan else "one process, no launch profile"
    header = (
        f"# alignkit {job.spec.method} on dstack: {job.spec.nodes} node(s) with GPU {gpu}, {how}.\n"
        f"# Recipe: {job.resolved.name}. Secrets are passed by name: export {' and '.join(SECRETS)} before"
        " `dstack apply`.\n"
    )
    if fleet_path is not None:
        fleet_header = (
            f"# The cluster fleet for {task_path.name}: apply it first (`dstack apply -f {fleet_path.name}`).\n"
        )
        fleet_path.parent.mkdir(parents=True, exist_ok=True)
        fleet_path.write_text(render(fleet_config(job, gpu), fleet_header), encoding="utf-8")
        header += f"# Runs on the fleet in {fleet_path.name}.\n"
    task_path.parent.mkdir(parents=True, exist_ok=True)
    task_path.write_text(render(task_config(job, gpu), header), encoding="utf-8")
    return DstackFiles(task=task_path, fleet=fleet_path)


def apply(files: DstackFiles) -> None:
    """Run `dstack apply` on the fleet (if any), then the task; dstack asks for confirmation itself."""
    dstack = shutil.which("dstack")
    if dstack is None:
        raise UserError(
            Problem(
                source="--apply",
                message="the dstack command line is not installed here (`pip install dstack`), or apply the files"
                f" later with `dstack apply -f {files.task}`",
            )
        )
    for path in (files.fleet, files.task):
        if path is None:
            continue
        result = subprocess.run([dstack, "apply", "-f", str(path)], check=False)
        if result.returncode != 0:
            raise RunError(f"`dstack apply -f {path}` failed (exit code {result.returncode})")
