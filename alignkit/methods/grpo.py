"""grpo: Group Relative Policy Optimization, online RL with TRL's GRPOTrainer and verifiable rewards.

For each prompt the policy generates `num_generations` completions; the recipe's rewards (`grpo.rewards`,
in exactly the shape of `sample.scorers`) score them, and each completion's advantage is its weighted reward
relative to its group's (scaled by the group's spread, the batch's, or not at all). Rows are prompts only (a
message list; TRL applies the chat template and adds the generation prompt), with the columns the rewards
read (a reference answer) carried beside them unchanged: TRL hands every column but the prompt to the reward
functions. What grpo shares with rloo (generation, vLLM, rewards, checks) is in `alignkit.methods.online`.
"""

from __future__ import annotations

from typing import Any, Literal

from alignkit.methods.method import imported
from alignkit.methods.online import Online, OnlineSection
from alignkit.recipe.sections import at
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# The loss_type values of TRL 1.16's GRPOConfig (a test tries each with the installed TRL).
GrpoLoss = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
# How TRL 1.16 scales the group-relative advantages (True and False are its aliases of group and none).
RewardScaling = Literal["group", "batch", "none"]

# GRPOConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "beta",
        "cache_implementation",
        "cast_lm_head_to_fp32",
        "chat_template_kwargs",
        "delta",
        "disable_dropout",
        "ds3_gather_for_generation",
        "entropy_coef",
        "entropy_coef_delta",
        "entropy_coef_max",
        "entropy_coef_min",
        "entropy_target",
        "epsilon",
        "epsilon_high",
        "generation_batch_size",
        "generation_kwargs",
        "importance_sampling_level",
        "log_completions",
        "log_completions_hub_repo",
        "log_multimodal",
        "log_unique_prompts",
        "loss_type",
        "mask_truncated_completions",
        "max_completion_length",
        "max_tool_calling_iterations",
        "min_p",
        "model_init_kwargs",
        "multi_objective_aggregation",
        "num_completions_to_print",
        "num_generations",
        "num_generations_eval",
        "num_iterations",
        "off_policy_mask_threshold",
        "pad_to_multiple_of",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
        "repetition_penalty",
        "reward_weights",
        "router_aux_loss_coef",
        "sapo_temperature_neg",
        "sapo_temperature_pos",
        "scale_rewards",
        "shuffle_dataset",
        "steps_per_generation",
        "sync_ref_model",
        "temperature",
        "top_entropy_quantile",
        "top_k",
        "top_p",
        "transformers_continuous_batching_config",
        "trust_remote_code",
        "use_adaptive_entropy",
        "use_bias_correction_kl",
        "use_transformers_continuous_batching",
        "use_transformers_paged",
        "use_vllm",
        "vespo_k_neg",
        "vespo_k_pos",
        "vespo_lambda_neg",
        "vespo_lambda_pos",
        "vllm_enable_sleep_mode",
        "vllm_gpu_memory_utilization",
        "vllm_group_port",
        "vllm_importance_sampling_cap",
        "vllm_importance_sampling_clip_max",
        "vllm_importance_sampling_clip_min",
        "vllm_importance_sampling_correction",
        "vllm_importance_sampling_mode",
        "vllm_max_model_length",
        "vllm_mode",
        "vllm_model_impl",
        "vllm_server_base_url",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_server_timeout",
        "vllm_structured_outputs_regex",
        "vllm_tensor_parallel_size",
    }
)


class GrpoSection(OnlineSection):
    """Group Relative Policy Optimization: generate a group of completions per prompt, reward, reinforce."""

    loss_type: GrpoLoss = "dapo"
    """How token losses are aggregated (TRL's): dapo (tokens of the whole accumulated batch), grpo (per
    sequence), dr_grpo (a constant), bnpo (tokens of the local batch), cispo, sapo, luspo, vespo."""
    scale_rewards: RewardScaling = "group"
    """Divide the advantages by the rewards' standard deviation within each group, across the batch, or not at
    all (none, as Dr. GRPO recommends)."""


ONLINE = Online("grpo", GrpoSection)


def _trl_settings(section: GrpoSection) -> dict[str, Any]:
    return {**ONLINE.trl_settings(section), "loss_type": section.loss_type, "scale_rewards": section.scale_rewards}


def _recipe_rules(recipe) -> None:
    """Refuse what GRPOConfig or GRPOTrainer would refuse late (after the model loads) or cryptically."""
    ONLINE.batch_rule(recipe)
    section, training = recipe.section, recipe.training
    if section.loss_type == "luspo" and training.extra.get("importance_sampling_level") != "sequence":
        raise ValueError(
            at(
                "grpo.loss_type",
                "luspo is a sequence-level loss: set training.extra.importance_sampling_level=sequence",
            )
        )


def _card_rows(section: GrpoSection) -> list[tuple[str, str]]:
    rows = ONLINE.card_rows(section)
    return [*rows[:2], ("loss / reward scaling", f"{section.loss_type} / {section.scale_rewards}"), *rows[2:]]


METHOD = ONLINE.method(
    name="grpo",
    title="Group Relative Policy Optimization (GRPO)",
    # TRL's GRPOConfig default.
    default_learning_rate=1.0e-6,
    trl_fields=TRL_FIELDS,
    trl_config=imported("trl", "GRPOConfig"),
    trl_settings=_trl_settings,
    trainer=imported("trl", "GRPOTrainer"),
    card_rows=_card_rows,
    recipe_rules=_recipe_rules,
    defining_keys=frozenset({"num_generations", "max_completion_length", "num_iterations", "scale_rewards"}),
)
