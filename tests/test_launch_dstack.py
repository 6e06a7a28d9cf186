"""`alignkit dstack`: generated task and fleet files, validated with dstack's own configuration models.

dstack is a test dependency (the `dev` extra); `--apply` is checked against a stand-in `dstack` command.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from alignkit.errors import UserError
from alignkit.launch.dstack import gpus_per_node

configurations = pytest.importorskip(
    "dstack._internal.core.models.configurations", reason="dstack is a test dependency: pip install -e '.[dev]'"
)


def _load(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _generate(cli, tmp_path, *args):
    out = tmp_path / "train.dstack.yml"
    result = cli("dstack", "sft", *args, "--output", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_single_node_task_is_a_valid_dstack_task(cli, tmp_path):
    out, result = _generate(cli, tmp_path, "--recipe", "zephyr-7b-gemma", "--gpu", "H100:8")
    assert f"wrote {out}" in result.stdout
    assert f"run it with: dstack apply -f {out}" in result.stdout
    task = configurations.parse_run_configuration(_load(out))
    assert isinstance(task, configurations.TaskConfiguration)
    assert task.name == "alignkit-zephyr-7b-gemma-sft"
    assert task.nodes in (None, 1)
    assert task.resources.gpu.count.min == 8
    assert task.resources.gpu.name == ["H100"]
    assert str(task.resources.shm_size).startswith("24")
    assert task.commands[0] == "pip install alignkit==" + __import__("alignkit").__version__
    command = task.commands[1]
    assert command.startswith("alignkit sft --recipe zephyr-7b-gemma --launch zero3 --output-dir outputs/")
    assert '--num-machines "$DSTACK_NODES_NUM" --num-processes "$DSTACK_GPUS_PER_NODE"' in command
    assert "--machine-rank" not in command  # one node: no rendezvous address needed
    assert not (tmp_path / "train-fleet.dstack.yml").exists()


def test_multi_node_task_and_fleet_are_valid_and_use_dstacks_node_variables(cli, tmp_path):
    out, result = _generate(cli, tmp_path, "--recipe", "zephyr-7b-gemma", "--gpu", "A100:80GB:4", "--nodes", "2")
    fleet_path = tmp_path / "train-fleet.dstack.yml"
    assert f"run it with: dstack apply -f {fleet_path} && dstack apply -f {out}" in result.stdout
    task = configurations.parse_run_configuration(_load(out))
    assert task.nodes == 2
    assert task.resources.gpu.count.min == 4
    command = task.commands[1]
    assert '--machine-rank "$DSTACK_NODE_RANK"' in command
    assert '--main-process-ip "$DSTACK_MASTER_NODE_IP" --main-process-port 29500' in command
    fleet = configurations.parse_apply_configuration(_load(fleet_path))
    assert fleet.type == "fleet"
    assert fleet.name == "alignkit-zephyr-7b-gemma-sft-fleet"
    assert fleet.nodes.min == fleet.nodes.max == 2
    assert fleet.placement.value == "cluster"
    assert fleet.resources.gpu.count.min == 4


def test_a_recipe_file_is_uploaded_with_the_task(cli, tmp_path, write_recipe):
    recipe = write_recipe("model: {name_or_path: some/model}\ndata: {datasets: [{path: data.jsonl}]}\n", "mine.yaml")
    out, _ = _generate(cli, tmp_path, "--recipe", recipe, "--gpu", "L4:1", "--set", "training.num_train_epochs=2")
    task = configurations.parse_run_configuration(_load(out))
    assert [(f.local_path, f.path) for f in task.files] == [(str(recipe.resolve()), "alignkit-recipes/mine.yaml")]
    assert task.commands[1].startswith(
        "alignkit sft --recipe alignkit-recipes/mine.yaml --set training.num_train_epochs=2 --launch none"
    )


def test_secrets_are_passed_by_name_only(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x9Y8" * 9)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 3)
    out, _ = _generate(cli, tmp_path, "--recipe", "zephyr-7b-gemma", "--gpu", "H100:8", "--nodes", "2")
    for path in (out, tmp_path / "train-fleet.dstack.yml"):
        text = path.read_text()
        assert "x9Y8" not in text
        assert "0123456789abcdef" not in text
    task = configurations.parse_run_configuration(_load(out))
    # dstack's own reading: both are placeholders it fills from the applying user's environment.
    from dstack._internal.core.models.envs import EnvSentinel

    assert {key: type(value) for key, value in task.env.items()} == {
        "HF_TOKEN": EnvSentinel,
        "WANDB_API_KEY": EnvSentinel,
    }
    assert _load(out)["env"] == ["HF_TOKEN", "WANDB_API_KEY"]


@pytest.mark.parametrize(
    ("spec", "count"),
    [("H100:8", 8), ("A100:80GB:2", 2), ("24GB..", 1), ("24GB..:1..", 1), ("A100:2..8", 2), ("L4", 1)],
)
def test_gpu_count_agrees_with_dstacks_parser(spec, count):
    from dstack._internal.core.models.resources import ResourcesSpec

    assert gpus_per_node(spec) == count
    assert ResourcesSpec.model_validate({"gpu": spec}).gpu.count.min == count


@pytest.mark.parametrize("spec", ["H100 8", "", "A100:2:4", "H100:0"])
def test_bad_gpu_specs_are_refused(spec):
    with pytest.raises(UserError) as err:
        gpus_per_node(spec)
    assert err.value.problems[0].source == "--gpu"


def test_a_bad_recipe_never_produces_files(cli, tmp_path):
    out = tmp_path / "train.dstack.yml"
    result = cli("dstack", "sft", "--recipe", "tiny-demo", "--gpu", "H100:2", "--launch", "fsdp-qlora", "--output", out)
    assert result.exit_code == 2
    assert "error: --launch: fsdp-qlora shards a 4-bit base model" in result.stderr
    assert not out.exists()
    result = cli("dstack", "dpo", "--recipe", "nope-recipe", "--gpu", "H100:2", "--output", out)
    assert result.exit_code == 2
    assert "unknown recipe 'nope-recipe'" in result.stderr


def test_apply_runs_dstack_on_the_fleet_then_the_task(cli, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "dstack"
    stand_in.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path / "dstack.log"}\n', encoding="utf-8")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out, _ = _generate(cli, tmp_path, "--recipe", "zephyr-7b-gemma", "--gpu", "H100:8", "--nodes", "2", "--apply")
    calls = (tmp_path / "dstack.log").read_text().splitlines()
    assert calls == [f"apply -f {tmp_path / 'train-fleet.dstack.yml'}", f"apply -f {out}"]


def test_apply_without_dstack_is_a_user_error_and_keeps_the_files(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "train.dstack.yml"
    result = cli("dstack", "sft", "--recipe", "zephyr-7b-gemma", "--gpu", "H100:8", "--output", out, "--apply")
    assert result.exit_code == 2
    assert "error: --apply: the dstack command line is not installed here" in result.stderr
    assert out.is_file()


# --- sample: one `alignkit sample` process on one node ----------------------------------------------------

SAMPLE_RECIPE = """\
model: {name_or_path: some/model}
data: {datasets: [{path: prompts.jsonl}]}
sample:
  num_samples: 4
  tensor_parallel_size: 2
  scorers: [{exact_match: {column: answer}}]
