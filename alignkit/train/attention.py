"""Blocked causal attention: alignkit's attention kernel for training on a CPU.

PyTorch's SDPA runs a CPU flash-attention kernel built for long sequences; at the lengths of chat rows plain
matrix products are faster. This kernel splits the queries into equal blocks of at most `BLOCK` rows and
multiplies each block only with the keys up to the block's end, so most of the work above the causal diagonal
is never done. Query heads that share a key/value head (grouped-query attention) go through one product per
block together, so keys and values are never repeated per head.
Its backward pass is written out (`_BlockedCausal`) rather than left to autograd: autograd would keep the
scores in two dtypes and walk them five times more, which cost more than the matrix products saved. What
it does not handle (an explicit mask, a single query, a sliding window, a soft cap, a non-causal module,
dropout) goes to SDPA unchanged, and its attention masks are SDPA's, so with no padding mask the causal case
is the only one left to it.
"""

from __future__ import annotations

NAME = "blocked_matmul"
BLOCK = 128
"""Most queries per block. Smaller blocks waste less above the diagonal (each block computes one square's upper
triangle for nothing) but make more, smaller products; 128 gave the fastest training steps on the reference
workload's model (1.06x over 256 with grouped heads, benchmarks/RESULTS.md)."""
TILE = 1 << 20
"""Scores per tile (2 MiB in bf16): a tile's scores stay in cache between the passes over them."""


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
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # Under autocast the rotated queries and keys arrive in float32 (the rotation's tables are) and the values
    # in the compute dtype; the products run in the compute dtype, as autocast runs SDPA's.
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    return attend(query, key, value, scale, dtype), None


def attend(query, key, value, scale: float, dtype=None):
    """Causal attention of query (batch, heads, length, dim) over key and value (batch, kv_heads, keys, dim),
    computed in `dtype` (default: the query's); returns (batch, length, heads, dim)."""
    import torch

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    dtype = dtype or query.dtype
    # Each key/value head serves `groups` query heads (grouped-query attention). Laying the queries out as
    # (batch, kv_heads, length, groups, dim) makes a block of tokens times its groups one contiguous run of
    # rows, so one product per block covers every head of a group and keys and values are never repeated.
    grouped = query.view(batch, kv_heads, groups, length, dim).transpose(2, 3)
    grouped = grouped.to(dtype, memory_format=torch.contiguous_format)
    key, value = (t.to(dtype, memory_format=torch.contiguous_format) for t in (key, value))
    out = _function().apply(grouped, key, value, scale)
    return out.view(batch, length, heads, dim)


def _blocks(length: int, keys: int):
    """(start, end, visible) of each block of queries; `visible` keys reach the block's end (keys before the
    first query, a cache, are all visible). Blocks are of equal size (at most BLOCK): the work done above the
    diagonal is one block's triangle per block, which equal blocks keep smallest."""
    offset = keys - length
    count = -(-length // BLOCK)
    size = -(-length // count)
    return [(s, min(length, s + size), offset + min(length, s + size)) for s in range(0, length, size)]


def _rows(tensor, start: int, end: int):
    """Tokens start:end of a (batch, kv_heads, length, groups, dim) tensor as (batch, kv_heads, rows, dim)."""
    batch, kv_heads, _, groups, dim = tensor.shape
    return tensor[:, :, start:end].reshape(batch, kv_heads, (end - start) * groups, dim)


def _future(start: int, end: int, groups: int, device):
    """Which of the block's last end - start keys lie in each row's future (rows are tokens times groups)."""
    import torch

    size = end - start
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(1).repeat_interleave(groups, dim=0)


def _tiles(query, keys: int):
    """(rows of the batch, start, end, visible) of each tile: a block of queries of some of the batch's rows,
    sized so that the tile's scores stay in cache from the product that makes them to the one that reads them
    (memory-bound passes over them cost more than the products)."""
    batch, kv_heads, length, groups, _ = query.shape
    for start, end, visible in _blocks(length, keys):
        rows = max(1, min(batch, TILE // (kv_heads * groups * (end - start) * visible)))
        for first in range(0, batch, rows):
            yield slice(first, min(batch, first + rows)), start, end, visible


def _forward(query, key, value, scale):
    import torch

    batch, kv_heads, length, groups, dim = query.shape
    scaled = query * scale
    out = torch.empty(batch, length, kv_heads, groups, dim, dtype=query.dtype, device=query.device)
    probs = []
    for rows, start, end, visible in _tiles(query, key.shape[2]):
        scores = torch.matmul(_rows(scaled[rows], start, end), key[rows, :, :visible].transpose(2, 3))
        # Only the block's last end - start keys can lie in a query's future: mask that square alone.
        scores[..., visible - (end - start) :].masked_fill_(_future(start, end, groups, scores.device), float("-inf"))
        # The softmax reduces in float32 inside the kernel whatever the dtype; only its output is rounded.
        block = torch.softmax(scores, dim=-1)
        probs.append(block)
        result = torch.matmul(block, value[rows, :, :visible])
        out[rows, start:end] = result.view(-1, kv_heads, end - start, groups, dim).transpose(1, 2)
    return scaled, out, probs


def _backward(scaled, key, value, out, probs, grad, scale):
    import torch

    batch, kv_heads, length, groups, dim = scaled.shape
    grad_query = torch.empty_like(scaled)
    grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
    grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    # softmax's backward needs each row's sum of grad x probs, which equals grad_out . out (flash's trick).
    sums = (grad.float() * out.float()).sum(-1)
    sums = sums.permute(0, 2, 1, 3).reshape(batch, kv_heads, length * groups, 1)
    grad = grad.permute(0, 2, 1, 3, 4).contiguous()  # to the queries' layout
    for (rows, start, end, visible), block in zip(_tiles(scaled, key.shape[2]), probs, strict=True):
        grad_out = _rows(grad[rows], start, end)
        grad_value[rows, :, :visible] += torch.matmul(block.transpose(2, 3), grad_out)
        grad_scores = torch.matmul(grad_out, value[rows, :, :visible].transpose(2, 3))
        grad_scores.sub_(sums[rows, :, start * groups : end * groups]).mul_(block)
        grad_rows = torch.matmul(grad_scores, key[rows, :, :visible]).mul_(scale)
        grad_query[rows, :, start:end] = grad_rows.view(-1, kv_heads, end - start, groups, dim)
        grad_key[rows, :, :visible] += torch.matmul(grad_scores.transpose(2, 3), _rows(scaled[rows], start, end))
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
                    scaled, out, probs = _forward(query, key, value, scale)
                # The scaled queries, not the queries: the keys' gradient is a product with them, which spares
                # the backward pass one rounding and one pass over its result.
                ctx.save_for_backward(scaled, key, value, out, *probs)
                ctx.scale = scale
                return out

            @staticmethod
            def backward(ctx, grad):
                scaled, key, value, out, *probs = ctx.saved_tensors
                with torch.autocast(scaled.device.type, enabled=False):
                    grad = grad.to(scaled.dtype).contiguous()
                    grads = _backward(scaled, key, value, out, probs, grad, ctx.scale)
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
