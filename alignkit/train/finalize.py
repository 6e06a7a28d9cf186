"""What a finished run leaves behind: weights (safetensors), tokenizer, state, metrics, card, curves.

Saving the weights involves every rank (ZeRO-3 and FSDP gather shards); everything else is written by the
main process only. The run is marked finished last, so an interrupted finalisation is redone on the next
run rather than mistaken for a finished one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignkit.hardware import detect
from alignkit.launch.lock import LOCK_FILE
from alignkit.run_record import RunRecord
from alignkit.train.card import render_card
from alignkit.train.curves import plot_curves
from alignkit.train.factory import BuiltTrainer
from alignkit.train.modeling import resolve_dtype


def use_full_state_dict(trainer: Any) -> bool:
    """Before the final save under FSDP: gather one full state dict (rank 0, on the CPU) instead of shards.

    Checkpoints during training stay sharded (fast, resumable); the final model must load with
    `from_pretrained`. Call on every rank, then `trainer.save_model()`. Returns whether anything changed.
    """
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
    if plugin is None:
        return False
    plugin.set_state_dict_type("FULL_STATE_DICT")
    return True


def drop_tied_copies(state_dict: dict[str, Any], model: Any) -> list[str]:
    """Remove from a gathered state dict the weights the model ties to another (lm_head to the embeddings).

    FSDP's full state dict gathers each parameter into its own CPU tensor, so transformers, which spots tied
    weights by shared storage, would write the tied copy too (a second vocab x hidden matrix on disk). A copy
    is dropped only where it equals its source; one that differs stays, and the config stops tying it, so
    what was trained is what loads. Returns the names dropped.
    """
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    tied = expand(all_submodels=True) if expand is not None else {}
    dropped = []
    for copy, source in tied.items():
        if copy not in state_dict or source not in state_dict:
            continue
        if state_dict[copy].equal(state_dict[source]):
            del state_dict[copy]
            dropped.append(copy)
        else:
            model.config.get_text_config().tie_word_embeddings = False
    return dropped


def _without_tied_copies(trainer: Any) -> None:
    """Make the trainer's next save drop tied copies from the state dict it is handed (see drop_tied_copies)."""
    save = trainer._save

    def save_without_copies(output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is not None:
            drop_tied_copies(state_dict, trainer.accelerator.unwrap_model(trainer.model))
        save(output_dir, state_dict=state_dict)

    trainer._save = save_without_copies


def save_weights(built: BuiltTrainer, output_dir: Path) -> None:
    """Save the model or adapter (all ranks take part), with eos/pad and use_cache set for inference."""
    model = built.trainer.model
    tokenizer = built.tokenizer
    unwrapped = getattr(model, "get_base_model", lambda: model)()
    for config in (getattr(unwrapped, "config", None), getattr(unwrapped, "generation_config", None)):
        if config is None:
            continue
        config.eos_token_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
    if getattr(unwrapped, "config", None) is not None:
        unwrapped.config.use_cache = True  # turned off for gradient checkpointing while training
    # Under FSDP the final save gathers one full state dict, so the result loads with from_pretrained.
    if use_full_state_dict(built.trainer):
        _without_tied_copies(built.trainer)
    built.trainer.save_model(str(output_dir))


def finalize_main(
    built: BuiltTrainer,
    run: RunRecord,
    *,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Main-process finalisation; returns the metrics written."""
    trainer, recipe, output_dir = built.trainer, built.recipe, run.output_dir
    built.tokenizer.save_pretrained(output_dir)
    trainer.save_state()
    clean = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    trainer.save_metrics("all", clean, combined=False)
    if recipe.peft is not None and recipe.peft.save_merged:
        _save_merged(built, run)
    plot_curves(
        trainer.state.log_history,
        output_dir / "training_curves.png",
        f"{run.name}: {run.method}",
        panels=recipe.method.curve_panels,
    )
    card = render_card(
        recipe,
        name=run.recipe.hub.hub_model_id or run.output_dir.name,
        base_model=built.loaded.base_model,
        metrics=clean,
        command=run.info.get("command", []),
        world_size=int(run.info.get("plan", {}).get("world_size", 1)),
    )
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    if recipe.hub.push_to_hub:
        _push(built, run)
    run.mark_finished(clean)
    return clean


def _save_merged(built: BuiltTrainer, run: RunRecord) -> None:
    """Merge the trained adapter into a fresh, unquantized copy of its base and save it under merged/."""
    import transformers
    from peft import PeftModel

    target = run.output_dir / "merged"
    dtype, _ = resolve_dtype(run.recipe, detect())
    needs = run.recipe.method.model
    base = getattr(transformers, needs.auto_class).from_pretrained(
        built.loaded.base_model,
        dtype=dtype,
        trust_remote_code=run.recipe.model.trust_remote_code,
        use_kernels=False,  # merging is arithmetic on weights: no layer swapped for a downloaded kernel
        **needs.init_kwargs,
    )
    if base.get_input_embeddings().weight.shape[0] != len(built.tokenizer):
        base.resize_token_embeddings(len(built.tokenizer), pad_to_multiple_of=8)
    merged = PeftModel.from_pretrained(base, run.output_dir).merge_and_unload()
    merged.config.use_cache = True
    if built.tokenizer.pad_token_id is not None:  # a classifier finds each sequence's end by it, as save_weights sets
        merged.config.pad_token_id = built.tokenizer.pad_token_id
    merged.save_pretrained(target, safe_serialization=True)
    built.tokenizer.save_pretrained(target)


def _push(built: BuiltTrainer, run: RunRecord) -> None:
    from huggingface_hub import HfApi

    hub = run.recipe.hub
    repo_id = hub.hub_model_id or run.output_dir.name
    api = HfApi()
    api.create_repo(repo_id, private=hub.private, exist_ok=True)
    if hub.revision:
        api.create_branch(repo_id, branch=hub.revision, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(run.output_dir),
        revision=hub.revision,
        commit_message=f"alignkit {run.method}: {run.name}",
        ignore_patterns=["checkpoint-*", "runs/*", "*.log", LOCK_FILE],
    )
    run.info["pushed_to"] = repo_id
