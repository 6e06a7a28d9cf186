"""Held-out loss and perplexity of `alignkit eval`, computed as `alignkit sft` computes its training loss.

The rows go through the data layer exactly as an SFT run's do (any format sft reads, the model's chat
template, the same loss mask, rows cut to `max_length`), so the figure is comparable with a run's
`eval_loss`. Loss is the mean negative log-likelihood per trained token over all rows (not a mean of row
means); perplexity is its exponential.
"""

from __future__ import annotations

import math
from typing import Any

from alignkit.methods.sft import measuring_recipe


def sft_view(recipe, model, output_dir: str):
    """An SFT recipe reading the loss sources with `model`'s tokenizer: every row for measuring, none held out."""
    part = recipe.eval.loss
    return measuring_recipe(
        {"name_or_path": model.path, "revision": model.revision, "dtype": recipe.eval.dtype},
        [source.model_dump() for source in part.datasets],
        max_length=part.max_length,
        assistant_only=part.assistant_only,
        seed=recipe.eval.seed,
        output_dir=output_dir,
    )


def heldout_loss(recipe, model, output_dir: str, *, echo) -> dict[str, Any]:
    """{loss, perplexity, tokens, rows} of `model` on the recipe's loss sources."""
    import torch

    from alignkit.data.prepare import prepare_data
    from alignkit.sampling.generation import load_causal_lm, load_chat_tokenizer

    view = sft_view(recipe, model, output_dir)
    tokenizer, added = load_chat_tokenizer(view)
    rows = prepare_data(view, tokenizer).train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = load_causal_lm(view, tokenizer, added_tokens=added, device=device)
    echo(f"  {model.name}: loss on {len(rows)} held-out rows")
    total, tokens = 0.0, 0
    try:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        size = recipe.eval.loss.batch_size
        for start in range(0, len(order), size):
            batch = [rows[i] for i in order[start : start + size]]
            nll, count = _batch_nll(lm, batch, tokenizer.pad_token_id or 0, device)
            total, tokens = total + nll, tokens + count
    finally:
        del lm
    loss = total / tokens if tokens else None
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss is not None and loss < 700 else None,
        "tokens": tokens,
        "rows": len(rows),
    }


def _batch_nll(model, batch: list[dict], pad_id: int, device: str) -> tuple[float, int]:
    """Summed next-token NLL over the batch's trained tokens (mask 1), and their count."""
    import torch

    width = max(len(row["input_ids"]) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        length = len(row["input_ids"])
        ids[i, :length] = torch.tensor(row["input_ids"])
        attention[i, :length] = 1
        mask = torch.tensor(row["assistant_masks"], dtype=torch.bool)
        labels[i, :length] = torch.where(mask, ids[i, :length], torch.tensor(-100))
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
    targets = labels[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(nll), int((targets != -100).sum())
