"""The recipe library: every Alignment Handbook recipe, its values, variants, `recipes cp`, scans, pipelines, the
sampling families (best-of-n SFT, iterative DPO) and open-r1's GRPO recipe."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_dir

from alignkit.errors import UserError
from alignkit.library import registry
from alignkit.pipeline import scan, spec
from alignkit.recipe.resolve import resolve_recipe
from alignkit.stages import is_training

UF = "HuggingFaceH4/ultrafeedback_binarized"
UC = "HuggingFaceH4/ultrachat_200k"
STARCHAT_SFT = [
    "HuggingFaceH4/airoboros-3.2",
    "HuggingFaceH4/Code-Feedback",
    "HuggingFaceH4/orca-math-word-problems-200k",
    "HuggingFaceH4/SystemChat",
    "HuggingFaceH4/capybara",
]
SMOLLM_SFT = [
    "HuggingFaceTB/Magpie-Pro-300K-Filtered-H4",
    "HuggingFaceTB/self-oss-instruct-sc2-H4",
    "HuggingFaceTB/OpenHermes-2.5-H4",
    "HuggingFaceTB/everyday-conversations-llama3.1-2k",
    "HuggingFaceTB/instruct-data-basics-smollm-H4",
]

# (name, method) -> (model id, the distinct dataset ids in order of first use): the whole library.
LIBRARY = {
    ("zephyr-7b-beta", "sft"): ("mistralai/Mistral-7B-v0.1", [UC]),
    ("zephyr-7b-beta", "dpo"): ("alignment-handbook/zephyr-7b-sft-full", [UF]),
    ("zephyr-7b-beta", "simpo"): ("alignment-handbook/zephyr-7b-sft-full", [UF]),
    ("zephyr-7b-beta", "rm"): ("alignment-handbook/zephyr-7b-sft-full", [UF]),
    ("zephyr-7b-beta:qlora", "sft"): ("mistralai/Mistral-7B-v0.1", [UC]),
    ("zephyr-7b-beta:qlora", "dpo"): ("alignment-handbook/zephyr-7b-sft-qlora", [UF]),
    ("zephyr-7b-gemma", "sft"): ("google/gemma-7b", ["HuggingFaceH4/deita-10k-v0-sft"]),
    ("zephyr-7b-gemma", "dpo"): ("HuggingFaceH4/zephyr-7b-gemma-sft-v0.1", ["argilla/dpo-mix-7k"]),
    ("zephyr-141b-a35b", "orpo"): (
        "mistral-community/Mixtral-8x22B-v0.1",
        ["argilla/distilabel-capybara-dpo-7k-binarized"],
    ),
    ("starchat2-15b", "sft"): ("bigcode/starcoder2-15b", STARCHAT_SFT),
    ("starchat2-15b", "dpo"): ("HuggingFaceH4/starchat2-15b-sft-v0.1", [UF, "HuggingFaceH4/orca_dpo_pairs"]),
    ("constitutional-ai", "sft"): ("mistralai/Mistral-7B-v0.1", ["HuggingFaceH4/cai-conversation-harmless", UC]),
    ("constitutional-ai:grok", "sft"): (
        "mistralai/Mistral-7B-v0.1",
        ["HuggingFaceH4/grok-conversation-harmless", UC],
    ),
    ("constitutional-ai", "dpo"): (
        "alignment-handbook/mistral-7b-sft-constitutional-ai",
        [UF, "HuggingFaceH4/cai-conversation-harmless"],
    ),
    ("pref-align-scan", "dpo"): ("alignment-handbook/zephyr-7b-sft-full", [UF]),
    ("pref-align-scan:openhermes", "dpo"): ("teknium/OpenHermes-2.5-Mistral-7B", ["HuggingFaceH4/orca_dpo_pairs"]),
    ("pref-align-scan", "kto"): ("alignment-handbook/zephyr-7b-sft-full", [UF]),
    ("pref-align-scan:openhermes", "kto"): ("teknium/OpenHermes-2.5-Mistral-7B", ["HuggingFaceH4/orca_dpo_pairs"]),
    ("smollm", "sft"): ("HuggingFaceTB/SmolLM-360M", SMOLLM_SFT),
    ("smollm2", "sft"): ("HuggingFaceTB/SmolLM2-1.7B", ["HuggingFaceTB/smoltalk"]),
    ("smollm2", "dpo"): ("loubnabnl/smollm2-1.7B-sft", [UF]),
    ("smollm2:smol", "sft"): ("HuggingFaceTB/SmolLM2-360M", ["HuggingFaceTB/smol-smoltalk"]),
    ("smollm2:smol", "dpo"): ("loubnabnl/smollm2-360M-sft", [UF]),
    ("smollm2:smol", "rm"): ("loubnabnl/smollm2-360M-sft", [UF]),
    ("smollm3:mid", "sft"): ("HuggingFaceTB/SmolLM3-3B-Base", ["HuggingFaceTB/smoltalk2"]),
    ("smollm3", "sft"): ("HuggingFaceTB/SmolLM3-3B-checkpoints", ["HuggingFaceTB/smoltalk2"]),
    ("smollm3", "dpo"): ("HuggingFaceTB/SmolLM3-3B-checkpoints", ["HuggingFaceTB/smoltalk2"]),
    ("gpt2-nl", "cpt"): ("gpt2", ["yhavinga/mc4_nl_cleaned"]),
    ("gpt2-nl", "sft"): ("BramVanroy/gpt2-cpt-dutch", ["BramVanroy/ultrachat_200k_dutch"]),
    ("gpt2-nl", "dpo"): ("BramVanroy/gpt2-sft-dutch", ["BramVanroy/ultra_feedback_dutch"]),
    # The sampling families: best-of-n SFT (Llama 2's rejection sampling) and RLHFlow's iterative DPO.
    ("best-of-n-sft", "sft"): ("HuggingFaceTB/SmolLM2-360M", ["HuggingFaceTB/smol-smoltalk"]),
    ("best-of-n-sft", "rm"): ("loubnabnl/smollm2-360M-sft", [UF]),
    ("best-of-n-sft", "sample"): ("loubnabnl/smollm2-360M-sft", [UF]),
    ("iterative-dpo", "sample"): ("RLHFlow/LLaMA3-SFT", ["RLHFlow/iterative-prompt-v1-iter1-20K"]),
    ("iterative-dpo", "dpo"): ("RLHFlow/LLaMA3-SFT", [UF]),
    # Online RL: open-r1's GRPO on competition maths.
    ("open-r1-math", "grpo"): ("Qwen/Qwen2.5-1.5B-Instruct", ["open-r1/OpenR1-Math-220k"]),
}
# The training recipes (--qlora reaches those; a sample recipe trains nothing).
TRAINING = sorted(key for key in LIBRARY if is_training(key[1]))
# Where the recipes the handbook does not have take their values, as their opening comments name it.
OTHER_SOURCES = {
    ("best-of-n-sft", "sample"): "Llama 2 paper (Touvron et al. 2023, arXiv 2307.09288), section 3.2.3",
    ("iterative-dpo", "sample"): "RLHFlow's Online-RLHF repository (github.com/RLHFlow/Online-RLHF)",
    ("iterative-dpo", "dpo"): "RLHFlow's Online-RLHF repository (github.com/RLHFlow/Online-RLHF)",
    ("open-r1-math", "grpo"): "open-r1's recipes/Qwen2.5-1.5B-Instruct/grpo/config_demo.yaml"
    " (github.com/huggingface/open-r1, commit 1416fa0cf21595d2083b399a2a0bbddd7f6e9563",
}


def _recipe(method, name):
    return resolve_recipe(method, name).recipe


def _distinct(paths):
    return list(dict.fromkeys(paths))


def test_the_library_is_complete():
    shipped = {(name, m) for name, entry in registry.discover().items() for m in entry.methods}
    demo = {("tiny-demo", kind) for kind in ("sft", "dpo", "rm", "sample", "grpo", "rloo", "eval")}
    assert set(LIBRARY) == shipped - demo


@pytest.mark.parametrize(("name", "method"), sorted(LIBRARY))
def test_every_recipe_dry_runs_with_its_real_model_and_data(cli, name, method):
    result = cli(method, "--recipe", name, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    model, datasets = LIBRARY[name, method]
    assert document["recipe_name"] == name
    assert document["recipe"]["model"]["name_or_path"] == model
    assert _distinct(d["path"] for d in document["recipe"]["data"]["datasets"]) == datasets
    assert document["recipe"]["training"]["output_dir"] == f"outputs/{name.replace(':', '-')}-{method}"
    # A native recipe needs no conversion; only a Liger kernel missing on this machine is noted.
    assert [n for n in document["notices"] if not n.endswith("a run on this machine refuses it")] == []


@pytest.mark.parametrize(("name", "method"), TRAINING)
def test_qlora_on_every_recipe_validates(cli, name, method):
    result = cli(method, "--recipe", name, "--qlora", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.stdout)["recipe"]
    assert recipe["quantization"]["load_in_4bit"] is True
    assert recipe["peft"] is not None
    assert (recipe["launch"]["gpus"], recipe["launch"]["nodes"]) == (1, 1)


@pytest.mark.parametrize(("name", "method"), sorted(LIBRARY))
def test_every_recipe_file_names_its_hardware_and_source(name, method):
    text = registry.discover()[name].files[method].read_text(encoding="utf-8")
    header = text.split("\ndescription:", 1)[0]
    assert f"alignkit {method} --recipe {name}" in header
    assert "GPU" in header, "the opening comment says what hardware the recipe was made for"
    assert "Values from " in header, "the opening comment names where the values come from"
    # The handbook has no SimPO or reward recipe; those cite the SimPO paper's config and TRL's reward example.
    if (name, method) in OTHER_SOURCES:
        assert OTHER_SOURCES[name, method] in " ".join(header.replace("#", " ").split())
    elif method not in ("simpo", "rm"):
        assert "Alignment Handbook recipe" in header, "the opening comment names the handbook file"
    recipe = _recipe(method, name)
    assert recipe.description
    assert recipe.model.attn_implementation == "auto"
    if is_training(method):  # a sample recipe publishes and logs nothing
        assert recipe.hub.push_to_hub is False and recipe.hub.hub_model_id
        assert recipe.logging.report_to == ["tensorboard"]


# ---- handbook values, spot-checked against the reference (exact numbers) ----


def test_zephyr_7b_beta_full():
    sft = _recipe("sft", "zephyr-7b-beta")
    t = sft.training
    assert (t.learning_rate, t.num_train_epochs, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (
        2e-5,
        1,
        16,
        1,
    )
    assert (sft.sft.max_length, sft.sft.packing, sft.sft.packing_strategy) == (2048, True, "wrapped")
    assert [(d.split, d.role) for d in sft.data.datasets] == [("train_sft", "train"), ("test_sft", "test")]
    assert (t.save_strategy, t.save_steps, t.save_total_limit, t.eval_strategy) == ("steps", 100, 1, "epoch")
    assert (sft.launch.profile, sft.launch.gpus, sft.launch.nodes) == ("zero3", 8, 1)
    dpo = _recipe("dpo", "zephyr-7b-beta")
    assert (dpo.dpo.beta, dpo.dpo.loss_type, dpo.dpo.max_length, dpo.dpo.max_prompt_length) == (
        0.01,
        "sigmoid",
        1024,
        512,
    )
    t = dpo.training
    assert (t.learning_rate, t.per_device_train_batch_size, t.gradient_accumulation_steps, t.optim) == (
        5e-7,
        8,
        2,
        "adamw_torch",
    )
    assert dpo.model.dtype == "float32", "the handbook's torch_dtype: null loads float32"


def test_zephyr_7b_beta_qlora_variant():
    sft = _recipe("sft", "zephyr-7b-beta:qlora")
    assert (sft.training.learning_rate, sft.training.per_device_train_batch_size) == (2e-4, 4)
    assert sft.training.gradient_accumulation_steps == 2
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (sft.peft.r, sft.peft.alpha, sft.peft.dropout, sft.peft.target_modules) == (16, 16, 0.05, projections)
    assert sft.quantization.load_in_4bit and not sft.quantization.bnb_4bit_use_double_quant
    assert (sft.launch.profile, sft.launch.gpus) == ("ddp", 1)
    dpo = _recipe("dpo", "zephyr-7b-beta:qlora")
    assert (dpo.peft.r, dpo.peft.alpha, dpo.peft.target_modules) == (128, 128, projections)
    assert (dpo.training.learning_rate, dpo.training.optim, dpo.training.gradient_accumulation_steps) == (
        5e-6,
        "paged_adamw_32bit",
        4,
    )
    assert dpo.model.merge_adapter is True, "the SFT adapter is merged before the DPO adapter is added"


def test_zephyr_141b_orpo_on_four_fsdp_nodes():
    orpo = _recipe("orpo", "zephyr-141b-a35b")
    t = orpo.training
    assert (orpo.orpo.beta, orpo.orpo.max_length, orpo.orpo.max_prompt_length) == (0.05, 2048, 1792)
    assert (t.learning_rate, t.num_train_epochs, t.lr_scheduler_type, t.warmup_steps, t.warmup_ratio) == (
        5e-6,
        3,
        "inverse_sqrt",
        100,
        0.0,
    )
    assert (t.optim, t.gradient_checkpointing_kwargs) == ("adamw_bnb_8bit", {"use_reentrant": True})
    assert (orpo.launch.profile, orpo.launch.gpus, orpo.launch.nodes) == ("fsdp", 8, 4)
    assert [d.role for d in orpo.data.datasets] == ["train"] and t.eval_strategy == "no"


def test_constitutional_ai_fixes_the_head_split_bug():
    anthropic = _recipe("sft", "constitutional-ai")
    assert [(d.path, d.split, d.role) for d in anthropic.data.datasets] == [
        ("HuggingFaceH4/cai-conversation-harmless", "train_sft", "train"),
        (UC, "train_sft", "train"),
        ("HuggingFaceH4/cai-conversation-harmless", "test_sft", "test"),
        (UC, "test_sft", "test"),
    ]
    assert (anthropic.training.per_device_train_batch_size, anthropic.training.gradient_accumulation_steps) == (8, 4)
    grok = _recipe("sft", "constitutional-ai:grok")
    assert [(d.path, d.weight) for d in grok.data.datasets if d.role == "train"] == [
        ("HuggingFaceH4/grok-conversation-harmless", 0.15),
        (UC, 1.0),
    ]
    dpo = _recipe("dpo", "constitutional-ai")
    t = dpo.training
    assert (dpo.dpo.beta, t.learning_rate, t.num_train_epochs, t.optim, t.lr_scheduler_type) == (
        0.1,
        5e-7,
        3,
        "rmsprop",
        "linear",
    )
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.eval_steps) == (2, 1, 1000)


def test_starchat2_and_smollm_mixtures():
    starchat = _recipe("sft", "starchat2-15b")
    assert [d.path for d in starchat.data.datasets if d.role == "train"] == STARCHAT_SFT
    assert [d.path for d in starchat.data.datasets if d.role == "test"] == STARCHAT_SFT
    assert (starchat.training.num_train_epochs, starchat.training.per_device_train_batch_size) == (3, 8)
    smollm = _recipe("sft", "smollm")
    assert {d.path: d.weight for d in smollm.data.datasets if d.role == "train"}[
        "HuggingFaceTB/OpenHermes-2.5-H4"
    ] == 0.001
    assert (smollm.training.learning_rate, smollm.model.tokenizer_name_or_path) == (
        1e-3,
        "HuggingFaceTB/SmolLM-360M-Instruct",
    )
    smollm2 = _recipe("sft", "smollm2")
    assert [(d.name, d.split) for d in smollm2.data.datasets] == [("all", "train"), ("all", "test")]
    assert (smollm2.sft.max_length, smollm2.training.learning_rate, smollm2.training.num_train_epochs) == (
        8192,
        3e-4,
        2,
    )
    smol = _recipe("sft", "smollm2:smol")
    assert smol.training.learning_rate == 1e-3
    assert (
        _recipe("dpo", "smollm2").training.num_train_epochs,
        _recipe("dpo", "smollm2:smol").training.num_train_epochs,
    ) == (3, 2)
    dpo = _recipe("dpo", "smollm2")
    assert (dpo.dpo.beta, dpo.training.learning_rate, dpo.hub.private) == (0.5, 1e-6, True)


def test_smollm3_stages():
    mid = _recipe("sft", "smollm3:mid")
    assert [(d.name, d.split) for d in mid.data.datasets] == [
        ("Mid", "Llama_Nemotron_Post_Training_Dataset_reasoning_r1"),
        ("Mid", "OpenThoughts3_1.2M"),
    ]
    assert (mid.sft.max_length, mid.sft.packing, mid.sft.packing_strategy, mid.sft.eos_token) == (
        32768,
        True,
        "bfd",
        "<|im_end|>",
    )
    assert (mid.training.warmup_ratio, mid.training.ddp_timeout, mid.training.save_steps) == (0.03, 14400, 0.05)
    sft = _recipe("sft", "smollm3")
    weights = {d.split: d.weight for d in sft.data.datasets}
    assert len(weights) == 25
    assert {k: v for k, v in weights.items() if v != 1.0} == {
        "smoltalk_smollm3_smol_magpie_ultra_no_think": 0.5,
        "OpenHermes_2.5_no_think": 0.5,
        "OpenThoughts3_1.2M_no_think_no_think": 0.4,
        "smoltalk_multilingual8_Qwen3_32B_think": 0.3,
        "OpenThoughts3_1.2M_think": 0.02,
    }
    assert all(d.columns == ["messages", "chat_template_kwargs"] for d in sft.data.datasets)
    assert (sft.sft.max_length, sft.sft.assistant_only_loss, sft.model.revision) == (65536, True, "it-mid-training")
    apo = _recipe("dpo", "smollm3")
    assert (apo.dpo.loss_type, apo.dpo.beta, apo.dpo.max_length, apo.dpo.padding_free) == (
        "apo_zero",
        0.05,
        24576,
        True,
    )
    for stage in (mid, sft, apo):
        t = stage.training
        assert (t.lr_scheduler_type, t.lr_scheduler_kwargs, t.max_grad_norm) == (
            "cosine_with_min_lr",
            {"min_lr_rate": 0.1},
            0.2,
        )
        assert not stage.model.trust_remote_code and t.use_liger_kernel  # SmolLM3 is native in transformers
        assert t.gradient_checkpointing_kwargs == {"use_reentrant": True}
    # The README's one-node commands: global batch 128 for mid and sft, 32 for APO, on 8 GPUs.
    assert [s.training.gradient_accumulation_steps * 8 for s in (mid, sft, apo)] == [128, 128, 32]


def test_gpt2_nl_chain():
    cpt = _recipe("cpt", "gpt2-nl")
    assert [(d.path, d.name, d.split) for d in cpt.data.datasets] == [("yhavinga/mc4_nl_cleaned", "tiny", "train")]
    assert (cpt.training.learning_rate, cpt.training.per_device_train_batch_size, cpt.cpt.max_length) == (
        2e-4,
        16,
        1024,
    )
    assert (cpt.launch.profile, cpt.launch.gpus) == ("ddp", 4)
    dpo = _recipe("dpo", "gpt2-nl")
    assert (dpo.dpo.beta, dpo.training.gradient_accumulation_steps, dpo.training.per_device_train_batch_size) == (
        0.1,
        8,
        8,
    )


# sha256 prefixes of the handbook's inline templates (v0.4 files), carried verbatim.
TEMPLATE_SHA = {
    "zephyr-7b-beta": "66291cf0045c2425",
    "zephyr-7b-beta:qlora": "66291cf0045c2425",
    "zephyr-141b-a35b": "66291cf0045c2425",
    "constitutional-ai": "66291cf0045c2425",
    "gpt2-nl": "66291cf0045c2425",
    "starchat2-15b": "58c1a1f04baa7ada",
    "smollm": "153280e3ff55d19d",
    "smollm2": "872be49dbb638044",
    "smollm2:smol": "872be49dbb638044",
    "smollm3:mid": "500030d1ecd20570",
    "smollm3": "af3a186af912d9e1",
}


@pytest.mark.parametrize("name", sorted(TEMPLATE_SHA))
def test_chat_templates_are_the_handbooks(name):
    entry = registry.discover()[name]
    method = "orpo" if "orpo" in entry.files else "sft"
    template = _recipe(method, name).data.chat_template
    assert hashlib.sha256(template.encode()).hexdigest()[:16] == TEMPLATE_SHA[name]


SHARED = shared_dir()
HANDBOOK = {
    ("zephyr-7b-beta", "sft"): "zephyr-7b-beta/sft/config_full.yaml",
    ("zephyr-7b-beta:qlora", "sft"): "zephyr-7b-beta/sft/config_qlora.yaml",
    ("zephyr-7b-beta", "dpo"): "zephyr-7b-beta/dpo/config_full.yaml",
    ("zephyr-7b-beta:qlora", "dpo"): "zephyr-7b-beta/dpo/config_qlora.yaml",
    ("zephyr-7b-gemma", "sft"): "zephyr-7b-gemma/sft/config_full.yaml",
    ("zephyr-7b-gemma", "dpo"): "zephyr-7b-gemma/dpo/config_full.yaml",
    ("zephyr-141b-a35b", "orpo"): "zephyr-141b-A35b/orpo/config_full.yaml",
    ("starchat2-15b", "sft"): "starchat2-15b/sft/config_v0.1.yaml",
    ("starchat2-15b", "dpo"): "starchat2-15b/dpo/config_v0.1.yaml",
    ("constitutional-ai", "sft"): "constitutional-ai/sft/config_anthropic.yaml",
    ("constitutional-ai:grok", "sft"): "constitutional-ai/sft/config_grok.yaml",
    ("constitutional-ai", "dpo"): "constitutional-ai/dpo/config_anthropic.yaml",
    ("pref-align-scan", "dpo"): "pref_align_scan/dpo/config_zephyr.yaml",
    ("pref-align-scan:openhermes", "dpo"): "pref_align_scan/dpo/config_openhermes.yaml",
    ("smollm", "sft"): "smollm/sft/config.yaml",
    ("smollm2", "sft"): "smollm2/sft/config.yaml",
    ("smollm2:smol", "sft"): "smollm2/sft/config_smol.yaml",
    ("smollm2", "dpo"): "smollm2/dpo/config.yaml",
    ("smollm2:smol", "dpo"): "smollm2/dpo/config_smol.yaml",
    ("gpt2-nl", "cpt"): "gpt2-nl/cpt/config_full.yaml",
    ("gpt2-nl", "sft"): "gpt2-nl/sft/config_full.yaml",
    ("gpt2-nl", "dpo"): "gpt2-nl/dpo/config_full.yaml",
    ("smollm3:mid", "sft"): "smollm3/sft/mid.yaml",
    ("smollm3", "sft"): "smollm3/sft/sft.yaml",
    ("smollm3", "dpo"): "smollm3/dpo/apo.yaml",
}
# Fields where an alignkit recipe deliberately differs from the converted handbook file, each explained in the
# recipe's comments: the launch layout from the READMEs, the dataset's own test splits instead of a re-split,
# packing as the old SFT script forced it, float32 for an unset torch_dtype, the new handbook's templates on
# the old Instruct tokenizers, the merged SFT adapter, SmolLM3's one-node batch, repository names and no
# remote code.
ALWAYS = {"description", "launch.profile", "launch.gpus", "launch.nodes", "model.attn_implementation"}
ALWAYS |= {"training.output_dir", "training.overwrite_output_dir", "logging.report_to", "hub.push_to_hub"}
ALWAYS |= {"data.datasets", "data.test_split_size", "data.seed"}
PACKED = {"sft.packing", "sft.packing_strategy"}
FLOAT32 = {"model.dtype"}
# SmolLM3 is native in transformers, so its recipes run no code from the model repository.
SMOLLM3 = {"training.gradient_accumulation_steps", "hub.hub_model_id", "model.trust_remote_code"}
DELIBERATE = {
    ("zephyr-7b-beta", "sft"): PACKED,
    ("zephyr-7b-beta:qlora", "sft"): PACKED | {"quantization.bnb_4bit_compute_dtype"},
    ("zephyr-7b-beta", "dpo"): FLOAT32,
    ("zephyr-7b-beta:qlora", "dpo"): {"model.merge_adapter", "quantization.bnb_4bit_compute_dtype"},
    ("zephyr-7b-gemma", "sft"): PACKED,
    ("starchat2-15b", "sft"): PACKED,
    ("constitutional-ai", "sft"): PACKED,
    ("constitutional-ai:grok", "sft"): PACKED,
    ("constitutional-ai", "dpo"): FLOAT32,
    ("pref-align-scan", "dpo"): FLOAT32,
    ("pref-align-scan:openhermes", "dpo"): FLOAT32,
    ("smollm", "sft"): PACKED | {"data.chat_template"},
    ("smollm2", "sft"): PACKED | {"data.chat_template"},
    ("smollm2:smol", "sft"): PACKED | {"data.chat_template"},
    ("gpt2-nl", "sft"): PACKED,
    ("smollm3:mid", "sft"): SMOLLM3 | {"training.extra"},
    ("smollm3", "sft"): SMOLLM3 | {"training.extra"},
    ("smollm3", "dpo"): SMOLLM3,
}


def _flat(document, prefix=""):
    out = {}
    for key, value in document.items():
        if isinstance(value, dict) and key not in ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs", "extra"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.skipif(SHARED is None, reason="needs ../shared/reference/handbook-recipes")
@pytest.mark.parametrize(("name", "method"), sorted(HANDBOOK))
def test_values_match_the_handbook_file(name, method):
    base = SHARED / "reference" / "handbook-recipes"
    version = "v0.4" if name.startswith("smollm3") else "v0.3"  # the versions the published models came from
    theirs = _flat(resolve_recipe(method, str(base / version / HANDBOOK[name, method])).recipe.model_dump(mode="json"))
    mine = _flat(_recipe(method, name).model_dump(mode="json"))
    differ = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
    assert differ - ALWAYS - DELIBERATE.get((name, method), set()) == set()
    # The training sources: the same datasets, configurations, splits and weights.
    train = [(d["path"], d["name"], d["split"], d["weight"]) for d in mine["data.datasets"] if d["role"] == "train"]
    expected = [
        (d["path"], d["name"], d["split"], d["weight"]) for d in theirs["data.datasets"] if d["role"] == "train"
    ]
    assert train == [(p, n, s, w) for p, n, s, w in expected if "test" not in s]


# ---- variants, listing, copying ----


def test_variant_files_and_names():
    entries = registry.discover()
    assert entries["zephyr-7b-beta:qlora"].files["sft"].name == "sft.qlora.yaml"
    assert entries["zephyr-7b-beta:qlora"].methods == ["sft", "dpo"]
    assert entries["smollm3:mid"].methods == ["sft"]
    assert entries["constitutional-ai:grok"].methods == ["sft"]
    assert "constitutional-ai:scan" not in entries and "pref-align-scan:scan" not in entries


def test_a_variant_without_a_stage_says_so(cli):
    result = cli("dpo", "--recipe", "constitutional-ai:grok", "--dry-run")
    assert result.exit_code == 2
    assert "recipe 'constitutional-ai:grok' has no dpo stage; it has sft" in result.stderr


def test_recipes_list_shows_every_recipe_and_variant(cli):
    result = cli("recipes", "list", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {name for name, _ in LIBRARY} <= rows.keys()
    assert (rows["zephyr-141b-a35b"]["gpus"], rows["zephyr-141b-a35b"]["nodes"]) == (32, 4)
    assert (rows["zephyr-7b-beta:qlora"]["profile"], rows["zephyr-7b-beta:qlora"]["gpus"]) == ("ddp", 1)
    assert rows["smollm2:smol"]["base_model"] == "HuggingFaceTB/SmolLM2-360M"
    assert rows["gpt2-nl"]["methods"] == ["cpt", "sft", "dpo"]
    table = cli("recipes", "list", env={"COLUMNS": "220"})
    assert table.exit_code == 0
    for line_start in ("│ zephyr-141b-a35b ", "│ smollm3:mid "):
        line = next(line for line in table.stdout.splitlines() if line.startswith(line_start))
        assert "4x8" in line or "zero3" in line


def test_recipes_cp_copies_and_prints_the_command(cli, tmp_path):
    dest = tmp_path / "mine"
    result = cli("recipes", "cp", "zephyr-7b-beta:qlora", dest)
    assert result.exit_code == 0, result.output
    entry = registry.discover()["zephyr-7b-beta:qlora"]
    for method in ("sft", "dpo"):
        assert (dest / f"{method}.yaml").read_bytes() == entry.files[method].read_bytes()
        assert f"alignkit {method} --recipe {dest / f'{method}.yaml'}" in result.stdout
    dry = cli("sft", "--recipe", dest / "sft.yaml", "--dry-run", "--json")
    assert dry.exit_code == 0 and json.loads(dry.stdout)["recipe"]["peft"]["r"] == 16


def test_recipes_cp_one_method_into_a_file(cli, tmp_path):
    dest = tmp_path / "my_apo.yaml"
    result = cli("recipes", "cp", "smollm3", dest, "--method", "dpo")
    assert result.exit_code == 0, result.output
    assert "apo_zero" in dest.read_text()
    assert list(tmp_path.iterdir()) == [dest]


def test_recipes_cp_refuses_to_overwrite(cli, tmp_path):
    dest = tmp_path / "sft.yaml"
    dest.write_text("mine\n")
    result = cli("recipes", "cp", "smollm", dest)
    assert result.exit_code == 2
    assert f"error: {dest}: already exists; not overwriting it" in result.stderr
    assert dest.read_text() == "mine\n"
    # A folder copy checks every file before writing any.
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "dpo.yaml").write_text("mine\n")
    result = cli("recipes", "cp", "zephyr-7b-beta", tmp_path / "both")
    assert result.exit_code == 2
    assert not (tmp_path / "both" / "sft.yaml").exists()


def test_an_unknown_name_reads_the_same_in_every_command(cli, tmp_path):
    tail = "unknown recipe 'smolm'; did you mean smollm? (see `alignkit recipes list`"
    cases = {
        ("recipes", "cp", "smolm", tmp_path / "x"): f"error: alignkit recipes cp: {tail})",
        ("run", "--recipe", "smolm", "--dry-run"): f"error: --recipe: {tail})",
        ("sft", "--recipe", "smolm", "--dry-run"): f"error: --recipe: {tail}; a path must end in .yaml)",
        ("recipes", "show", "smolm", "--method", "sft"): f"error: --recipe: {tail}; a path must end in .yaml)",
    }
    for args, message in cases.items():
        result = cli(*args)
        assert (result.exit_code, result.stderr.strip()) == (2, message), args


def test_recipes_cp_errors(cli, tmp_path):
    several = cli("recipes", "cp", "zephyr-7b-gemma", tmp_path / "one.yaml")
    assert several.exit_code == 2
    assert "has 2 stages (sft, dpo); give --method" in several.stderr
    unknown = cli("recipes", "cp", "zephyr-7b-bta", tmp_path / "x")
    assert unknown.exit_code == 2 and "did you mean zephyr-7b-beta" in unknown.stderr
    missing = cli("recipes", "cp", "smollm", tmp_path / "x", "--method", "dpo")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == "error: --method: recipe 'smollm' has no dpo stage; it has sft"
    assert not (tmp_path / "x").exists()


# ---- the preference-alignment scan ----


def test_scan_expands_to_the_handbook_grid():
    runs = scan.expand_scan(scan.load_scan(scan.scan_file("pref-align-scan")))
    assert len(runs) == 2 * (2 + 1) * 10
    assert {r.recipe for r in runs} == {"pref-align-scan", "pref-align-scan:openhermes"}
    # DPO and IPO through DPOTrainer, KTO through its own trainer (no bco_pair stand-in any more)
    assert [r.method for r in runs] == ["dpo"] * 40 + ["kto"] * 20
    assert {r.overrides[0] for r in runs if r.method == "dpo"} == {"dpo.loss_type=sigmoid", "dpo.loss_type=ipo"}
    first = runs[0]
    assert first.overrides == ("dpo.loss_type=sigmoid", "dpo.beta=0.01", "hub.revision=sigmoid-0.01")
    assert first.output_dir == "outputs/pref-align-scan-sigmoid-beta-0.01"
    assert runs[39].command == (
        "alignkit dpo --recipe pref-align-scan:openhermes --set dpo.loss_type=ipo --set dpo.beta=0.9"
        " --set hub.revision=ipo-0.9 --output-dir outputs/pref-align-scan-openhermes-ipo-beta-0.9"
    )
    assert runs[-1].command == (
        "alignkit kto --recipe pref-align-scan:openhermes --set kto.beta=0.9 --set hub.revision=kto-0.9"
        " --output-dir outputs/pref-align-scan-openhermes-kto-beta-0.9"
    )
    assert len({r.output_dir for r in runs}) == len(runs)


def test_every_scan_run_resolves():
    for run in scan.expand_scan(scan.load_scan(scan.scan_file("pref-align-scan"))):
        recipe = resolve_recipe(run.method, run.recipe, overrides=run.overrides, output_dir=run.output_dir).recipe
        settings = dict(o.split("=") for o in run.overrides)
        beta = float(settings[f"{run.method}.beta"])
        loss = settings.get("dpo.loss_type", "kto")
        assert (recipe.section.loss_type, recipe.section.beta, recipe.hub.revision) == (loss, beta, f"{loss}-{beta:g}")


def test_kto_pair_is_gone_from_trl(cli):
    result = cli("dpo", "--recipe", "pref-align-scan", "--set", "dpo.loss_type=kto_pair", "--dry-run")
    assert result.exit_code == 2
    assert "dpo.loss_type" in result.stderr


def test_a_bad_scan_file_is_refused(tmp_path):
    path = tmp_path / "scan.yaml"
    path.write_text("method: dpo\nrecipes: [smollm]\ngrid: {dpo.beta: []}\noutput_dir: x\n")
    with pytest.raises(UserError, match=r"grid axes without values: dpo\.beta"):
        scan.load_scan(path)
    path.write_text("method: dpo\nrecipes: [smollm]\ngrid: {dpo.beta: [1]}\noutput_dir: 'o/{nope}'\n")
    with pytest.raises(UserError, match="unknown placeholder"):
        scan.expand_scan(scan.load_scan(path))


def test_scan_points_sharing_a_folder_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "scan.yaml"
    path.write_text("method: dpo\nrecipes: [smollm2]\ngrid: {dpo.beta: [0.1, 0.2]}\noutput_dir: 'o/{dpo.beta}/model'\n")
    monkeypatch.setattr(scan, "scan_file", lambda name: path)
    assert [str(p.output_dir) for p in scan.plan_scan("smollm2:scan")[1]] == ["o/0.1/model", "o/0.2/model"]
    with pytest.raises(UserError) as caught:
        scan.plan_scan("smollm2:scan", output_root=tmp_path / "runs")
    assert str(caught.value) == (
        f"--output-dir: points 1 and 2 would both write to {tmp_path / 'runs' / 'model'}; give the scan's points"
        " distinct folder names"
    )


# ---- pipelines ----


def test_zephyr_pipeline_wires_dpo_to_the_sft_output():
    plan = spec.plan_pipeline("zephyr-7b-beta")
    assert [(s.name, s.method, s.recipe_name, s.from_stage) for s in plan] == [
        ("sft", "sft", "zephyr-7b-beta", None),
        ("dpo", "dpo", "zephyr-7b-beta", "sft"),
    ]
    assert plan[0].model == "mistralai/Mistral-7B-v0.1"
    assert plan[1].model == "outputs/zephyr-7b-beta-sft" == str(plan[0].output_dir)
    assert plan[1].resolved.recipe.dpo.beta == 0.01, "everything else is the dpo recipe's"


def test_pipeline_under_a_variant():
    qlora = spec.plan_pipeline("zephyr-7b-beta:qlora")
    assert [s.resolved.source.name for s in qlora] == ["sft.qlora.yaml", "dpo.qlora.yaml"]
    assert qlora[1].model == "outputs/zephyr-7b-beta-qlora-sft"
    grok = spec.plan_pipeline("constitutional-ai:grok")
    assert [s.recipe_name for s in grok] == ["constitutional-ai:grok", "constitutional-ai"]
    assert str(grok[1].output_dir) == "outputs/constitutional-ai-grok-dpo", "never the base pipeline's folder"


def test_smollm3_pipeline_pins_its_stages(tmp_path):
    plan = spec.plan_pipeline("smollm3", output_root=tmp_path)
    assert [(s.name, s.recipe_name, s.method) for s in plan] == [
        ("mid", "smollm3:mid", "sft"),
        ("sft", "smollm3", "sft"),
        ("apo", "smollm3", "dpo"),
    ]
    assert [s.output_dir for s in plan] == [tmp_path / "mid", tmp_path / "sft", tmp_path / "apo"]
    assert plan[1].model == str(tmp_path / "mid") and plan[1].resolved.recipe.model.revision == "main"
    assert plan[2].model == str(tmp_path / "sft")


def test_pipeline_overrides(tmp_path):
    plan = spec.plan_pipeline(
        "zephyr-7b-beta",
        overrides=["model.name_or_path=tiny", "dpo.beta=0.2", "sft:training.max_steps=3", "dpo:model.dtype=bf16"],
        output_root=tmp_path,
    )
    assert plan[0].model == "tiny", "a global model swap reaches the first stage"
    assert plan[1].model == str(tmp_path / "sft"), "later stages still start from the stage before"
    assert plan[1].resolved.recipe.dpo.beta == 0.2
    assert (plan[0].resolved.recipe.training.max_steps, plan[1].resolved.recipe.training.max_steps) == (3, -1)
    assert plan[1].resolved.recipe.model.dtype == "bfloat16"
    pinned = spec.plan_pipeline("zephyr-7b-beta", overrides=["dpo:model.name_or_path=elsewhere"])
    assert pinned[1].model == "elsewhere"
    with pytest.raises(UserError, match="no stage 'orpo' in this pipeline; stages: sft, dpo"):
        spec.plan_pipeline("zephyr-7b-beta", overrides=["orpo:orpo.beta=0.1"])


def test_finished_stages_are_skipped(tmp_path):
    def run_file(stage, text):
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / "alignkit_run.json").write_text(text)

    assert spec.next_stage(spec.plan_pipeline("gpt2-nl", output_root=tmp_path)).name == "cpt"
    run_file("cpt", json.dumps({"method": "cpt", "finished": True}))
    run_file("sft", json.dumps({"method": "sft", "finished": False}))
    plan = spec.plan_pipeline("gpt2-nl", output_root=tmp_path)
    assert [s.finished for s in plan] == [True, False, False]
    assert spec.next_stage(plan).name == "sft"
    run_file("sft", '{"finished": tr')  # half-written: not finished
    assert spec.next_stage(spec.plan_pipeline("gpt2-nl", output_root=tmp_path)).name == "sft"
    run_file("sft", json.dumps({"finished": True}))
    run_file("dpo", json.dumps({"finished": "yes"}))  # only a real true counts
    assert spec.next_stage(spec.plan_pipeline("gpt2-nl", output_root=tmp_path)).name == "dpo"
    run_file("dpo", json.dumps({"finished": True}))
    assert spec.next_stage(spec.plan_pipeline("gpt2-nl", output_root=tmp_path)) is None


def test_every_pipeline_resolves():
    names = [name for name in registry.discover() if ":" not in name and spec.has_pipeline(name)]
    assert names == [
        "best-of-n-sft",
        "constitutional-ai",
        "gpt2-nl",
        "iterative-dpo",
        "smollm2",
        "smollm3",
        "starchat2-15b",
        "tiny-demo",
        "zephyr-7b-beta",
        "zephyr-7b-gemma",
    ]
    for name in names:
        plan = spec.plan_pipeline(name, qlora=True)
        assert all(s.resolved.recipe.quantization.load_in_4bit for s in plan if is_training(s.method))


# ---- the sampling families ----


def test_best_of_n_sft_pipeline_samples_the_sft_model_and_fine_tunes_it_on_the_best_samples():
    plan = spec.plan_pipeline("best-of-n-sft")
    assert [(s.name, s.method, s.recipe_name, s.from_stage, s.sources) for s in plan] == [
        ("sft", "sft", "best-of-n-sft", None, ()),
        ("rm", "rm", "best-of-n-sft", "sft", ("sft",)),
        ("sample", "sample", "best-of-n-sft", "sft", ("sft", "rm")),
        ("sft-bon", "sft", "best-of-n-sft", "sft", ("sft", "sample")),
    ]
    sft, rm, sample, bon = plan
    assert [str(s.output_dir) for s in plan] == [
        "outputs/best-of-n-sft-sft",
        "outputs/best-of-n-sft-rm",
        "outputs/best-of-n-sft-sample",
        "outputs/best-of-n-sft-sft-bon",
    ], "sft-bon has a folder of its own, not the sft stage's"
    assert sft.model == "HuggingFaceTB/SmolLM2-360M"
    assert rm.model == sample.model == bon.model == str(sft.output_dir)
    # The sample stage scores with the rm stage's output; the best candidate per prompt is kept as an SFT row.
    section = sample.resolved.recipe.sample
    assert [scorer.path for scorer in section.scorers] == [str(rm.output_dir)]
    assert (section.num_samples, section.temperature, section.select) == (10, 1.2, "best")
    assert [(d.path, d.split, d.role) for d in sample.resolved.recipe.data.datasets] == [(UF, "train_gen", "train")]
    assert sample.resolved.recipe.data.chat_template == sft.resolved.recipe.data.chat_template
    # sft-bon trains on the selected rows (smol-smoltalk's test split still evaluates) at a tenth of the rate.
    data = bon.resolved.recipe.data.datasets
    assert [(d.path, d.split, d.role) for d in data] == [
        (str(Path.cwd() / sample.output_dir / "selected.jsonl"), "train", "train"),
        ("HuggingFaceTB/smol-smoltalk", "test", "test"),
    ]
    assert (sft.resolved.recipe.training.learning_rate, bon.resolved.recipe.training.learning_rate) == (1e-3, 1e-4)
    assert bon.resolved.recipe.training.num_train_epochs == sft.resolved.recipe.training.num_train_epochs == 2
    # One GPU throughout: the handbook's smol SFT batch of 128 from accumulation alone.
    t = sft.resolved.recipe.training
    assert (t.per_device_train_batch_size * t.gradient_accumulation_steps, sft.resolved.recipe.launch.gpus) == (128, 1)
    assert rm.resolved.recipe.launch.gpus == sample.resolved.recipe.launch.gpus == 1


def test_iterative_dpo_runs_three_rounds_each_from_the_round_before():
    plan = spec.plan_pipeline("iterative-dpo")
    assert [(s.name, s.method, s.from_stage) for s in plan] == [
        ("sample-1", "sample", None),
        ("dpo-1", "dpo", None),
        ("sample-2", "sample", "dpo-1"),
        ("dpo-2", "dpo", "dpo-1"),
        ("sample-3", "sample", "dpo-2"),
        ("dpo-3", "dpo", "dpo-2"),
    ]
    stages = {s.name: s for s in plan}
    # Round 1 samples and trains the recipes' own model (start: {dpo: null}); round r the output of dpo-(r-1).
    assert stages["sample-1"].model == stages["dpo-1"].model == "RLHFlow/LLaMA3-SFT"
    for r in (2, 3):
        previous = str(stages[f"dpo-{r - 1}"].output_dir)
        assert stages[f"sample-{r}"].model == stages[f"dpo-{r}"].model == previous
    for r in (1, 2, 3):
        sample, dpo = stages[f"sample-{r}"], stages[f"dpo-{r}"]
        assert str(sample.output_dir) == f"outputs/iterative-dpo-sample-{r}"
        assert str(dpo.output_dir) == f"outputs/iterative-dpo-dpo-{r}"
        assert [(d.path, d.split) for d in dpo.resolved.recipe.data.datasets] == [
            (str(Path.cwd() / sample.output_dir / "selected.jsonl"), "train")
        ], "each round trains only on its own pairs, as RLHFlow's train_dir"
        assert sample.resolved.recipe.data.datasets[0].path == f"RLHFlow/iterative-prompt-v1-iter{r}-20K"
    # RLHFlow's values: K = 4 at temperature 1.0, best vs worst, the FsfairX reward model; DPO at 5e-7.
    section = stages["sample-2"].resolved.recipe.sample
    assert (section.num_samples, section.temperature, section.top_p, section.max_new_tokens) == (4, 1.0, 1.0, 2048)
    assert (section.select, section.prompt_column, section.seed) == ("best_worst", "context_messages", 42)
    assert [scorer.path for scorer in section.scorers] == ["sfairXC/FsfairX-LLaMA3-RM-v0.1"]
    dpo = stages["dpo-2"].resolved.recipe
    t = dpo.training
    assert (t.learning_rate, t.num_train_epochs, t.lr_scheduler_type, t.warmup_ratio) == (5e-7, 2, "cosine", 0.0)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, dpo.launch.gpus) == (1, 16, 8)
    assert (dpo.dpo.loss_type, dpo.dpo.beta, dpo.dpo.max_length, dpo.dpo.max_prompt_length) == (
        "sigmoid",
        0.1,
        2048,
        1000,
    )
    assert (dpo.dpo.label_smoothing, dpo.launch.profile) == (0.0, "zero2")


def test_iterative_dpo_rounds_read_their_own_prompt_sets():
    prompts = "RLHFlow/iterative-prompt-v1-iter{}-20K"
    plan = spec.plan_pipeline("iterative-dpo")
    assert [s.resolved.recipe.data.datasets[0].path for s in plan if s.method == "sample"] == [
        prompts.format(r) for r in (1, 2, 3)
    ]
    plan = spec.plan_pipeline("iterative-dpo", overrides=["sample-2:data.datasets.0.path=my/prompts"])
    assert [s.resolved.recipe.data.datasets[0].path for s in plan if s.method == "sample"] == [
        prompts.format(1),
        "my/prompts",
        prompts.format(3),
    ]
    # A block-wide override reaches every round.
    plan = spec.plan_pipeline("iterative-dpo", overrides=["sample:sample.num_samples=8"])
    assert [s.resolved.recipe.sample.num_samples for s in plan if s.method == "sample"] == [8, 8, 8]


def test_the_sampling_families_dry_run(cli):
    for name, stages in (("best-of-n-sft", 4), ("iterative-dpo", 6)):
        result = cli("run", "--recipe", name, "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["stages"]) == stages
    result = cli("sample", "--recipe", "iterative-dpo", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["candidates_per_prompt"], document["select"]) == (4, "best_worst")
    assert document["prompt_sources"] == ["RLHFlow/iterative-prompt-v1-iter1-20K"]


# ---- open-r1's GRPO ----

# What open-r1's format and tag_count rewards read in a completion (src/open_r1/rewards.py): the whole layout,
# matched from the start with DOTALL and MULTILINE, and four tags each counted with str.count.
OPEN_R1_LAYOUT = r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$"
OPEN_R1_TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")
# Completions near the edges: the exact layout, text after it, no newlines, a second think block, text before
# it, a closing tag written twice (the copies overlap by their newline, which str.count does not count twice).
COMPLETIONS = [
    "<think>\nadd them\n</think>\n<answer>\n5\n</answer>",
    "<think>\nadd\n</think>\n<answer>\n5\n</answer>\nanything after",
    "<think>add</think><answer>5</answer>",
    "<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n5\n</answer>",
    "Sure. <think>\nadd\n</think>\n<answer>\n5\n</answer>",
    "<think>\nadd\n</think>\n</think>\n<answer>\n5\n</answer>",
    "<answer>\n5\n</answer>",
    "",
]


def test_open_r1_math_takes_open_r1_s_values():
    recipe = _recipe("grpo", "open-r1-math")
    t, section = recipe.training, recipe.grpo
    assert (t.learning_rate, t.lr_scheduler_type, t.warmup_ratio, t.num_train_epochs) == (2e-5, "cosine", 0.1, 1)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.seed) == (16, 4, 42)
    assert (t.mixed_precision, t.gradient_checkpointing, t.save_strategy, t.save_total_limit) == (
        "bf16",
        True,
        "epoch",
        1,
    )
    assert t.extra == {"log_completions": True}
    assert (section.num_generations, section.max_completion_length, section.temperature) == (16, 1024, 1.0)
    # TRL 0.18.0's defaults, which open-r1's config leaves in place (TRL 1.16's are beta 0 and dapo).
    assert (section.beta, section.loss_type, section.scale_rewards, section.epsilon) == (0.04, "bnpo", "group", 0.2)
    assert [d.path for d in recipe.data.datasets] == ["open-r1/OpenR1-Math-220k"]
    assert recipe.data.system_prompt.endswith("format: <think>\n...\n</think>\n<answer>\n...\n</answer>")
    assert (recipe.model.dtype, recipe.launch.profile, recipe.launch.gpus) == ("bfloat16", "zero2", 8)
    assert (recipe.hub.hub_model_id, recipe.hub.strategy) == ("Qwen2.5-1.5B-Open-R1-GRPO", "every_save")
    assert [(spec.kind, spec.weight) for spec in section.rewards] == [("math", 1), ("regex", 1)] + [("regex", 0.25)] * 4
    assert section.rewards[0].column == "solution"
    # --qlora on one GPU keeps the group of 16 whole.
    qlora = resolve_recipe("grpo", "open-r1-math", qlora=True).recipe.training
    assert (qlora.per_device_train_batch_size, qlora.gradient_accumulation_steps) == (16, 1)


def test_open_r1_math_rewards_score_format_and_tags_as_open_r1_does():
    from alignkit.scoring.build import build_scorers

    scorers = build_scorers(_recipe("grpo", "open-r1-math").grpo.rewards[1:])
    rows = [{}] * len(COMPLETIONS)
    ours = [scorer.score([[]] * len(COMPLETIONS), COMPLETIONS, rows) for scorer in scorers]
    layout = [float(re.match(OPEN_R1_LAYOUT, text, re.DOTALL | re.MULTILINE) is not None) for text in COMPLETIONS]
    tags = [sum(0.25 for tag in OPEN_R1_TAGS if text.count(tag) == 1) for text in COMPLETIONS]
    assert ours[0] == layout == [1, 1, 0, 1, 0, 1, 0, 0]
    assert [
        sum(s.weight * values[i] for s, values in zip(scorers[1:], ours[1:], strict=True)) for i in range(8)
    ] == tags
    assert tags == [1, 1, 0, 0.5, 1, 1, 0.25, 0]


def test_pipeline_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"recipe 'smollm' has no pipeline \(pipeline.yaml\); run its stage directly"):
        spec.load_pipeline("smollm")
    with pytest.raises(UserError, match="unknown recipe 'zephyr'"):
        spec.load_pipeline("zephyr")
    with pytest.raises(ValueError, match="stage 'dpo' starts from 'sft', which is not an earlier stage"):
        spec.PipelineSpec.model_validate(
            {"stages": [{"name": "dpo", "method": "dpo", "from": "sft"}, {"name": "sft", "method": "sft"}]}
        )
    with pytest.raises(ValueError, match="stage name 'sft' is used twice"):
        spec.PipelineSpec.model_validate({"stages": [{"name": "sft", "method": "sft"}] * 2})
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        spec.PipelineSpec.model_validate({"stages": [{"name": "rl", "method": "ppo"}]})


def test_library_and_pipeline_stay_light():
    heavy = "{'torch', 'transformers', 'trl', 'datasets', 'accelerate', 'peft', 'deepspeed', 'bitsandbytes'}"
    code = (
        "import sys\nfrom alignkit.pipeline import scan, spec\n"
        "spec.plan_pipeline('smollm3', qlora=True)\n"
        "scan.expand_scan(scan.load_scan(scan.scan_file('pref-align-scan')))\n"
        f"print(sorted({heavy} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
