"""Which rows each worker reads at each step: shards, local batch sizes, per-epoch orders.

The global batch of step t is the union of every worker's local batch of step t; the
driver and a single-process reference can both rebuild it from these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def split_evenly(total: int, parts: int) -> list[int]:
    """`parts` sizes that sum to `total` and differ by at most one (larger ones first)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass(frozen=True)
class BatchPlan:
    """How N training rows and a global batch B split over W workers.

    Worker i owns rows [shard_starts[i], shard_starts[i] + shard_sizes[i]) and reads
    local_batches[i] of them per step; an epoch is as many steps as the smallest
    shard can feed (the rest of each shard waits for the next epoch's reshuffle).
    """

    n_train: int
    batch_size: int
    workers: int

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= self.batch_size:
            raise ValueError(
                f"need 1 <= workers <= batch_size so every worker reads a row, "
                f"got {self.workers} workers and batch_size {self.batch_size}"
            )
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than the {self.n_train} "
                f"training rows split over {self.workers} workers"
            )

    @property
    def shard_sizes(self) -> list[int]:
        return split_evenly(self.n_train, self.workers)

    @property
    def shard_starts(self) -> list[int]:
        return [int(s) for s in np.cumsum([0, *self.shard_sizes[:-1]])]

    @property
    def local_batches(self) -> list[int]:
        return split_evenly(self.batch_size, self.workers)

    @property
    def steps_per_epoch(self) -> int:
        pairs = zip(self.shard_sizes, self.local_batches, strict=True)
        return min(shard // batch for shard, batch in pairs)


def epoch_order(shard_size: int, *, seed: int, epoch: int, worker_index: int) -> np.ndarray:
    """The permutation of a worker's shard for one epoch (seeded, so runs repeat)."""
    rng = np.random.default_rng([seed, epoch, worker_index])
    return rng.permutation(shard_size)
