"""End-to-end training on a tiny local Llama: every method, LoRA/QLoRA, adapter starts, resume, no clobbering,
and loss parity with plain TRL. Each run takes seconds on a CPU."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from alignkit.methods import METHODS

pytestmark = pytest.mark.slow

CHAT = [
    ("what is 2 + 3?", "5"),
    ("what is 4 + 4?", "8"),
    ("hello", "hello world"),
    ("what is the sum of one and two?", "three"),
    ("please add 10 and 20", "30"),
    ("good day", "yes good day"),
    ("what is 7 + 1?", "8"),
    ("red or blue?", "blue"),
]


# Unpaired rows: half desirable, half undesirable (a weighted ratio of 1:1).
KTO_ROWS = [
    {
        "prompt": [{"role": "user", "content": q}],
        "completion": [{"role": "assistant", "content": a if n % 2 == 0 else "no bad wrong"}],
        "label": n % 2 == 0,
    }
    for n, (q, a) in enumerate(CHAT)
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    _jsonl(
        folder / "sft.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHAT],
    )
    _jsonl(
        folder / "dpo.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": "no bad wrong"}],
            }
            for q, a in CHAT
        ],
    )
    _jsonl(folder / "cpt.jsonl", [{"text": f"{q} {a}. the sun and the rain."} for q, a in CHAT])
    _jsonl(folder / "kto.jsonl", KTO_ROWS)
    _jsonl(folder / "prompts.jsonl", [{"prompt": q, "answer": a} for q, a in CHAT])
    return folder


def write_recipe(folder: Path, method: str, model: Path, data: Path, output: Path, **sections) -> Path:
    needs = METHODS[method]
    data_file = {
        "text": "cpt.jsonl",
        "tokens": "sft.jsonl",
        "pairs": "dpo.jsonl",
        "unpaired": "kto.jsonl",
        "prompts": "prompts.jsonl",
    }[needs.data.rows]
    fields = needs.section.model_fields
    own = {"max_length": 48} if "max_length" in fields else {}
    if "max_prompt_length" in fields:
        own["max_prompt_length"] = 24
    if "rewards" in fields:  # online RL: a few short completions per prompt, a reward that varies among them
        own |= {"num_generations": 2, "max_completion_length": 8, "rewards": [{"regex": "e"}]}
    recipe = {
        "description": f"tiny {method} test",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"datasets": [{"path": str(data / data_file)}]},
        "training": {
            "output_dir": str(output),
            "learning_rate": 1e-2,
            "max_steps": 4,
            "per_device_train_batch_size": 2,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "save_strategy": "no",
            "seed": 0,
        },
        "logging": {"logging_steps": 1},
        method: own,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = folder / f"{method}-{output.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    tensors = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


def _assert_finished_run(out: Path, method: str, *, adapter: bool = False):
    expected = [
        "alignkit_recipe.yaml",
        "alignkit_run.json",
        "trainer_state.json",
        "all_results.json",
        "README.md",
        "training_curves.png",
        "tokenizer_config.json",
        "adapter_model.safetensors" if adapter else "model.safetensors",
    ]
    for name in expected:
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    info = json.loads((out / "alignkit_run.json").read_text())
    assert info["finished"] is True and info["method"] == method
    card = (out / "README.md").read_text()
    assert "## Reproduce" in card and f"alignkit {method} --recipe alignkit_recipe.yaml" in card
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_saves(cli, tiny_model_dir, data_dir, tmp_path, method):
    out = tmp_path / f"{method}-run"
    recipe = write_recipe(tmp_path, method, tiny_model_dir, data_dir, out)
    result = cli(method, "--recipe", recipe)
    assert result.exit_code == 0, result.output
    # CliRunner is not a terminal: progress comes as plain periodic lines, the last one at the final step.
    assert "training: 4 steps" in result.output
    assert "step 4/4 loss " in result.output
    # The data summary comes before training: one line per source, then the totals.
    assert f"{method} data: 8 train rows, 0 test rows" in result.output.splitlines()
    _assert_finished_run(out, method)
    before, after = _weights(tiny_model_dir), _weights(out)
    # A method may train another head on the same body (a reward model's score): compare what both hold.
    changed = [name for name in before if name in after and not (before[name] == after[name]).all()]
    assert len(changed) >= len(before) // 2, "training changed the weights"
    import transformers
    from transformers import AutoTokenizer

    needs = METHODS[method].model  # the method says how its output reloads
    model = getattr(transformers, needs.auto_class).from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache is True
    prompt = tokenizer("what is 2 + 3?", return_tensors="pt")
    if needs.generates:
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id
        generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
        assert generated.shape[1] > prompt["input_ids"].shape[1]
    else:
        assert model.config.pad_token_id == tokenizer.pad_token_id
        assert model(**prompt).logits.shape == (1, model.config.num_labels)


def test_lora_and_a_dpo_start_from_the_sft_adapter(cli, tiny_model_dir, data_dir, tmp_path):
    sft_out = tmp_path / "sft-lora"
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, sft_out, peft=peft)
    result = cli("sft", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    _assert_finished_run(sft_out, "sft", adapter=True)
    adapter_config = json.loads((sft_out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)

    dpo_out = tmp_path / "dpo-from-adapter"
    recipe = write_recipe(tmp_path, "dpo", sft_out, data_dir, dpo_out)
    result = cli("dpo", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert "continuing to train the LoRA adapter" in result.output
    _assert_finished_run(dpo_out, "dpo", adapter=True)
    sft_lora, dpo_lora = _weights(sft_out), _weights(dpo_out)
    assert set(sft_lora) == set(dpo_lora)
    assert any(not (sft_lora[k] == dpo_lora[k]).all() for k in sft_lora), "DPO trained the adapter further"


def _qlora_state(model) -> tuple[dict, dict]:
    """Copies of the base model's linear layers (name -> class, 4-bit and frozen?, weight) and trainable tensors."""
    import bitsandbytes as bnb
    import torch

    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name and not name.endswith("lm_head"):
            weight = module.weight
            packed = (
                isinstance(weight, bnb.nn.Params4bit)
                and weight.quant_state is not None
                and tuple(weight.quant_state.shape) == (module.out_features, module.in_features)
                and not weight.requires_grad
            )
            key = name.removeprefix("base_model.model.").removesuffix(".base_layer")
            layers[key] = (type(module), packed, weight.data.clone())
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return layers, trainable


