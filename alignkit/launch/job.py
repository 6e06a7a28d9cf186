"""What a scheduler (Slurm, dstack) runs on every node: one validated `alignkit METHOD ...` command.

The recipe is resolved and its multi-node launch planned here, before any file is written, so a bad recipe
or contradictory flags never produce a job. The node-specific values (machine rank, the main node's
address) are left to the scheduler's variables; everything else is fixed in the generated file. A stage
that trains nothing (`sample`) runs as one process on one node instead: no launch plan, and the job must
ask for at least the GPUs its recipe spreads the model over. A training run that generates on a separate
server (`alignkit.launch.inference_server`) gets its GPUs split between the server and the trainers. A job
file that exists already (perhaps edited by hand) is replaced only with `--overwrite`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import Problem, UserError
from alignkit.launch.inference_server import ServerLayout, layout_server
from alignkit.launch.plan import LaunchOptions, LaunchPlan, plan_launch
from alignkit.recipe.resolve import ResolvedRecipe, resolve_recipe
from alignkit.stages import is_training, process_gpus


@dataclass(frozen=True)
class JobSpec:
    """The user's request for a multi-node job."""

    method: str
    recipe: str
    nodes: int
    gpus_per_node: int
    launch: str | None = None
    qlora: bool = False
    overrides: tuple[str, ...] = field(default_factory=tuple)
    output_dir: str | None = None


@dataclass(frozen=True)
class Job:
    """A validated job: the resolved recipe, the plan every node will compute, and the per-node argv."""

    spec: JobSpec
    resolved: ResolvedRecipe
    plan: LaunchPlan | None
    """How a training method's processes are launched; None for a stage that runs as one process (sample)."""
    argv: tuple[str, ...]
    """`alignkit` arguments shared by all nodes; for training the scheduler appends the counts, the node's rank
    and the main node's address."""
    notices: tuple[str, ...] = ()
    """Said when the job is written (GPUs the job asks for that its one process leaves idle)."""
    server: ServerLayout | None = None
    """The generation server the job starts beside the trainers (grpo's `vllm: server`), and its GPUs."""

    @property
    def name(self) -> str:
        """A job name schedulers accept: lowercase letters, digits and dashes."""
        raw = f"alignkit-{self.resolved.name}-{self.spec.method}".lower()
        return re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:60]


def plan_job(
    spec: JobSpec, *, recipe_ref: str | None = None, shared_disk: bool = True, gpu_flag: str = "--gpus-per-node"
) -> Job:
    """Validate the recipe and the multi-node plan; return the job (raises `UserError` on bad input).

    Args:
        spec: the request.
        recipe_ref: what the nodes pass as `--recipe` when it differs from the local reference (a recipe file
            uploaded to the cloud machine).
        shared_disk: the nodes see this machine's files (Slurm): local paths are made absolute. Without a
            shared disk (dstack) the output directory stays relative to the job's working directory.
        gpu_flag: the flag that gave `spec.gpus_per_node`, named in errors.
    """
    _refuse_request(spec, gpu_flag)
    # Resolving refuses a recipe or --set holding a secret: job files name secrets, never hold them.
    resolved = resolve_recipe(
        spec.method, spec.recipe, qlora=spec.qlora, overrides=list(spec.overrides), output_dir=spec.output_dir
    )
    plan, notices, server = None, (), None
    if is_training(spec.method):
        nodes, gpus = spec.nodes, spec.gpus_per_node
        needed = resolved.recipe.method.inference_server(resolved.recipe)
        if needed is not None:
            server = layout_server(needed, nodes=nodes, gpus_per_node=gpus, gpu_flag=gpu_flag)
            nodes, gpus = server.training_nodes, server.training_gpus_per_node
            notices = (server.describe(),)
        options = LaunchOptions(
            launch=spec.launch,
            num_processes=gpus,
            num_machines=nodes,
            # Checked here with a placeholder; each node is given the real address by the scheduler.
            main_process_ip="main-node" if nodes > 1 else None,
        )
        plan = plan_launch(resolved.recipe, options)
    else:
        notices = _process_gpus(spec, resolved, gpu_flag)
    if recipe_ref is None:
        recipe_ref = spec.recipe
        if shared_disk and Path(recipe_ref).expanduser().exists():
            recipe_ref = str(Path(recipe_ref).expanduser().resolve())  # nodes start in another directory
    output_dir = Path(resolved.recipe.training.output_dir or "").expanduser()
    if shared_disk and not output_dir.is_absolute():
        output_dir = output_dir.resolve()
    argv = [spec.method, "--recipe", recipe_ref]
    if spec.qlora:
        argv.append("--qlora")
    for text in spec.overrides:
        argv += ["--set", text]
    if plan is not None:
        argv += ["--launch", plan.profile]
    argv += ["--output-dir", str(output_dir)]
    return Job(spec=spec, resolved=resolved, plan=plan, argv=tuple(argv), notices=notices, server=server)


