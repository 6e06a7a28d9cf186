"""Mixture arithmetic: which rows of each source are used, and how the pool is split.

`weight` is the fraction of a source's rows to use: floor(weight x rows) rows, chosen at random with a
seed (not the first N). Above 1, each whole unit adds one full copy of the source and the fraction adds a
seeded random remainder: weight 2.5 over 10 rows is 2 copies plus 5 random rows, 25 rows. Test rows are
used whole unless the source has a weight other than 1. `test_split_size` re-splits the shuffled pool when
no source feeds the test set: a whole number is a row count, a fraction below 1 takes ceil(fraction x rows)
(datasets' own rule). Everything is deterministic for a given `data.seed`.
"""

from __future__ import annotations

import math

import numpy as np

# weight x rows is rounded down, but 0.3 x 10 is 2.9999999999999996 in floating point: allow for that.
_EPSILON = 1e-9


def rows_for_weight(rows: int, weight: float) -> int:
    """How many rows a source of `rows` rows contributes at `weight`."""
    return math.floor(rows * weight + _EPSILON)


def weighted_indices(rows: int, weight: float, seed: int) -> list[int]:
    """Row indices a source contributes: whole copies for each unit of weight, plus a seeded random remainder."""
    total = rows_for_weight(rows, weight)
    whole, remainder = divmod(total, rows) if rows else (0, 0)
    indices = list(range(rows)) * whole
    if remainder:
        rng = np.random.default_rng(seed)
        indices += sorted(rng.choice(rows, size=remainder, replace=False).tolist())
    return indices


def source_seed(seed: int, index: int) -> int:
    """A seed per source, so two sources of equal length do not pick the same row positions."""
    return seed * 1_000_003 + index


def test_rows(total: int, test_split_size: float) -> int:
    """Rows `test_split_size` moves to the test set out of `total` pooled rows."""
    if test_split_size >= 1:
        return int(test_split_size)
    return math.ceil(test_split_size * total)
