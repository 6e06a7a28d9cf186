"""Blocked causal attention: alignkit's attention kernel for training on a CPU.

PyTorch's SDPA runs a CPU flash-attention kernel built for long sequences; at the lengths of chat rows plain
matrix products are faster. This kernel splits the queries into blocks of `BLOCK` rows and multiplies each
block only with the keys up to the block's end, so most of the work above the causal diagonal is never done;
the scores are softmaxed in float32, as transformers' eager kernel does. What it does not handle (an explicit
mask, a single query, a sliding window, a soft cap, a non-causal module) goes to SDPA unchanged, and its
attention masks are SDPA's, so with no padding mask the causal case is the only one left to it.
"""

from __future__ import annotations

NAME = "blocked_matmul"
BLOCK = 256
"""Queries per block: a block's scores are BLOCK x (keys up to its end), small enough to stay in cache-sized
tiles of the matrix products, large enough that each product is not dominated by call overhead."""


def blocked_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query (batch, heads, length, dim), key and value (batch,
    kv_heads, keys, dim); returns ((batch, length, heads, dim), None) like SDPA's."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    special = kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None
    if attention_mask is not None or query.shape[2] <= 1 or not causal or special:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    length, keys = query.shape[2], key.shape[2]
    offset = keys - length  # keys before the first query (a cache); zero in training
    blocks = []
    for start in range(0, length, BLOCK):
        end = min(length, start + BLOCK)
        visible = offset + end
        scores = torch.matmul(query[:, :, start:end], key[:, :, :visible].transpose(2, 3)) * scale
        future = torch.ones(end - start, visible, dtype=torch.bool, device=scores.device).triu(offset + start + 1)
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1, dtype=torch.float32).to(value.dtype)
        if dropout > 0 and module.training:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        blocks.append(torch.matmul(probs, value[:, :, :visible]))
    return torch.cat(blocks, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `NAME` a valid `attn_implementation` for transformers (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blocked_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
