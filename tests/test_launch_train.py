"""Real multi-process training on the CPU: `alignkit sft --launch ddp|zero3 --num-processes 2` on the tiny model.

Each run goes through the command line and the real engine. The workers are the real worker wrapped by a
probe module (`ALIGNKIT_WORKER_MODULE`) that records, per rank, what the trainer really wrapped the model in
and how many optimizer steps it took; the probe changes nothing else. A one-process run of the same recipe
gives the step count the two-rank runs must halve (each rank sees half of the data).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROWS = 32
BATCH = 2

PROBE = textwrap.dedent(
    """
    # Wraps the real worker: after Trainer.train, record the wrapper and the steps of this rank.
    import json, os, sys
    from pathlib import Path

    import transformers

    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        record = {
            "wrapped": type(self.model_wrapped).__name__,
            "distributed_type": str(self.accelerator.distributed_type),
            "fsdp_version": getattr(getattr(self.accelerator.state, "fsdp_plugin", None), "fsdp_version", None),
            "num_processes": self.accelerator.num_processes,
            "global_step": self.state.global_step,
            "train_rows_seen": len(self.get_train_dataloader()) * self.args.per_device_train_batch_size,
        }
        rank = os.environ.get("RANK", "0")
        Path(os.environ["PROBE_DIR"], f"rank{rank}.json").write_text(json.dumps(record))
        return result

    transformers.Trainer.train = train

    from alignkit.train.worker import main

    sys.exit(main())
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_sft_recipe(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny SFT recipe: 32 conversations, batch 2, one epoch, float32, nothing saved before the end."""
    folder = tmp_path_factory.mktemp("tiny-sft")
    rows = [
        {"messages": [{"role": "user", "content": f"what is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}"}]}
        for a, b in ((i % 10, (3 * i) % 10) for i in range(ROWS))
    ]
    data = folder / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = {
        "description": "tiny launch test",
        "model": {"name_or_path": str(tiny_model_dir), "dtype": "float32"},
        "data": {"datasets": [{"path": str(data)}]},
        "training": {
            "learning_rate": 1e-2,
            "num_train_epochs": 1,
            "per_device_train_batch_size": BATCH,
            "gradient_accumulation_steps": 1,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "save_strategy": "no",
            "seed": 0,
        },
        "logging": {"logging_steps": 1},
        "sft": {"max_length": 48},
    }
    path = folder / "tiny-sft.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def probe(tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "probe_worker.py").write_text(PROBE, encoding="utf-8")
    records = tmp_path / "probe"
    records.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")]),
        "ALIGNKIT_WORKER_MODULE": "probe_worker",
        "PROBE_DIR": str(records),
    }
    return env, records


def _bounded(command: list[str], env, timeout: float) -> subprocess.CompletedProcess:
    """Run `command` in its own process group; past `timeout` the whole group is killed and the test fails.
    (subprocess.run's timeout kills only the child, then waits for output that its workers still hold.)"""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} ran past {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _alignkit(env, *args, timeout=900) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    # The timeout turns a hang into a failure; runs take well under a minute.
    result = _bounded([sys.executable, "-m", "alignkit", *map(str, args)], env, timeout)
    return result, time.perf_counter() - started


def _steps(output_dir: Path) -> int:
    return json.loads((output_dir / "trainer_state.json").read_text())["global_step"]


@pytest.fixture(scope="module")
def one_process_steps(tiny_sft_recipe, tmp_path_factory) -> int:
    out = tmp_path_factory.mktemp("one") / "run"
    result, seconds = _alignkit(os.environ, "sft", "--recipe", tiny_sft_recipe, "--output-dir", out, "--launch", "none")
    print(f"one process, in-process: {seconds:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _steps(out)


def _loads_whole(output_dir: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(output_dir, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = dict(model.named_parameters())
    shapes = {name: p.shape for name, p in reference.named_parameters()}
    # Every tensor whole, none a ZeRO-3 shard (a partitioned weight has shape (0,) on each rank).
    assert {name: p.shape for name, p in trained.items()} == shapes, "saved tensors differ from the base model's"
    changed = [name for name, p in reference.named_parameters() if not p.detach().equal(trained[name].detach())]
    assert changed, "the saved weights are the initial ones"


@pytest.mark.parametrize(
    ("profile", "wrapper"),
    [
        ("ddp", "DistributedDataParallel"),
        ("zero2", "DeepSpeedEngine"),
        ("zero3", "DeepSpeedEngine"),
        # DeepSpeed's CPU Adam is compiled on first use (about a minute, cached in ~/.cache/torch_extensions).
        ("zero3-offload", "DeepSpeedEngine"),
        # accelerate runs an FSDP config as DDP on a CPU; the run must still succeed with the FSDP profile's
        # launcher environment and trainer settings (real sharding is checked on GPUs).
        ("fsdp", "DistributedDataParallel"),
    ],
)
def test_two_process_run_splits_the_data_wraps_the_model_and_saves_it_whole(
    tiny_sft_recipe, tiny_model_dir, one_process_steps, probe, tmp_path, profile, wrapper
):
    env, records = probe
    out = tmp_path / "run"
    result, seconds = _alignkit(
        env, "sft", "--recipe", tiny_sft_recipe, "--output-dir", out,
        "--launch", profile, "--num-processes", "2", "--main-process-port", _free_port(),
    )  # fmt: skip
    print(f"{profile}, 2 CPU processes: {seconds:.1f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["wrapped"] == wrapper
        assert record["num_processes"] == 2
        # Each rank sees half of the rows, so one epoch takes half the optimizer steps of one process.
        assert record["global_step"] * 2 == one_process_steps
    assert one_process_steps == ROWS // BATCH
    assert _steps(out) * 2 == one_process_steps
    run = json.loads((out / "alignkit_run.json").read_text())
    assert run["plan"]["profile"] == profile and run["plan"]["world_size"] == 2
    assert "[rank0]" in result.stdout + result.stderr and "[rank1]" in result.stdout + result.stderr
    _loads_whole(out, tiny_model_dir)
    if profile.startswith("zero"):
        written = json.loads((out / "launch" / "node0" / "deepspeed_config.json").read_text())["zero_optimization"]
        assert written["stage"] == (2 if profile == "zero2" else 3)
        assert ("offload_param" in written) == (profile == "zero3-offload")


@pytest.mark.gpu
def test_fsdp_on_a_gpu_saves_one_full_state_dict(tiny_sft_recipe, tiny_model_dir, probe, tmp_path):
    """`--launch fsdp` on CUDA (two processes where two GPUs are visible): training really runs under FSDP2, and
    the final save is one whole state dict that from_pretrained loads, not the sharded checkpoint format."""
    import torch

    env, records = probe
    processes = min(2, torch.cuda.device_count())
    out = tmp_path / "run"
    result, seconds = _alignkit(
        env, "sft", "--recipe", tiny_sft_recipe, "--output-dir", out, "--set", "training.max_steps=4",
        "--launch", "fsdp", "--num-processes", processes, "--main-process-port", _free_port(), timeout=420,
    )  # fmt: skip
    print(f"fsdp, {processes} GPU process(es): {seconds:.1f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for rank in range(processes):
        record = json.loads((records / f"rank{rank}.json").read_text())
        assert record["distributed_type"].endswith("FSDP") and record["fsdp_version"] == 2, record
        assert record["num_processes"] == processes and record["global_step"] == 4
    run = json.loads((out / "alignkit_run.json").read_text())
    assert run["finished"] is True and run["plan"]["profile"] == "fsdp" and run["plan"]["device"] == "cuda"
    assert (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file()
    assert not list(out.glob("pytorch_model_fsdp*")), "the final save is sharded"
    _loads_whole(out, tiny_model_dir)


def test_a_worker_that_fails_ends_the_launch_with_its_error(tiny_sft_recipe, tmp_path):
    # Every rank reads the frozen recipe; a data file gone after validation fails them all at load time.
    recipe = yaml.safe_load(tiny_sft_recipe.read_text())
    data = tmp_path / "vanishing.jsonl"
    data.write_text(Path(recipe["data"]["datasets"][0]["path"]).read_text(), encoding="utf-8")
    recipe["data"]["datasets"][0]["path"] = str(data)
    path = tmp_path / "vanishing.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "vanish_worker.py").write_text(
        f"import os, sys\nos.remove({str(data)!r}) if os.environ['RANK'] == '1' else None\n"
        "from alignkit.train.worker import main\nsys.exit(main())\n",
        encoding="utf-8",
    )
    env["ALIGNKIT_WORKER_MODULE"] = "vanish_worker"
    result, seconds = _alignkit(
        env, "sft", "--recipe", path, "--output-dir", tmp_path / "run",
        "--launch", "ddp", "--num-processes", "2", "--main-process-port", _free_port(), timeout=300,
    )  # fmt: skip
    print(f"failing ddp launch, 2 CPU processes: {seconds:.1f} s")
    # The worker rejected the input (exit 2), so the launch is a user error, reported once, with no traceback.
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    expected = rf"error: rank [01]: {re.escape(str(data))}: data.datasets.0: file or folder not found: .*"
    assert re.fullmatch(expected, last), last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written is left behind


@pytest.mark.parametrize(("nodes", "gpus_per_node"), [(1, 2), (2, 1)])
def test_slurm_script_trains_with_two_cpu_processes(
    tiny_sft_recipe, tiny_model_dir, one_process_steps, tmp_path, nodes, gpus_per_node
):
    """One node with two processes, and two "nodes" (both on this host, one shared output directory; node 0
    starts 5 s late, so node 1 waits for the run node 0 starts)."""
    from test_launch_slurm import STAND_INS

    from alignkit.launch.job import JobSpec, plan_job
    from alignkit.launch.slurm import SlurmOptions, write_script

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "run"
    spec = JobSpec(
        method="sft", recipe=str(tiny_sft_recipe), nodes=nodes, gpus_per_node=gpus_per_node, output_dir=str(out)
    )
    script = write_script(plan_job(spec), SlurmOptions(main_process_port=_free_port()), tmp_path / "job.sbatch")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STANDIN_LOG": str(tmp_path / "standin.log"),
        "STANDIN_HOSTS": " ".join(["127.0.0.1"] * nodes),
        "SLURM_JOB_NODELIST": "127.0.0.1",
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_ID": "7",
        "STANDIN_LATE_NODE0": "5" if nodes > 1 else "0",
    }
    started = time.perf_counter()
    result = _bounded(["bash", str(script)], env, timeout=900)
    print(f"slurm script, {nodes} node(s) x {gpus_per_node} CPU process(es): {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "srun --ntasks-per-node=1" in (tmp_path / "standin.log").read_text()
    assert _steps(out) * 2 == one_process_steps
    plan = json.loads((out / "alignkit_run.json").read_text())["plan"]
    assert (plan["world_size"], plan["num_machines"], plan["main_process_ip"]) == (2, nodes, "127.0.0.1")
    assert sorted(p.name for p in (out / "launch").iterdir()) == [f"node{r}" for r in range(nodes)]
    _loads_whole(out, tiny_model_dir)


CRASH = textwrap.dedent(
    """
    # The real worker, except that rank 1 dies after CRASH_AFTER optimizer steps (a lost node, an OOM kill).
    import os, sys

    import transformers

    original = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if os.environ.get("RANK") == "1" and self.state.global_step >= int(os.environ["CRASH_AFTER"]):
            raise RuntimeError(f"simulated crash at step {self.state.global_step}")
        return original(self, *args, **kwargs)

    transformers.Trainer.training_step = training_step

    from alignkit.train.worker import main

    sys.exit(main())
    """
)


@pytest.mark.parametrize("profile", ["ddp", "zero3"])
def test_a_rank_crashing_mid_run_fails_the_launch_and_the_rerun_resumes(tiny_sft_recipe, tmp_path, profile):
    (tmp_path / "crash_worker.py").write_text(CRASH, encoding="utf-8")
    out = tmp_path / "run"
    args = (
        "sft", "--recipe", tiny_sft_recipe, "--output-dir", out, "--launch", profile, "--num-processes", "2",
        "--set", "training.save_strategy=steps", "--set", "training.save_steps=2",
    )  # fmt: skip
    crashing = {**os.environ, "PYTHONPATH": str(tmp_path), "ALIGNKIT_WORKER_MODULE": "crash_worker", "CRASH_AFTER": "5"}
    first, first_seconds = _alignkit(crashing, *args, "--main-process-port", _free_port(), timeout=300)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    lines = first.stderr.strip().splitlines()
    # The rank reports its error and exits 1; on a loaded machine a runtime thread may still abort it at
    # interpreter shutdown (SIGABRT). Either way the launcher names the rank and the rank's own error.
    assert re.match(r"error: worker rank 1 of 2 failed \((exit code 1|signal SIGABRT)\); full log: ", lines[-2])
    assert lines[-1] == "error: RuntimeError: simulated crash at step 5"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    second, second_seconds = _alignkit(os.environ, *args, "--main-process-port", _free_port())
    print(f"{profile}, crash at step 5 then resume, 2 CPU processes: {first_seconds:.1f} s + {second_seconds:.1f} s")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from checkpoint-4 (step 4)" in second.stdout + second.stderr
    assert _steps(out) == ROWS // BATCH // 2


def test_qlora_under_zero3_shards_a_4bit_base_stored_in_the_compute_dtype(tiny_sft_recipe, probe, tmp_path):
    from safetensors.torch import load_file

    env, records = probe
    out = tmp_path / "run"
    result, seconds = _alignkit(
        env, "sft", "--recipe", tiny_sft_recipe, "--output-dir", out, "--qlora",
        "--set", "model.dtype=bfloat16", "--set", "quantization.bnb_4bit_compute_dtype=bfloat16",
        "--set", "quantization.bnb_4bit_quant_storage=bfloat16",
        "--set", f"training.per_device_train_batch_size={BATCH}", "--set", "training.gradient_accumulation_steps=1",
        "--launch", "zero3", "--num-processes", "2", "--main-process-port", _free_port(),
    )  # fmt: skip
    print(f"qlora + zero3, 2 CPU processes: {seconds:.1f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run = json.loads((out / "alignkit_run.json").read_text())
    assert run["plan"]["bnb_4bit_quant_storage"] == "bfloat16"
    assert yaml.safe_load((out / "alignkit_recipe.yaml").read_text())["quantization"]["bnb_4bit_quant_storage"] == (
        "bfloat16"
    )
    for rank in (0, 1):
        record = json.loads((records / f"rank{rank}.json").read_text())
        assert record["wrapped"] == "DeepSpeedEngine"
        assert record["global_step"] * 2 == ROWS // BATCH
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())  # gathered, not ZeRO-3 shards
    assert {str(t.dtype) for t in adapter.values()} == {"torch.bfloat16"}  # the adapters share the storage dtype


def test_two_machines_on_one_host_rendezvous_through_the_multi_node_flags(
    tiny_sft_recipe, tiny_model_dir, one_process_steps, tmp_path
):
    # Two `alignkit` commands, one per "machine", as a user runs them on two nodes without a shared disk.
    port = str(_free_port())
    common = ("sft", "--recipe", str(tiny_sft_recipe), "--launch", "ddp", "--num-machines", "2", "--num-processes", "1")
    flags = ("--main-process-ip", "127.0.0.1", "--main-process-port", port)
    started = time.perf_counter()

    def start_machine(rank: int) -> subprocess.Popen:
        argv = [*common, "--machine-rank", str(rank), "--output-dir", str(tmp_path / f"node{rank}"), *flags]
        return subprocess.Popen(
            [sys.executable, "-m", "alignkit", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    machines = [start_machine(0), start_machine(1)]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    print(f"ddp, 2 machines x 1 CPU process on one host: {time.perf_counter() - started:.1f} s")
    assert [m.returncode for m in machines] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert _steps(node0) * 2 == one_process_steps  # one world of two ranks, not two runs of one
    _loads_whole(node0, tiny_model_dir)
    assert not (node1 / "model.safetensors").exists()  # only the main process writes the final files
    plans = [json.loads((n / "alignkit_run.json").read_text())["plan"] for n in (node0, node1)]
    assert [(p["machine_rank"], p["num_machines"], p["world_size"]) for p in plans] == [(0, 2, 2), (1, 2, 2)]
    config = yaml.safe_load((node1 / "launch" / "node1" / "accelerate_config.yaml").read_text())
    assert (config["machine_rank"], config["main_process_ip"], config["main_process_port"]) == (
        1,
        "127.0.0.1",
        int(port),
    )


def _tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _gathered(model) -> dict:
    """A state dict as FSDP's full-state-dict gather hands it over: every tensor its own copy."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_a_gathered_state_dict_loses_the_tied_copy_of_the_embeddings():
    from alignkit.train.finalize import drop_tied_copies

    model = _tied_llama()
    state = _gathered(model)
    assert "lm_head.weight" in state  # the copy transformers would write: its storage is not shared any more
    assert drop_tied_copies(state, model) == ["lm_head.weight"]
    assert "lm_head.weight" not in state and "model.embed_tokens.weight" in state
    assert model.config.tie_word_embeddings is True


def test_a_tied_copy_that_differs_from_its_source_is_kept_and_the_model_untied():
    from alignkit.train.finalize import drop_tied_copies

    model = _tied_llama()
    state = _gathered(model)
    state["lm_head.weight"] += 1
    assert drop_tied_copies(state, model) == []
    assert "lm_head.weight" in state and model.config.tie_word_embeddings is False


def test_an_untied_model_keeps_every_tensor(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.train.finalize import drop_tied_copies

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = _gathered(model)
    assert drop_tied_copies(state, model) == [] and state.keys() == model.state_dict().keys()


def test_the_final_fsdp_save_writes_a_tied_model_once(tmp_path):
    """The trainer's save under FSDP gets the gathered state dict; the file holds no second embedding matrix and
    loads back with the trained weights."""
    from types import SimpleNamespace

    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from alignkit.train.finalize import _without_tied_copies

    model = _tied_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(3)

    def save(output_dir=None, state_dict=None):
        model.save_pretrained(output_dir, state_dict=state_dict)

    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m), _save=save)
    _without_tied_copies(trainer)
    trainer._save(str(tmp_path), state_dict=_gathered(model))
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys() and "model.embed_tokens.weight" in weights.keys()  # noqa: SIM118
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.equal(model.model.embed_tokens.weight)
