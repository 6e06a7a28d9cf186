"""Batches of similar length, in random order: what `train_sampling_strategy: group_by_length` means in alignkit.

transformers' own length grouping sorts each block of 50 batches by length and serves the block's batches in
that sorted order, so a model sees long runs of its longest rows, then of its shortest. Where length goes
with content (sums with three digits are longer than sums with two), those runs teach one kind of row at a
time and training can stall: alignkit's offline demo learned nothing that way. Here rows are grouped the
same way (sorted within blocks, so a batch wastes little compute on padding) and then the batches
themselves are shuffled, every epoch anew, so the order of what the model sees stays random.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

BLOCK_BATCHES = 50
"""Batches sorted together: larger blocks waste less on padding, smaller ones keep rows mixed."""
CPU_LENGTH_MULTIPLE = 16
"""On a CPU, grouped batches are padded up to a multiple of this many tokens. Every new batch length makes
oneDNN build new matrix kernels; with lengths rounded, a run of 128 batches meets 45 lengths instead of 112,
for 2% more padded tokens: 3% faster on the reference workload (benchmarks/RESULTS.md)."""
SPLIT_ROWS = 2
"""Rows per micro-batch when batches are split by length (`split_by_length`): a random batch's rows sorted by
length, two by two, pad only to their neighbour's length; one row each would cost a forward and backward call
per row."""
WORTH_GROUPING = 0.15
"""The share of a random batch's tokens that must be padding before grouping pays. Grouping changes what a
step sees (a batch of one length can be a batch of one kind of row: the demo's sums with three digits), so
it is used only where it saves real compute; below this, random batches are kept."""


class LengthGroupedBatches:
    """A sampler that yields row indices so that each run of `group` consecutive indices has similar lengths.

    `group` is the number of rows that are padded together (per-device batch times processes), so every
    device's micro-batch holds rows of similar length. Deterministic for a seed and an epoch, which a
    resumed run relies on to skip the batches it already trained on.
    """

    def __init__(self, lengths: Sequence[int], group: int, seed: int, block_batches: int = BLOCK_BATCHES):
        self.lengths = list(lengths)
        self.group = max(1, group)
        self.seed = seed
        self.block_batches = block_batches
        """Groups sorted together; 1 keeps every group a random draw of rows, sorted within, in the order drawn
        (`split_by_length`: the trainer's own random batches)."""
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> list[list[int]]:
        """This epoch's groups of row indices, in the order they are served."""
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        block = self.group * self.block_batches
        groups: list[list[int]] = []
        for start in range(0, len(order), block):
            rows = sorted(order[start : start + block], key=self.lengths.__getitem__, reverse=True)
            groups += [rows[i : i + self.group] for i in range(0, len(rows), self.group)]
        if self.block_batches == 1:
            # Each group is already a random draw, in the order the permutation drew it: the batches, and their
            # order, of transformers' seeded random sampler (accelerate's SeedableRandomSampler) for this seed.
            return groups
        shuffled = torch.randperm(len(groups), generator=generator).tolist()
        return [groups[i] for i in shuffled]


def padding_share(lengths: Sequence[int], batches: list[list[int]], rows: int | None = None) -> float:
    """The share of the padded tokens of `batches` that are padding (each padded as micro-batches of `rows`
    consecutive rows where given)."""
    if rows is not None:
        batches = [batch[i : i + rows] for batch in batches for i in range(0, len(batch), rows)]
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1 - real / padded if padded else 0.0


def random_batches(count: int, group: int, seed: int) -> list[list[int]]:
    import torch

    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + group] for i in range(0, count, group)]


def grouping_verdict(lengths: Sequence[int], group: int, seed: int) -> tuple[bool, str]:
    """Whether grouping by length pays for these rows, and the measured reason."""
    at_random = padding_share(lengths, random_batches(len(lengths), group, seed))
    if at_random < WORTH_GROUPING:
        return False, (
            f"random batches of these rows are only {at_random:.0%} padding, too little to trade for batches of"
            " one length (measured on the prepared data)"
        )
    grouped = padding_share(lengths, LengthGroupedBatches(lengths, group, seed).batches())
    return True, (
        f"random batches of these rows would be {at_random:.0%} padding, batches of similar length"
        f" {grouped:.0%} (measured on the prepared data; batches still come in random order)"
    )


def splitting_verdict(lengths: Sequence[int], batch: int, seed: int) -> tuple[bool, str]:
    """Whether splitting random batches of `batch` rows by length pays for these rows, and the measured reason:
    like grouping, only where random batches would be padding enough (`WORTH_GROUPING`) to repay the calls."""
    at_random = padding_share(lengths, random_batches(len(lengths), batch, seed))
    if at_random < WORTH_GROUPING:
        return False, (
            f"random batches of these rows are only {at_random:.0%} padding, too little to pay for micro-batches"
            " (measured on the prepared data); random batches instead"
        )
    rows, _ = split_sizes(batch)
    split = padding_share(lengths, LengthGroupedBatches(lengths, batch, seed, block_batches=1).batches(), rows)
    return True, f"random batches of these rows would be {at_random:.0%} padding, split {split:.0%} (measured)"


def group_by_length(
    trainer, lengths: Sequence[int], group: int, seed: int, block_batches: int = BLOCK_BATCHES
) -> LengthGroupedBatches:
    """Make `trainer` draw its training rows from a `LengthGroupedBatches` sampler, and return the sampler.

    transformers builds its sampler in `Trainer._get_train_sampler`; replacing it on this one trainer is
    the only way to give a TRL trainer another sampler without subclassing every trainer class.
    """
    sampler = LengthGroupedBatches(lengths, group, seed, block_batches)
    trainer._get_train_sampler = lambda train_dataset=None: sampler
    return sampler


def split_sizes(batch: int) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches per batch) when a batch of `batch` rows is split by length. The
    micro-batches are of equal size, so the mean of their mean losses is the batch's mean loss."""
    rows = SPLIT_ROWS if batch % SPLIT_ROWS == 0 else 1
    return rows, batch // rows


def split_by_length(config, batch: int) -> None:
    """Run each batch of `batch` rows as micro-batches (`split_sizes`) accumulated into one step: the
    config's per-device batch and gradient accumulation are changed in place, before the trainer reads them."""
    rows, parts = split_sizes(batch)
    config.per_device_train_batch_size = rows
    config.gradient_accumulation_steps *= parts


def round_batch_lengths(trainer, multiple: int) -> bool:
    """Pad `trainer`'s batches up to a multiple of `multiple` tokens, unless the recipe chose a multiple; returns
    whether the trainer's collator took it (TRL's sft, dpo, kto and reward collators have the field)."""
    collator = trainer.data_collator
    if getattr(collator, "pad_to_multiple_of", False) is not None:
        return False
    collator.pad_to_multiple_of = multiple
    return True
