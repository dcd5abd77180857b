"""Which rows each worker reads at each step: shards, local batch sizes, per-epoch orders.

An epoch is ⌈N / B⌉ steps and uses every training row exactly once: B rows per step
(worker i reads b_i of them), and the R = N − B·(steps − 1) rows left for the last
step (worker i reads r_i ≤ b_i, possibly none). Worker i's shard holds exactly the
rows it reads in an epoch, n_i = b_i·(steps − 1) + r_i; each epoch reshuffles every
shard with a seed. The global batch of step t is the union of the workers' local
batches of step t; the driver and a single-process reference both rebuild it from
`BatchPlan.rows`.
"""

from __future__ import annotations

import math
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
    """How N training rows and a global batch B split over W workers (see the module doc).

    Worker i owns rows [shard_starts[i], shard_starts[i] + shard_sizes[i]); it reads
    local_batches[i] of them at every step but an epoch's last, last_batches[i] then.
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
        if self.batch_size > self.n_train:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than the {self.n_train} training rows"
            )

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def local_batches(self) -> list[int]:
        """b_i: rows worker i reads at a full step; Σ b_i = B."""
        return split_evenly(self.batch_size, self.workers)

    @property
    def last_batches(self) -> list[int]:
        """r_i: rows worker i reads at an epoch's last step; Σ r_i = R, 0 <= r_i <= b_i."""
        left = self.n_train - self.batch_size * (self.steps_per_epoch - 1)  # R in [1, B]
        return split_evenly(left, self.workers)

    @property
    def shard_sizes(self) -> list[int]:
        """n_i = b_i·(steps − 1) + r_i: exactly the rows worker i reads in an epoch."""
        full = self.steps_per_epoch - 1
        return [b * full + r for b, r in zip(self.local_batches, self.last_batches, strict=True)]

    @property
    def shard_starts(self) -> list[int]:
        return [int(s) for s in np.cumsum([0, *self.shard_sizes[:-1]])]

    def batch_size_at(self, worker: int, index: int) -> int:
        """Rows worker `worker` reads at step `index` (0-based) of an epoch."""
        if index == self.steps_per_epoch - 1:
            return self.last_batches[worker]
        return self.local_batches[worker]

    def local_rows(self, order: np.ndarray, worker: int, index: int) -> np.ndarray:
        """Worker `worker`'s rows (positions in its shard) at step `index` of an epoch
        whose shard permutation is `order`: (b,), b = batch_size_at(worker, index)."""
        if not 0 <= index < self.steps_per_epoch:
            raise ValueError(f"step index {index} is outside [0, {self.steps_per_epoch})")
        start = index * self.local_batches[worker]
        return order[start : start + self.batch_size_at(worker, index)]

    def rows(self, worker: int, epoch: int, index: int, *, seed: int) -> np.ndarray:
        """The training-set rows worker `worker` reads at step `index` of `epoch`: (b,)."""
        order = epoch_order(self.shard_sizes[worker], seed=seed, epoch=epoch, worker_index=worker)
        return self.shard_starts[worker] + self.local_rows(order, worker, index)

    def global_batch(self, epoch: int, index: int, *, seed: int) -> np.ndarray:
        """Every worker's rows of one step, worker 0's first: (B,) or (R,) at an epoch's end."""
        return np.concatenate([self.rows(i, epoch, index, seed=seed) for i in range(self.workers)])


def epoch_order(shard_size: int, *, seed: int, epoch: int, worker_index: int) -> np.ndarray:
    """The permutation of a worker's shard for one epoch (seeded, so runs repeat)."""
    rng = np.random.default_rng([seed, epoch, worker_index])
    return rng.permutation(shard_size)
