"""Blocked causal attention: alignkit's attention kernel for training on a CPU.

PyTorch's SDPA runs a CPU flash-attention kernel built for long sequences; at the lengths of chat rows plain
matrix products are faster. This kernel splits the queries into blocks of `BLOCK` rows and multiplies each
block only with the keys up to the block's end, so most of the work above the causal diagonal is never done.
Its backward pass is written out (`_BlockedCausal`) rather than left to autograd: autograd would keep the
scores in two dtypes and walk them five times more, which cost more than the matrix products saved. What
it does not handle (an explicit mask, a single query, a sliding window, a soft cap, a non-causal module,
dropout) goes to SDPA unchanged, and its attention masks are SDPA's, so with no padding mask the causal case
is the only one left to it.
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
    dropping = dropout > 0 and module.training
    if attention_mask is not None or query.shape[2] <= 1 or not causal or special or dropping:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # Under autocast the rotated queries and keys arrive in float32 (the rotation's tables are) and the values
    # in the compute dtype; the products run in the compute dtype, as autocast runs SDPA's.
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    # One copy each: to the compute dtype and out of the heads-transposed layout the projections leave.
    query, key, value = (t.to(dtype, memory_format=torch.contiguous_format) for t in (query, key, value))
    out = _function().apply(query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def _blocks(length: int, keys: int):
    """(start, end, visible) of each block of queries; `visible` keys reach the block's end (keys before the
    first query, a cache, are all visible)."""
    offset = keys - length
    return [(s, min(length, s + BLOCK), offset + min(length, s + BLOCK)) for s in range(0, length, BLOCK)]


def _forward(query, key, value, scale):
    import torch

    scaled = query * scale
    outputs, probs = [], []
    for start, end, visible in _blocks(query.shape[2], key.shape[2]):
        scores = torch.matmul(scaled[:, :, start:end], key[:, :, :visible].transpose(2, 3))
        # Only the block's last end - start keys can lie in a query's future: mask that square alone.
        future = torch.ones(end - start, end - start, dtype=torch.bool, device=scores.device).triu(1)
        scores[..., visible - (end - start) :].masked_fill_(future, float("-inf"))
        # The softmax reduces in float32 inside the kernel whatever the dtype; only its output is rounded.
        block = torch.softmax(scores, dim=-1)
        probs.append(block)
        outputs.append(torch.matmul(block, value[:, :, :visible]))
    return torch.cat(outputs, dim=2), probs


def _backward(query, key, value, out, probs, grad, scale):
    import torch

    grad_query = torch.empty_like(query)
    grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
    grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    # softmax's backward needs each row's sum of grad x probs, which equals grad_out . out (flash's trick).
    rows = (grad.float() * out.float()).sum(-1, keepdim=True).to(query.dtype)
    for (start, end, visible), block in zip(_blocks(query.shape[2], key.shape[2]), probs, strict=True):
        grad_out = grad[:, :, start:end]
        grad_value[:, :, :visible] += torch.matmul(block.transpose(2, 3), grad_out)
        grad_scores = torch.matmul(grad_out, value[:, :, :visible].transpose(2, 3))
        grad_scores.sub_(rows[:, :, start:end]).mul_(block)
        grad_query[:, :, start:end] = torch.matmul(grad_scores, key[:, :, :visible]) * scale
        grad_key[:, :, :visible] += torch.matmul(grad_scores.transpose(2, 3), query[:, :, start:end]) * scale
    return grad_query, grad_key.to(key.dtype), grad_value.to(value.dtype)


_FUNCTION = None


def _function():
    """The autograd function, built on first use so importing this module does not import torch."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class _BlockedCausal(torch.autograd.Function):
            @staticmethod
            def forward(ctx, query, key, value, scale):
                # Autocast off: the inputs arrive in the compute dtype, and every product here stays in it.
                with torch.autocast(query.device.type, enabled=False):
                    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
                    out, probs = _forward(query, key, value, scale)
                ctx.save_for_backward(query, key, value, out, *probs)
                ctx.scale = scale
                return out

            @staticmethod
            def backward(ctx, grad):
                query, key, value, out, *probs = ctx.saved_tensors
                with torch.autocast(query.device.type, enabled=False):
                    grads = _backward(query, key, value, out, probs, grad.to(query.dtype).contiguous(), ctx.scale)
                return (*grads, None)

        _FUNCTION = _BlockedCausal
    return _FUNCTION


def register() -> str:
    """Make `NAME` a valid `attn_implementation` for transformers (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blocked_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def loadable(name: str) -> str:
    """`name` as `from_pretrained(attn_implementation=...)` accepts it: alignkit's own kernel is registered
    first; every other name passes through."""
    return register() if name == NAME else name
