"""Launch profiles: the accelerate/DeepSpeed configs and Trainer kwargs generated from the plan, per profile.

Dry runs simulate an 8-GPU node through CUDA_VISIBLE_DEVICES (the plan counts GPUs without torch), so the
configs are those a real GPU launch would get. Generated files are read back with accelerate's own loader.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO, chat_file

from alignkit.launch import profiles
from alignkit.launch.plan import PROFILES, LaunchOptions, plan_launch
from alignkit.recipe.resolve import resolve_recipe

EIGHT_GPUS = "0,1,2,3,4,5,6,7"


@pytest.fixture
def gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", EIGHT_GPUS)


def _dry_run(cli, *args):
    result = cli(*args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _plan(method="sft", recipe="zephyr-7b-gemma", *, qlora=False, overrides=(), **options):
    resolved = resolve_recipe(method, recipe, qlora=qlora, overrides=list(overrides))
    return plan_launch(resolved.recipe, LaunchOptions(**options))


def test_every_profile_ships_a_file_with_a_description():
    shipped = {p.stem for p in (profiles.configs_dir() / "launch").glob("*.yaml")}
    assert shipped == set(PROFILES) - {"none"}
    for name in shipped:
        spec = profiles.load_profile(name)
        assert spec["description"]
        assert spec["accelerate"]["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP")


def test_a_profile_file_may_not_set_values_owned_by_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "ddp.yaml").write_text(
        "description: x\naccelerate:\n  distributed_type: MULTI_GPU\n  mixed_precision: fp16\n", encoding="utf-8"
    )
    monkeypatch.setattr(profiles, "configs_dir", lambda: tmp_path)
    profiles.load_profile.cache_clear()
    try:
        with pytest.raises(ValueError, match="mixed_precision"):
            profiles.load_profile("ddp")
    finally:
        profiles.load_profile.cache_clear()


@pytest.mark.parametrize(
    ("profile", "distributed_type"),
    [
        ("ddp", "MULTI_GPU"),
        ("zero2", "DEEPSPEED"),
        ("zero3", "DEEPSPEED"),
        ("zero3-offload", "DEEPSPEED"),
        ("fsdp", "FSDP"),
    ],
)
def test_dry_run_prints_the_accelerate_config_of_every_profile(cli, gpus, profile, distributed_type):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--launch", profile)
    config = doc["accelerate_config"]
    assert doc["launch"]["profile"] == profile
    assert doc["launch"]["device"] == "cuda"
    assert config["distributed_type"] == distributed_type
    assert config["num_processes"] == 8
    assert config["num_machines"] == 1
    assert config["machine_rank"] == 0
    assert config["main_process_port"] == 29500
    assert config["use_cpu"] is False
    assert "main_process_ip" not in config
    if distributed_type == "DEEPSPEED":
        # Precision and accumulation live in the DeepSpeed JSON; accelerate refuses them twice.
        assert "mixed_precision" not in config
        assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
        assert doc["deepspeed_config"]["gradient_accumulation_steps"] == 4
        assert doc["deepspeed_config"]["train_micro_batch_size_per_gpu"] == 4
        assert doc["deepspeed_config"]["bf16"] == {"enabled": "auto"}
        assert doc["deepspeed_config"]["fp16"] == {"enabled": False}
    else:
        assert config["mixed_precision"] == "bf16"
        assert doc["deepspeed_config"] is None


def test_dry_run_of_profile_none_has_no_launcher_config(cli):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--launch", "none")  # the demo's data may not exist
    assert doc["launch"]["world_size"] == 1
    assert doc["accelerate_config"] is None
    assert doc["deepspeed_config"] is None


def test_dry_run_text_shows_accelerate_and_deepspeed_configs(cli, gpus):
    result = cli("sft", "--recipe", "zephyr-7b-gemma", "--launch", "zero3", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "accelerate config" in result.stdout
    assert "distributed_type: DEEPSPEED" in result.stdout
    assert '"stage3_gather_16bit_weights_on_model_save": true' in result.stdout


def test_zero_stages_and_offload():
    zero2 = profiles.deepspeed_config(_plan(launch="zero2", num_processes=8))
    zero3 = profiles.deepspeed_config(_plan(launch="zero3", num_processes=8))
    offload = profiles.deepspeed_config(_plan(launch="zero3-offload", num_processes=8))
    assert zero2["zero_optimization"]["stage"] == 2
    assert "offload_param" not in zero2["zero_optimization"]
    assert zero3["zero_optimization"]["stage"] == 3
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "optimizer" not in zero3  # the trainer's optimizer (the recipe's optim)
    assert offload["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert offload["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert offload["optimizer"]["type"] == "AdamW"
    assert offload["optimizer"]["params"]["lr"] == "auto"
    for config in (zero2, zero3, offload):
        assert config["train_batch_size"] == "auto"
        assert config["gradient_clipping"] == "auto"
        assert config["gradient_accumulation_steps"] == 4


def test_zero3_init_flag_only_for_zero3():
    assert profiles.accelerate_config(_plan(launch="zero3"))["deepspeed_config"]["zero3_init_flag"] is True
    assert profiles.accelerate_config(_plan(launch="zero2"))["deepspeed_config"]["zero3_init_flag"] is False


def test_deepspeed_precision_follows_the_recipe():
    fp16 = profiles.deepspeed_config(_plan(launch="zero3", overrides=["training.mixed_precision=fp16"]))
    assert fp16["fp16"] == {"enabled": "auto"}
    assert fp16["bf16"] == {"enabled": False}
    full = profiles.deepspeed_config(_plan(launch="zero3", overrides=["training.mixed_precision='no'"]))
    assert full["fp16"] == {"enabled": False}
    assert full["bf16"] == {"enabled": False}


def test_fsdp2_transformer_wrap_sharded_while_training(gpus):
    plan = _plan(launch="fsdp")
    fsdp = profiles.accelerate_config(plan)["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_offload_params"] is False
    # The recipe checkpoints activations: FSDP does it per layer, so the trainer's own is switched off.
    assert fsdp["fsdp_activation_checkpointing"] is True
    assert profiles.trainer_kwargs(plan) == {"activation_checkpointing": False}


def test_fsdp_without_activation_checkpointing_leaves_the_trainer_alone():
    plan = _plan(launch="fsdp", overrides=["training.gradient_checkpointing=false"])
    assert profiles.accelerate_config(plan)["fsdp_config"]["fsdp_activation_checkpointing"] is False
    assert profiles.trainer_kwargs(plan) == {}


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("none", {}),
        ("ddp", {"ddp_find_unused_parameters": False}),
        ("zero2", {}),
        ("zero3", {}),
        ("zero3-offload", {}),
    ],
)
def test_trainer_kwargs_per_profile(profile, expected):
    assert profiles.trainer_kwargs(_plan(recipe="tiny-demo", launch=profile)) == expected


def test_multi_node_flags_reach_the_accelerate_config(cli, gpus):
    doc = _dry_run(
        cli,
        "sft",
        "--recipe",
        "zephyr-7b-gemma",
        "--launch",
        "fsdp",
        "--num-machines",
        "4",
        "--machine-rank",
        "3",
        "--main-process-ip",
        "10.0.0.1",
        "--main-process-port",
        "6000",
    )
    config = doc["accelerate_config"]
    assert config["num_machines"] == 4
    assert config["num_processes"] == 32  # accelerate counts processes over all machines
    assert config["machine_rank"] == 3
    assert config["main_process_ip"] == "10.0.0.1"
    assert config["main_process_port"] == 6000
    assert doc["launch"]["effective_batch_size"] == 4 * 4 * 32


def test_launcher_precision_matches_what_the_trainer_can_do(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("alignkit.launch.plan.visible_gpus", lambda: 0)
    plan = _plan(recipe="tiny-demo", launch="ddp", num_processes=2, overrides=["training.mixed_precision=bf16"])
    assert plan.device == "cpu"
    monkeypatch.setattr(profiles, "cpu_has_bf16", lambda: True)
    assert profiles.accelerate_config(plan)["mixed_precision"] == "bf16"
    monkeypatch.setattr(profiles, "cpu_has_bf16", lambda: False)
    assert profiles.accelerate_config(plan)["mixed_precision"] == "no"
    fp16 = _plan(recipe="tiny-demo", launch="ddp", num_processes=2, overrides=["training.mixed_precision=fp16"])
    assert profiles.accelerate_config(fp16)["mixed_precision"] == "no"


@pytest.mark.parametrize("profile", ["ddp", "zero2", "zero3", "zero3-offload", "fsdp"])
def test_written_configs_load_with_accelerates_own_loader(tmp_path, gpus, profile):
    from accelerate.commands.config.config_args import load_config_from_file

    plan = _plan(launch=profile, num_machines=2, machine_rank=1, main_process_ip="10.1.2.3")
    path = profiles.write_launch_files(plan, tmp_path)
    config = load_config_from_file(str(path))
    assert config.num_processes == 16
    assert config.num_machines == 2
    assert config.machine_rank == 1
    assert config.main_process_ip == "10.1.2.3"
    assert str(config.distributed_type).endswith(profiles.load_profile(profile)["accelerate"]["distributed_type"])
    if profiles.is_deepspeed(plan):
        ds_file = config.deepspeed_config["deepspeed_config_file"]
        assert ds_file == str((tmp_path / "deepspeed_config.json").resolve())
        assert json.loads((tmp_path / "deepspeed_config.json").read_text()) == profiles.deepspeed_config(plan)
    else:
        assert not (tmp_path / "deepspeed_config.json").exists()


def test_deepspeed_json_is_accepted_by_accelerates_deepspeed_plugin(tmp_path, gpus, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    plan = _plan(launch="zero3")
    profiles.write_launch_files(plan, tmp_path)
    # What the launcher exports from the generated accelerate config: only the file and the launcher flags.
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "deepspeed_config_file,deepspeed_multinode_launcher")
    plugin = DeepSpeedPlugin(hf_ds_config=str(tmp_path / "deepspeed_config.json"))
    assert plugin.zero_stage == 3
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == 4


def test_use_full_state_dict_switches_an_fsdp_plugin_and_leaves_other_runs_alone():
    """The decision logic only, on stand-in objects: with an FSDP plugin on the trainer's accelerator state, the
    final save is switched to FULL_STATE_DICT; without one nothing changes. Nothing here runs FSDP: the real
    final save under FSDP is checked on a GPU by test_launch_train.py::test_fsdp_on_a_gpu_saves_one_full_state_dict.
    """

    class Plugin:
        state_dict_type = "SHARDED_STATE_DICT"

        def set_state_dict_type(self, value):
            self.state_dict_type = value

    class State:
        fsdp_plugin = Plugin()

    class Accelerator:
        state = State()

    class Trainer:
        accelerator = Accelerator()

    trainer = Trainer()
    from alignkit.train.finalize import use_full_state_dict

    assert use_full_state_dict(trainer) is True
    assert trainer.accelerator.state.fsdp_plugin.state_dict_type == "FULL_STATE_DICT"
    State.fsdp_plugin = None
    assert use_full_state_dict(Trainer()) is False


# QLoRA with sharding: the 4-bit storage dtype must equal the compute dtype under FSDP and ZeRO-3.


def test_fsdp_qlora_plan_stores_4bit_weights_in_the_compute_dtype(cli, gpus):
    doc = _dry_run(cli, "sft", "--recipe", "zephyr-7b-gemma", "--qlora", "--launch", "fsdp-qlora")
    assert doc["launch"]["profile"] == "fsdp-qlora"
    assert doc["launch"]["bnb_4bit_quant_storage"] == "bfloat16"
    assert doc["recipe"]["quantization"]["bnb_4bit_quant_storage"] == "bfloat16"
    fsdp = doc["accelerate_config"]["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_offload_params"] is True
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True


@pytest.mark.parametrize("profile", ["fsdp", "zero3", "zero3-offload"])
def test_sharded_4bit_recipe_without_storage_dtype_gets_the_compute_dtype(write_recipe, profile):
    path = write_recipe(
        "model: {name_or_path: some/model, dtype: float16}\n"
        "data: {datasets: [{path: data.jsonl}]}\n"
        "peft: {r: 8}\n"
        "quantization: {load_in_4bit: true}\n"
    )
    plan = _plan(recipe=str(path), launch=profile)
    assert plan.bnb_4bit_quant_storage == "float16"
    assert _plan(recipe=str(path), launch="ddp").bnb_4bit_quant_storage is None


def test_sharded_4bit_with_a_different_storage_dtype_is_refused(cli):
    result = cli(
        "sft",
        "--recipe",
        "zephyr-7b-gemma",
        "--qlora",
        "--set",
        "quantization.bnb_4bit_quant_storage=float32",
        "--launch",
        "fsdp",
        "--num-processes",
        "2",
        "--dry-run",
    )
    assert result.exit_code == 2
    assert "quantization.bnb_4bit_quant_storage: is float32 but the compute dtype is bfloat16" in result.stderr
    assert "--set quantization.bnb_4bit_quant_storage=bfloat16" in result.stderr
    assert "Traceback" not in result.output


def test_fsdp_qlora_needs_a_4bit_recipe(cli):
    result = cli("sft", "--recipe", "tiny-demo", "--launch", "fsdp-qlora", "--num-processes", "2", "--dry-run")
    assert result.exit_code == 2
    assert "error: --launch: fsdp-qlora shards a 4-bit base model" in result.stderr
    assert "add --qlora" in result.stderr


def test_8bit_weights_cannot_be_sharded(write_recipe, cli, tmp_path):
    path = write_recipe(
        "model: {name_or_path: some/model}\n"
        f"data: {{datasets: [{{path: {chat_file(tmp_path)}}}]}}\n"
        "peft: {r: 8}\n"
        "quantization: {load_in_8bit: true}\n"
    )
    result = cli("sft", "--recipe", path, "--launch", "zero3", "--num-processes", "2", "--dry-run")
    assert result.exit_code == 2
    assert "quantization.load_in_8bit: 8-bit weights cannot be sharded by --launch zero3" in result.stderr
    assert cli("sft", "--recipe", path, "--launch", "zero2", "--num-processes", "2", "--dry-run").exit_code == 0


def test_sharded_4bit_with_full_precision_other_weights_is_refused(write_recipe, cli, tmp_path):
    path = write_recipe(
        "model: {name_or_path: some/model, dtype: float32}\n"
        f"data: {{datasets: [{{path: {chat_file(tmp_path)}}}]}}\n"
        "peft: {r: 8}\n"
        "quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: bfloat16}\n"
    )
    result = cli("sft", "--recipe", path, "--launch", "zero3", "--num-processes", "2", "--dry-run")
    assert result.exit_code == 2
    assert "model.dtype: is float32 but the 4-bit compute dtype is bfloat16" in result.stderr
    assert "--set model.dtype=bfloat16" in result.stderr
    assert cli("sft", "--recipe", path, "--launch", "ddp", "--num-processes", "2", "--dry-run").exit_code == 0


@pytest.mark.parametrize("profile", ["ddp", "zero3", "fsdp"])
def test_multi_node_plan_reaches_torchrun_through_accelerates_own_argument_handling(tmp_path, gpus, profile):
    # What accelerate's launch command derives from the written config, short of starting processes.
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    plan = _plan(launch=profile, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=6123)
    config = profiles.write_launch_files(plan, tmp_path)
    args = launch_command_parser().parse_args(["--config_file", str(config), "--module", "alignkit.train.worker", "x"])
    args, defaults, _ = _validate_launch_command(args)
    if profile == "zero3":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        # Only these may come from the accelerate config when DeepSpeed reads a JSON file.
        assert set(env["ACCELERATE_CONFIG_DS_FIELDS"].split(",")) == {
            "deepspeed_config_file",
            "deepspeed_multinode_launcher",
            "zero3_init_flag",
        }
    else:
        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
    assert args.rdzv_endpoint == "10.0.0.1:6123"
    if profile == "fsdp":
        assert env["FSDP_VERSION"] == "2"
        assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true"
        assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


def test_dry_run_text_names_the_profile_and_the_4bit_storage_dtype(cli):
    result = cli(
        "sft", "--recipe", "zephyr-7b-gemma", "--qlora", "--launch", "fsdp-qlora", "--num-processes", "2", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "fsdp-qlora: PyTorch FSDP2 over a 4-bit QLoRA base" in " ".join(result.stdout.split())
    assert "4-bit storage" in result.stdout
    assert "bfloat16 (the compute dtype, as sharding needs)" in " ".join(result.stdout.split())


def _readme_scaling_commands() -> list[list[str]]:
    """Every `$ alignkit ...` command of the README's "Scaling out" section, continuation lines joined."""
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    joined = re.sub(r"\\\n\s*", "", section)
    commands = []
    for line in joined.splitlines():
        if line.startswith("$ alignkit "):
            commands.append(shlex.split(line[2:].split("  #", 1)[0]))
    return commands


def test_readme_scaling_out_commands_are_valid(cli, gpus, tmp_path):
    commands = _readme_scaling_commands()
    assert {c[1] for c in commands} >= {"sft", "slurm", "dstack"}
    for command in commands:
        args = [a for a in command[1:] if a not in ("--submit", "--apply")]
        if args[0] in ("slurm", "dstack"):
            args += ["--output", str(tmp_path / f"{len(list(tmp_path.iterdir()))}.out")]
        else:
            args.append("--dry-run")
        result = cli(*args)
        assert result.exit_code == 0, f"{' '.join(command)}\n{result.output}"
