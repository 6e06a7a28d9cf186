"""rloo: REINFORCE Leave-One-Out, online RL with TRL's RLOOTrainer and the same rewards as grpo.

For each prompt the policy generates `num_generations` completions and the recipe's rewards score them; each
completion's baseline is the mean reward of the *other* completions of its prompt (leave one out), so its
advantage is its reward minus that mean, with no critic and no per-group scaling unless asked
(`normalize_advantages`). The KL penalty against the reference model is part of the reward (TRL's default
beta 0.05). Everything but the algorithm (prompt rows, rewards, generation with transformers or vLLM, the
checks, the Slurm and dstack server jobs) is grpo's, from `alignkit.methods.online`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from alignkit.methods.method import imported
from alignkit.methods.online import Online, OnlineSection
from alignkit.recipe.bounds import within
from alignkit.recipe.vocab import TRAINING_ARGUMENTS_FIELDS

# RLOOConfig of TRL 1.16.
TRL_FIELDS = TRAINING_ARGUMENTS_FIELDS | frozenset(
    {
        "beta",
        "cache_implementation",
        "chat_template_kwargs",
        "disable_dropout",
        "ds3_gather_for_generation",
        "epsilon",
        "epsilon_high",
        "generation_batch_size",
        "generation_kwargs",
        "log_completions",
        "log_multimodal",
        "log_unique_prompts",
        "mask_truncated_completions",
        "max_completion_length",
        "min_p",
        "model_init_kwargs",
        "normalize_advantages",
        "num_completions_to_print",
        "num_generations",
        "num_generations_eval",
        "num_iterations",
        "pad_to_multiple_of",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
        "repetition_penalty",
        "reward_clip_range",
        "reward_weights",
        "router_aux_loss_coef",
        "shuffle_dataset",
        "steps_per_generation",
        "sync_ref_model",
        "temperature",
        "top_k",
        "top_p",
        "transformers_continuous_batching_config",
        "trust_remote_code",
        "use_transformers_continuous_batching",
        "use_transformers_paged",
        "use_vllm",
        "vllm_enable_sleep_mode",
        "vllm_gpu_memory_utilization",
        "vllm_group_port",
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


class RlooSection(OnlineSection):
    """REINFORCE Leave-One-Out: each completion's baseline is the mean reward of its group's other completions."""

    num_generations: within(2, 65536) = 2
    """Completions generated per prompt (TRL's RLOO default: 2, the fewest that leave one out)."""
    beta: float = Field(0.05, ge=0)
    """Weight of the KL penalty against the reference model, folded into the reward (TRL's RLOO default 0.05);
    0 loads no reference model."""
    normalize_advantages: bool = False
    """Divide the advantages by their standard deviation over the batch."""
    reward_clip_range: list[within(-1e12, 1e12, float)] | None = Field(None, min_length=2, max_length=2)
    """[low, high]: clip each reward to this range before the advantages are computed; unset: no clipping."""

    @field_validator("reward_clip_range")
    @classmethod
    def _ordered(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and value[0] >= value[1]:
            raise ValueError(f"is [low, high]; {value[0]:g} is not below {value[1]:g}")
        return value


ONLINE = Online("rloo", RlooSection)


def _trl_settings(section: RlooSection) -> dict[str, Any]:
    clip = tuple(section.reward_clip_range) if section.reward_clip_range is not None else None
    return {
        **ONLINE.trl_settings(section),
        "normalize_advantages": section.normalize_advantages,
        "reward_clip_range": clip,
    }


def _card_rows(section: RlooSection) -> list[tuple[str, str]]:
    rows = ONLINE.card_rows(section)
    clip = "off" if section.reward_clip_range is None else "{:g} to {:g}".format(*section.reward_clip_range)
    advantages = f"leave-one-out{', normalised' if section.normalize_advantages else ''}; reward clip {clip}"
    return [*rows[:2], ("advantages", advantages), *rows[2:]]


METHOD = ONLINE.method(
    name="rloo",
    title="REINFORCE Leave-One-Out (RLOO)",
    # TRL's RLOOConfig default.
    default_learning_rate=1.0e-6,
    trl_fields=TRL_FIELDS,
    trl_config=imported("trl", "RLOOConfig"),
    trl_settings=_trl_settings,
    trainer=imported("trl", "RLOOTrainer"),
    card_rows=_card_rows,
    recipe_rules=ONLINE.batch_rule,
    defining_keys=frozenset({"normalize_advantages", "reward_clip_range"}),
)