def _refuse_request(spec: JobSpec, gpu_flag: str) -> None:
    """Refuse counts below one and, for a stage that runs as one process, the flags of a distributed launch."""
    problems = []
    if spec.nodes < 1:
        problems.append(Problem(source="--nodes", message=f"must be at least 1 (given: {spec.nodes})"))
    if spec.gpus_per_node < 1:
        problems.append(Problem(source=gpu_flag, message=f"must be at least 1 (given: {spec.gpus_per_node})"))
    if not is_training(spec.method):
        problems += _one_process_problems(spec, gpu_flag)
    if problems:
        raise UserError(problems)


def _one_process_problems(spec: JobSpec, gpu_flag: str) -> list[Problem]:
    """What a one-process stage cannot take: several nodes, a launch profile, QLoRA."""
    kind = spec.method
    problems = []
    if spec.nodes > 1:
        message = (
            f"alignkit {kind} runs as one process on one node (given: {spec.nodes}); give --nodes 1, and more"
            f" GPUs with {gpu_flag} if the model needs them"
        )
        problems.append(Problem(source="--nodes", message=message))
    if spec.launch is not None:
        message = f"alignkit {kind} has no launch profile: it runs as one process, not through accelerate; remove it"
        problems.append(Problem(source="--launch", message=message))
    if spec.qlora:
        message = f"applies to the training methods; alignkit {kind} loads the model as its recipe says; remove it"
        problems.append(Problem(source="--qlora", message=message))
    return problems


def _process_gpus(spec: JobSpec, resolved: ResolvedRecipe, gpu_flag: str) -> tuple[str, ...]:
    """Refuse fewer GPUs than the stage's one process spreads its model over; note the ones it leaves idle."""
    field_name, needed = process_gpus(spec.method, resolved.recipe)
    given = spec.gpus_per_node
    if given < needed:
        raise UserError(
            Problem(
                source=gpu_flag,
                message=f"gives {given} GPU(s), but {field_name} is {needed} (the GPUs one alignkit {spec.method}"
                f" process spreads the model over); ask for at least {needed}, or --set {field_name}={given}",
            )
        )
    if given > needed:
        why = f" ({field_name} is {needed}; raise it to use more)" if field_name else ""
        return (f"the job asks for {given} GPU(s); alignkit {spec.method} runs one process on {needed} of them{why}",)
    return ()


def refuse_overwrite(paths: list[Path], *, overwrite: bool) -> None:
    """Refuse, before anything is written, job files that would replace a folder, or a file without `overwrite`.

    Raises:
        UserError: naming each such path and the flag (exit 2).
    """
    problems = []
    for path in paths:
        if path.is_dir():
            problems.append(Problem(source=str(path), message="is a folder; give --output a file name"))
        elif path.exists() and not overwrite:
            problems.append(
                Problem(
                    source=str(path),
                    message="already exists; not overwriting it (pass --overwrite to replace it, or another --output)",
                )
            )
    if problems:
        raise UserError(problems)