"""


def _sample_task(cli, tmp_path, write_recipe, *flags):
    recipe = write_recipe(SAMPLE_RECIPE, "mine.yaml")
    out = tmp_path / "sample.dstack.yml"
    return recipe, out, cli("dstack", "sample", "--recipe", recipe, "--output", out, *flags)


def test_sample_task_is_a_valid_dstack_task_running_one_sample_command(cli, tmp_path, write_recipe):
    recipe, out, result = _sample_task(cli, tmp_path, write_recipe, "--gpu", "H100:2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"wrote {out}", f"run it with: dstack apply -f {out}"]
    assert out.read_text().splitlines()[0] == (
        "# alignkit sample on dstack: 1 node(s) with GPU H100:2, one process, no launch profile."
    )
    task = configurations.parse_run_configuration(_load(out))
    assert isinstance(task, configurations.TaskConfiguration)
    assert task.name == "alignkit-mine-sample"
    assert task.nodes in (None, 1)
    assert task.resources.gpu.count.min == task.resources.gpu.count.max == 2
    assert task.resources.gpu.name == ["H100"]
    assert [(f.local_path, f.path) for f in task.files] == [(str(recipe.resolve()), "alignkit-recipes/mine.yaml")]
    assert task.commands == [
        "pip install alignkit==" + __import__("alignkit").__version__,
        "alignkit sample --recipe alignkit-recipes/mine.yaml --output-dir outputs/mine-sample",
    ]
    assert not list(tmp_path.glob("*fleet*"))


def test_sample_task_with_the_vllm_backend_installs_vllm(cli, tmp_path, write_recipe):
    _, out, result = _sample_task(
        cli, tmp_path, write_recipe, "--gpu", "A100:80GB:4", "--set", "sample.backend=vllm", "--set",
        "sample.tensor_parallel_size=4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    task = configurations.parse_run_configuration(_load(out))
    assert task.commands == [
        f"pip install 'alignkit[vllm]=={__import__('alignkit').__version__}'",
        "alignkit sample --recipe alignkit-recipes/mine.yaml --set sample.backend=vllm"
        " --set sample.tensor_parallel_size=4 --output-dir outputs/mine-sample",
    ]
    assert task.resources.gpu.count.min == 4


def test_sample_task_refuses_what_one_process_cannot_use(cli, tmp_path, write_recipe):
    _, out, result = _sample_task(cli, tmp_path, write_recipe, "--gpu", "H100:2", "--nodes", "2", "--launch", "zero3")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --nodes: alignkit sample runs as one process on one node (given: 2); give --nodes 1, and more GPUs"
        " with --gpu if the model needs them",
        "error: --launch: alignkit sample has no launch profile: it runs as one process, not through accelerate;"
        " remove it",
    ]
    assert not out.exists()
    assert not list(tmp_path.glob("*fleet*"))
    _, out, result = _sample_task(cli, tmp_path, write_recipe, "--gpu", "L4")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --gpu: gives 1 GPU(s), but sample.tensor_parallel_size is 2 (the GPUs one alignkit sample process"
        " spreads the model over); ask for at least 2, or --set sample.tensor_parallel_size=1\n"
    )
    assert not out.exists()


def test_sample_task_keeps_an_edited_file_and_applies(cli, tmp_path, write_recipe, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "dstack"
    stand_in.write_text(f'#!/bin/bash\necho "$*" >> {tmp_path / "dstack.log"}\n', encoding="utf-8")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "sample.dstack.yml"
    out.write_text("# edited by hand\n")
    _, _, refused = _sample_task(cli, tmp_path, write_recipe, "--gpu", "H100:2", "--apply")
    assert refused.exit_code == 2
    assert f"error: {out}: already exists; not overwriting it (pass --overwrite" in refused.stderr
    assert out.read_text() == "# edited by hand\n"
    assert not (tmp_path / "dstack.log").exists()
    _, _, applied = _sample_task(cli, tmp_path, write_recipe, "--gpu", "H100:2", "--apply", "--overwrite")
    assert applied.exit_code == 0, applied.output
    assert (tmp_path / "dstack.log").read_text().splitlines() == [f"apply -f {out}"]
    assert configurations.parse_run_configuration(_load(out)).commands[1].startswith("alignkit sample ")


# --- grpo with `vllm: server`: the task starts trl vllm-serve beside the trainers ------------------------------

GRPO_SERVER_RECIPE = """\
model: {name_or_path: some/model}
data: {datasets: [{path: prompts.jsonl}]}
grpo:
  vllm: server
  num_generations: 4
  rewards: [{math: solution}, {think_format: {}}]
