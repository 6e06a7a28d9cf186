"""The reward-model judge of `alignkit eval`: each model's answer against the baseline's, prompt by prompt.

The reward model (an `alignkit rm` output or any one-output sequence classifier) scores every model's
completion of every held-out prompt, rendered exactly as reward-model training renders a conversation. A
model wins a prompt when its answer scores above the baseline's, loses when below, and ties when the two
score the same (identical answers always tie); win rate = wins / prompts, with ties and losses reported
beside it, so `win + tie + loss = 1`.
"""

from __future__ import annotations

from typing import Any


def judge_scores(reward_model: str, batch_size: int, prompts, answers: dict[str, list[str]], *, echo) -> dict:
    """The reward of each model's answers: {model: [reward per prompt]} (one reward-model load for all)."""
    from alignkit.scoring.build import build_scorers, close_scorers
    from alignkit.scoring.specs import RewardModelSpec

    spec = RewardModelSpec(path=reward_model, batch_size=batch_size)
    (scorer,) = build_scorers([spec], ["judge"])
    messages, rows = [p.messages for p in prompts], [p.row for p in prompts]
    try:
        rewards = {}
        for name, texts in answers.items():
            echo(f"  judge: scoring {name}'s {len(texts)} answers")
            rewards[name] = scorer.score(messages, texts, rows)
    finally:
        close_scorers([scorer])
    return rewards


def head_to_head(mine: list[float], theirs: list[float], same: list[bool]) -> dict[str, Any]:
    """Win, tie and loss rates of `mine` against `theirs`; an identical answer is a tie whatever the rewards."""
    wins = ties = losses = 0
    for a, b, identical in zip(mine, theirs, same, strict=True):
        if identical or a == b:
            ties += 1
        elif a > b:
            wins += 1
        else:
            losses += 1
    total = len(mine)
    return {
        "win_rate": wins / total if total else None,
        "tie_rate": ties / total if total else None,
        "loss_rate": losses / total if total else None,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "mean_reward": sum(mine) / total if total else None,
    }
