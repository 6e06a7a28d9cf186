"""The generation server a training job starts beside its trainers (grpo's `vllm: server`: `trl vllm-serve`).

A method whose recipe asks for generation on a separate server says so (`Method.inference_server`); Slurm and
dstack jobs then give the server GPUs of its own, start it before the trainers, wait until it answers, and
tell the run its address through the recipe field the method names. On one node the server takes the node's
first `tensor_parallel_size` GPUs and the trainers the rest; on several nodes the last node serves (one copy
of the model per `tensor_parallel_size` of its GPUs) and the other nodes train. Plain data: importing this
module loads nothing heavy.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from alignkit.errors import Problem, UserError

SERVE_MODULE = "trl.scripts.vllm_serve"
"""TRL's server, run with the job's own Python (`python -m trl.scripts.vllm_serve` is `trl vllm-serve`)."""
START_TIMEOUT_SECONDS = 1800
"""How long a job waits for the server to answer (loading a large model and compiling its graphs is slow)."""


@dataclass(frozen=True)
class InferenceServer:
    """What the server loads and how, and where the run learns its address."""

    model: str
    """The checkpoint it serves: the policy's starting weights (the base of a LoRA adapter, which the trainer
    merges and sends over after each step)."""
    revision: str
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    address_field: str
    """The recipe field the job sets to http://HOST:PORT (`--set FIELD=...`)."""
    port: int
    parallel_field: str
    """The recipe field giving tensor_parallel_size, named when the GPUs do not divide."""
    without_server: str
    """The recipe change that needs no server, offered when the job has no GPU left to train on."""


@dataclass(frozen=True)
class ServerLayout:
    """How a job's GPUs are split between the server and the trainers."""

    server: InferenceServer
    own_node: bool
    """The server has the last node to itself (several nodes); else it shares the one node."""
    server_gpus: int
    training_nodes: int
    training_gpus_per_node: int

    def serve_argv(self) -> list[str]:
        """Arguments of `python -m trl.scripts.vllm_serve` (data-parallel copies fill the server's GPUs)."""
        server = self.server
        argv = [
            "--model", server.model, "--revision", server.revision,
            "--tensor_parallel_size", str(server.tensor_parallel_size),
            "--data_parallel_size", str(self.server_gpus // server.tensor_parallel_size),
            "--port", str(server.port),
            "--gpu_memory_utilization", f"{server.gpu_memory_utilization:g}",
        ]  # fmt: skip
        if server.max_model_len:
            argv += ["--max_model_len", str(server.max_model_len)]
        return argv

    def describe(self) -> str:
        where = "the last node" if self.own_node else f"{self.server_gpus} GPU(s) of the node"
        return (
            f"vLLM server (trl vllm-serve, port {self.server.port}) on {where}; training on"
            f" {self.training_nodes} node(s) x {self.training_gpus_per_node} GPU(s)"
        )


def layout_server(server: InferenceServer, *, nodes: int, gpus_per_node: int, gpu_flag: str) -> ServerLayout:
    """Split the job's GPUs between `server` and the trainers; refuse a job with no GPU left to train on."""
    parallel = server.tensor_parallel_size
    if nodes > 1:
        if gpus_per_node % parallel:
            raise UserError(
                Problem(
                    source=gpu_flag,
                    message=f"gives {gpus_per_node} GPU(s) per node; the server's node runs copies of the model on"
                    f" {parallel} GPU(s) each ({server.parallel_field}), so give a multiple of {parallel}",
                )
            )
        return ServerLayout(server, True, gpus_per_node, nodes - 1, gpus_per_node)
    if gpus_per_node <= parallel:
        raise UserError(
            Problem(
                source=gpu_flag,
                message=f"gives {gpus_per_node} GPU(s); the vLLM server takes {parallel} ({server.parallel_field})"
                f" and training needs at least one more: give at least {parallel + 1}, add a node (--nodes 2: the"
                f" last node serves), or {server.without_server}",
            )
        )
    return ServerLayout(server, False, parallel, 1, gpus_per_node - parallel)


def wait_lines(url: str, pid: str | None) -> list[str]:
    """Shell lines that block until the server at `url` answers, failing if it stays silent or (when it runs
    here, as process `pid`) exits."""
    died = f'  kill -0 "{pid}" 2>/dev/null || {{ echo "alignkit: the vLLM server exited before answering"; exit 1; }}'
    return [
        "# The trainers start once the server answers; a server that dies or never answers ends the job.",
        f"deadline=$((SECONDS + ${{VLLM_START_TIMEOUT:-{START_TIMEOUT_SECONDS}}}))",
        f'until curl -sfL "{url}/health/" >/dev/null; do',
        *([died] if pid else []),
        '  (( SECONDS < deadline )) || { echo "alignkit: the vLLM server did not answer in time"; exit 1; }',
        "  sleep 10",
        "done",
    ]


def address_argument(layout: ServerLayout, host: str) -> str:
    """The `--set` value that points the run at the server on `host` (a shell word that may expand)."""
    return f'--set "{layout.server.address_field}=http://{host}:{layout.server.port}"'


def quoted(argv: list[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)