def test_qlora_trains_an_adapter_on_a_frozen_4bit_base_on_the_cpu(cli, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import bitsandbytes as bnb
    import torch
    import transformers
    from safetensors.torch import load_file

    seen = {}
    original = transformers.Trainer.train

    def train(self, *args, **kwargs):  # what the trainer really holds, as training starts and ends
        seen["start"] = _qlora_state(self.model)
        result = original(self, *args, **kwargs)
        seen["end"] = _qlora_state(self.model)
        return result

    monkeypatch.setattr(transformers.Trainer, "train", train)
    out = tmp_path / "qlora"
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, out)
    result = cli("sft", "--recipe", recipe, "--qlora", "--set", "training.max_steps=4", "--set", "model.dtype=float32")
    assert result.exit_code == 0, result.output
    _assert_finished_run(out, "sft", adapter=True)
    frozen = yaml.safe_load((out / "alignkit_recipe.yaml").read_text())
    assert frozen["quantization"]["load_in_4bit"] is True

    # Every linear layer of the base model (all but the output head) was a frozen bitsandbytes 4-bit layer while
    # training, and training left it as it was.
    (base_start, lora_start), (base_end, _) = seen["start"], seen["end"]
    reference = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linear = {n for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    for layers in (base_start, base_end):
        assert {name: (cls, packed) for name, (cls, packed, _) in layers.items()} == dict.fromkeys(
            linear, (bnb.nn.Linear4bit, True)
        )
    assert all(base_start[n][2].equal(base_end[n][2]) for n in linear), "the 4-bit base weights changed"

    # The saved adapter holds exactly the trained LoRA tensors; LoRA B starts at zero, so a trained one is not.
    saved = load_file(out / "adapter_model.safetensors")
    assert set(saved) == {name.replace(".default", "") for name in lora_start}
    assert all(name.split(".")[-2] in ("lora_A", "lora_B") for name in saved)
    for name, initial in lora_start.items():
        if ".lora_B." in name:
            assert not initial.any() and saved[name.replace(".default", "")].any(), f"{name} was not trained"


def _hash_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_finished_run_is_never_clobbered(cli, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "done"
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, out)
    assert cli("sft", "--recipe", recipe).exit_code == 0
    before = _hash_tree(out)
    again = cli("sft", "--recipe", recipe)
    assert again.exit_code == 2
    assert f"error: {out}: holds a finished sft run" in again.stderr
    assert "Pass --overwrite to replace it" in again.stderr
    assert _hash_tree(out) == before
    replaced = cli("sft", "--recipe", recipe, "--overwrite")
    assert replaced.exit_code == 0, replaced.output


def test_a_foreign_folder_is_refused(cli, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, out)
    result = cli("sft", "--recipe", recipe)
    assert result.exit_code == 2
    assert "exists and holds no alignkit run" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_folder_another_machine_has_begun_is_not_foreign(tmp_path):
    """Machines sharing one output folder each freeze the same recipe there: the lock, the recipe, its
    temporary file and the launch folder, before any run record, must not read as another program's folder
    (machine 0 refused it once and left machine 1 waiting at the rendezvous); anything else still does."""
    from types import SimpleNamespace

    from alignkit.errors import UserError
    from alignkit.launch.start import prepare_output_dir

    out = tmp_path / "shared"
    (out / "launch" / "node1").mkdir(parents=True)
    for name in ("alignkit_recipe.yaml", ".alignkit_recipe.yaml.x1y2", ".alignkit_run.json.z3", ".alignkit.lock"):
        (out / name).write_text("")
    resolved = SimpleNamespace(output_dir=out)
    assert prepare_output_dir(resolved, overwrite=False) == "new"
    (out / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="exists and holds no alignkit run"):
        prepare_output_dir(resolved, overwrite=False)


def test_a_killed_run_resumes_to_the_same_weights(cli, tiny_model_dir, data_dir, tmp_path):
    from transformers import TrainerCallback

    from alignkit.launch.plan import LaunchOptions, plan_launch
    from alignkit.launch.start import freeze
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.train.worker import train

    save = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "save_total_limit": 3}
    straight = tmp_path / "straight"
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, straight, training=save)
    assert cli("sft", "--recipe", recipe).exit_code == 0

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise RuntimeError("simulated crash")

    killed = tmp_path / "killed"
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, killed, training=save)
    resolved = resolve_recipe("sft", str(recipe))
    freeze(resolved, plan_launch(resolved.recipe, LaunchOptions(launch="none")), ["alignkit"], previous=None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(killed, callbacks=[Crash()])
    assert (killed / "checkpoint-3").is_dir()
    assert not json.loads((killed / "alignkit_run.json").read_text())["finished"]

    resumed = cli("sft", "--recipe", recipe)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from checkpoint-3" in resumed.output
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 6
    a, b = _weights(straight), _weights(killed)
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs after resuming"


def test_changed_recipe_does_not_resume_silently(cli, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "half"
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, out)
    from alignkit.launch.plan import LaunchOptions, plan_launch
    from alignkit.launch.start import freeze
    from alignkit.recipe.resolve import resolve_recipe

    resolved = resolve_recipe("sft", str(recipe))
    freeze(resolved, plan_launch(resolved.recipe, LaunchOptions(launch="none")), ["alignkit"], previous=None)
    result = cli("sft", "--recipe", recipe, "--set", "training.learning_rate=0.5")
    assert result.exit_code == 2
    assert "holds an unfinished run of a different recipe (changed: training.learning_rate)" in result.stderr


def test_merged_copy_and_a_merged_adapter_start(cli, tiny_model_dir, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    sft_out = tmp_path / "sft-merged"
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "save_merged": True}
    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, sft_out, peft=peft)
    result = cli("sft", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(sft_out / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base, merged_weights = _weights(tiny_model_dir), _weights(sft_out / "merged")
    assert set(base) == set(merged_weights)
    assert any(not (base[k] == merged_weights[k]).all() for k in base), "the adapter was merged in"

    dpo_out = tmp_path / "dpo-after-merge"
    recipe = write_recipe(tmp_path, "dpo", sft_out, data_dir, dpo_out, peft={"r": 2, "alpha": 4, "dropout": 0.0})
    edited = yaml.safe_load(recipe.read_text())
    edited["model"]["merge_adapter"] = True
    recipe.write_text(yaml.safe_dump(edited))
    result = cli("dpo", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert "merged the adapter" in result.output
    assert json.loads((dpo_out / "adapter_config.json").read_text())["r"] == 2


def test_dpo_reference_log_probs_are_computed_once_and_reused_by_reruns_and_scan_arms(
    cli, tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """Unset, precompute_ref_log_probs is on: the first run writes the reference log-probs beside the
    prepared data; a rerun and a run with another beta read them back."""
    from trl import DPOTrainer

    passes = []
    original = DPOTrainer.compute_ref_log_probs

    def counted(self, *args, **kwargs):
        passes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", counted)
    recipe = write_recipe(tmp_path, "dpo", tiny_model_dir, data_dir, tmp_path / "out")
    result = cli("dpo", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert "dpo.precompute_ref_log_probs = true" in result.output
    assert passes, "the reference model ran over the data"
    passes.clear()
    result = cli("dpo", "--recipe", recipe, "--overwrite")
    assert result.exit_code == 0, result.output
    assert passes == [], "the rerun read the cached reference log-probs"
    # A scan's next arm: another beta and loss, another folder, the same data and reference model.
    arm = write_recipe(
        tmp_path, "dpo", tiny_model_dir, data_dir, tmp_path / "arm", dpo={"beta": 0.5, "loss_type": "ipo"}
    )
    result = cli("dpo", "--recipe", arm)
    assert result.exit_code == 0, result.output
    assert passes == [], "the other arm read the cached reference log-probs too"
    # A change that changes the rows computes them anew.
    other = write_recipe(tmp_path, "dpo", tiny_model_dir, data_dir, tmp_path / "short", dpo={"max_length": 40})
    result = cli("dpo", "--recipe", other)
    assert result.exit_code == 0, result.output
    assert passes, "another max_length is another set of reference log-probs"


@pytest.mark.parametrize("chosen", [None, True])
def test_hub_kernels_are_off_unless_the_recipe_turns_them_on(tiny_model_dir, data_dir, tmp_path, monkeypatch, chosen):
    """transformers swaps layers for kernels downloaded from the Hub whenever `kernels` is installed (it is one of
    its own requirements); alignkit asks for them only when model.use_kernels says so."""
    import transformers

    from alignkit.hardware import detect
    from alignkit.recipe.resolve import resolve_recipe
    from alignkit.train.modeling import load_model

    recipe = write_recipe(tmp_path, "sft", tiny_model_dir, data_dir, tmp_path / "out")
    if chosen:
        recipe.write_text(recipe.read_text().replace("  dtype: float32\n", "  dtype: float32\n  use_kernels: true\n"))
    resolved = resolve_recipe("sft", str(recipe))
    seen = {}
    loader = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        seen.update(kwargs)
        return loader(*args, **{k: v for k, v in kwargs.items() if k != "use_kernels"})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    load_model(resolved.recipe, detect(), tokenizer, new_tokens=False)
    assert seen["use_kernels"] is bool(chosen)


def test_row_lengths_for_grouping_come_from_the_arrow_columns_in_the_dataset_row_order():
    from datasets import Dataset

    from alignkit.methods import METHODS
    from alignkit.train.factory import token_counts

    rows = {
        "prompt_ids": [[1, 2], [3], [4, 5, 6], [7]],
        "chosen_ids": [[1], [2, 3, 4], [], [5, 6]],
        "rejected_ids": [[1, 2, 3], [4], [5], [6]],
        "ref_chosen_logps": [0.1, 0.2, 0.3, 0.4],
    }
    dataset = Dataset.from_dict(rows).shuffle(seed=3).select([3, 1, 0])  # an indices mapping, as TRL leaves
    counts = token_counts(dataset)
    assert set(counts) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    expected = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in dataset]
    assert list(METHODS["dpo"].batch_length(counts)) == expected