training: {per_device_train_batch_size: 4}
"""


def _server_task(cli, tmp_path, write_recipe, *flags):
    recipe = write_recipe(GRPO_SERVER_RECIPE, "rl.yaml")
    out = tmp_path / "rl.dstack.yml"
    result = cli("dstack", "grpo", "--recipe", recipe, "--output", out, *flags)
    assert result.exit_code == 0, result.output
    return configurations.parse_run_configuration(_load(out))


def _joined(task) -> str:
    """The task's commands as dstack's server runs them: stripped, joined with `&&`, a command ending in `&`
    braced (dstack/_internal/server/services/jobs/configurators/base.py, `_join_shell_commands`; its server
    modules need packages the client install lacks, so the rule is restated here)."""
    commands = [command.strip() for command in task.commands]
    return " && ".join(f"{{ {command} }}" if command.endswith("&") else command for command in commands)


def test_one_node_task_serves_on_the_first_gpus_and_trains_on_the_rest(cli, tmp_path, write_recipe, monkeypatch):
    task = _server_task(cli, tmp_path, write_recipe, "--gpu", "H100:4")
    version = __import__("alignkit").__version__
    assert task.commands[0] == f"pip install 'alignkit[math,vllm]=={version}'"
    (script,) = task.commands[1:]
    lines = script.splitlines()
    assert lines[0].startswith("SERVE_GPUS=$(seq -s, 0 0)  # vLLM server")
    assert lines[1] == (
        'CUDA_VISIBLE_DEVICES="$SERVE_GPUS" python -m trl.scripts.vllm_serve --model some/model --revision main'
        " --tensor_parallel_size 1 --data_parallel_size 1 --port 8000 --gpu_memory_utilization 0.9 &"
    )
    assert lines[-1] == (
        "CUDA_VISIBLE_DEVICES=$(seq -s, 1 $((DSTACK_GPUS_PER_NODE - 1))) alignkit grpo --recipe"
        " alignkit-recipes/rl.yaml --launch ddp --output-dir outputs/rl-grpo --num-machines 1 --num-processes 3"
        ' --set "grpo.vllm_server=http://localhost:8000"'
    )
    # Run as dstack would (install, then the block) with stand-ins: the trainers start once the server answers.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "pip": '#!/bin/bash\necho pip >> "$LOG"\n',
        "python": '#!/bin/bash\necho "server $CUDA_VISIBLE_DEVICES" >> "$LOG"\n'
        'echo $$ > "$UP.new"; mv "$UP.new" "$UP"; exec /bin/sleep 30\n',
        "curl": '#!/bin/bash\n[ -e "$UP" ]\n',
        "alignkit": '#!/bin/bash\necho "trainers $CUDA_VISIBLE_DEVICES $*" >> "$LOG"\n',
        "sleep": "#!/bin/bash\nexec /bin/sleep 0.1\n",
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    log, up = tmp_path / "log", tmp_path / "up"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "UP": str(up)}
    env["DSTACK_GPUS_PER_NODE"] = "4"
    import subprocess

    run = subprocess.run(
        ["bash", "-c", _joined(task)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    server = int(up.read_text())
    for _ in range(50):  # the job's exit stops the server (it may take a moment to be reaped)
        if subprocess.run(["kill", "-0", str(server)], capture_output=True, check=False).returncode:
            break
        time.sleep(0.1)
    else:
        os.kill(server, signal.SIGKILL)
        pytest.fail("the vLLM server outlived the task")
    entries = log.read_text().splitlines()
    assert entries[:2] == ["pip", "server 0"]
    assert entries[2].startswith("trainers 1,2,3 grpo --recipe alignkit-recipes/rl.yaml")
    assert entries[2].endswith("--set grpo.vllm_server=http://localhost:8000")


def test_multi_node_task_serves_on_the_last_node(cli, tmp_path, write_recipe):
    task = _server_task(cli, tmp_path, write_recipe, "--gpu", "H100:8", "--nodes", "3")
    script = task.commands[1]
    assert 'SERVER_IP=$(echo "$DSTACK_NODES_IPS" | tail -n 1)' in script
    assert (
        'if [ "$DSTACK_NODE_RANK" -eq $((DSTACK_NODES_NUM - 1)) ]; then exec python -m trl.scripts.vllm_serve'
        " --model some/model --revision main --tensor_parallel_size 1 --data_parallel_size 8 --port 8000"
        " --gpu_memory_utilization 0.9; fi"
    ) in script
    assert 'until curl -sfL "http://$SERVER_IP:8000/health/"' in script
    assert script.splitlines()[-1].endswith(
        '--num-machines 2 --num-processes 8 --machine-rank "$DSTACK_NODE_RANK" --main-process-ip'
        ' "$DSTACK_MASTER_NODE_IP" --main-process-port 29500 --set "grpo.vllm_server=http://$SERVER_IP:8000"'
    )
