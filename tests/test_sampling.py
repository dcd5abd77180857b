"""Which rows each worker reads: even splits, shards, local batches and per-epoch orders."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine import gradient_worker
from worker.sampling import BatchPlan, epoch_order, split_evenly

# --- split_evenly --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [
        (10, 3, [4, 3, 3]),
        (11, 3, [4, 4, 3]),
        (12, 3, [4, 4, 4]),
        (7, 1, [7]),
        (2, 5, [1, 1, 0, 0, 0]),
        (0, 2, [0, 0]),
    ],
)
def test_split_evenly_gives_larger_parts_first(total: int, parts: int, expected: list[int]) -> None:
    assert split_evenly(total, parts) == expected


@pytest.mark.parametrize("total", [0, 1, 9, 64, 1000, 1001])
@pytest.mark.parametrize("parts", [1, 2, 3, 7, 64])
def test_split_evenly_sums_to_total_and_differs_by_at_most_one(total: int, parts: int) -> None:
    sizes = split_evenly(total, parts)

    assert len(sizes) == parts
    assert sum(sizes) == total
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("parts", [0, -1])
def test_split_evenly_rejects_fewer_than_one_part(parts: int) -> None:
    with pytest.raises(ValueError, match=f"parts must be >= 1, got {parts}"):
        split_evenly(10, parts)


# --- BatchPlan -----------------------------------------------------------------------------

PLANS = [
    BatchPlan(n_train=1000, batch_size=64, workers=1),
    BatchPlan(n_train=1000, batch_size=64, workers=3),
    BatchPlan(n_train=1001, batch_size=65, workers=4),
    BatchPlan(n_train=10, batch_size=10, workers=2),
    BatchPlan(n_train=7, batch_size=3, workers=3),
]


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_shards_cover_every_row_exactly_once(plan: BatchPlan) -> None:
    owners = np.zeros(plan.n_train, dtype=int)
    for start, size in zip(plan.shard_starts, plan.shard_sizes, strict=True):
        owners[start : start + size] += 1

    assert len(plan.shard_sizes) == plan.workers
    assert (owners == 1).all()
    assert plan.shard_starts[0] == 0
    assert plan.shard_starts[-1] + plan.shard_sizes[-1] == plan.n_train


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_local_batches_sum_to_the_global_batch(plan: BatchPlan) -> None:
    assert len(plan.local_batches) == plan.workers
    assert sum(plan.local_batches) == plan.batch_size
    assert min(plan.local_batches) >= 1


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_an_epoch_is_enough_steps_for_every_row(plan: BatchPlan) -> None:
    steps = plan.steps_per_epoch

    assert (steps - 1) * plan.batch_size < plan.n_train <= steps * plan.batch_size
    assert sum(plan.last_batches) == plan.n_train - (steps - 1) * plan.batch_size
    assert all(0 <= r <= b for r, b in zip(plan.last_batches, plan.local_batches, strict=True))


def test_steps_per_epoch_of_a_worked_example() -> None:
    # 1000 rows in batches of 64: 15 full steps and a last one of R = 40 rows (14 + 13 + 13).
    plan = BatchPlan(n_train=1000, batch_size=64, workers=3)

    assert plan.steps_per_epoch == 16
    assert plan.local_batches == [22, 21, 21]
    assert plan.last_batches == [14, 13, 13]
    assert plan.shard_sizes == [22 * 15 + 14, 21 * 15 + 13, 21 * 15 + 13]
    assert plan.shard_starts == [0, 344, 672]


def test_a_last_step_smaller_than_the_worker_count_leaves_some_workers_idle() -> None:
    plan = BatchPlan(n_train=9, batch_size=4, workers=4)  # steps of 4, 4 and 1 rows

    assert plan.steps_per_epoch == 3
    assert plan.last_batches == [1, 0, 0, 0]
    assert [plan.batch_size_at(1, index) for index in range(3)] == [1, 1, 0]


@pytest.mark.parametrize("plan", [*PLANS, BatchPlan(n_train=9, batch_size=4, workers=4)], ids=repr)
@pytest.mark.parametrize("epoch", [0, 3])
def test_every_training_row_is_read_exactly_once_per_epoch(plan: BatchPlan, epoch: int) -> None:
    read = np.concatenate(
        [plan.global_batch(epoch, index, seed=11) for index in range(plan.steps_per_epoch)]
    )

    np.testing.assert_array_equal(np.sort(read), np.arange(plan.n_train))


def test_each_epoch_reshuffles_the_batches() -> None:
    plan = BatchPlan(n_train=1000, batch_size=64, workers=3)

    first = plan.global_batch(0, 0, seed=11)
    second = plan.global_batch(1, 0, seed=11)

    assert len(first) == len(second) == 64
    assert not np.array_equal(np.sort(first), np.sort(second))


def test_a_step_index_outside_the_epoch_is_rejected() -> None:
    plan = BatchPlan(n_train=100, batch_size=10, workers=2)

    with pytest.raises(ValueError, match="step index 10 is outside"):
        plan.rows(0, 0, 10, seed=0)


def test_shard_starts_are_plain_ints() -> None:
    plan = BatchPlan(n_train=100, batch_size=10, workers=3)

    assert all(type(start) is int for start in plan.shard_starts)


@pytest.mark.parametrize(
    ("n_train", "batch_size", "workers"),
    [
        (10, 11, 1),  # the batch is larger than the data
        (10, 12, 2),  # each local batch of 6 exceeds its shard of 5
        (0, 1, 1),  # no data at all
    ],
)
def test_a_batch_larger_than_the_data_is_rejected(
    n_train: int, batch_size: int, workers: int
) -> None:
    with pytest.raises(ValueError, match=f"batch_size {batch_size} is larger"):
        BatchPlan(n_train=n_train, batch_size=batch_size, workers=workers)


@pytest.mark.parametrize(
    ("batch_size", "workers"),
    [
        (0, 1),  # nothing to read
        (2, 3),  # one worker would get an empty local batch
        (4, 0),  # nobody to read it
    ],
)
def test_a_plan_that_leaves_a_worker_without_rows_is_rejected(
    batch_size: int, workers: int
) -> None:
    with pytest.raises(ValueError, match="workers"):
        BatchPlan(n_train=100, batch_size=batch_size, workers=workers)


# --- epoch_order ---------------------------------------------------------------------------


def test_epoch_order_is_a_permutation_of_the_shard() -> None:
    order = epoch_order(101, seed=5, epoch=0, worker_index=0)

    assert order.shape == (101,)
    np.testing.assert_array_equal(np.sort(order), np.arange(101))


def test_epoch_order_repeats_for_the_same_seed_epoch_and_worker() -> None:
    first = epoch_order(200, seed=5, epoch=3, worker_index=1)
    again = epoch_order(200, seed=5, epoch=3, worker_index=1)

    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize(
    "changed",
    [{"epoch": 4}, {"worker_index": 2}, {"seed": 6}],
    ids=["epoch", "worker", "seed"],
)
def test_epoch_order_differs_when_epoch_worker_or_seed_changes(changed: dict) -> None:
    base = {"seed": 5, "epoch": 3, "worker_index": 1}

    first = epoch_order(200, **base)
    other = epoch_order(200, **{**base, **changed})

    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(np.sort(other), np.arange(200))


def test_epoch_order_of_an_empty_shard_is_empty() -> None:
    assert epoch_order(0, seed=0, epoch=0, worker_index=0).shape == (0,)


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_within_an_epoch_no_worker_reads_a_row_twice(plan: BatchPlan) -> None:
    for worker, shard in enumerate(plan.shard_sizes):
        order = epoch_order(shard, seed=9, epoch=2, worker_index=worker)
        batches = [plan.local_rows(order, worker, i) for i in range(plan.steps_per_epoch)]
        read = np.concatenate(batches)

        assert [len(rows) for rows in batches[:-1]] == [plan.local_batches[worker]] * (
            plan.steps_per_epoch - 1
        )
        assert len(batches[-1]) == plan.last_batches[worker]
        assert np.array_equal(np.sort(read), np.arange(shard))


@pytest.mark.parametrize("workers", [1, 3, 4])
def test_the_workers_read_every_training_row_once_per_epoch(workers: int) -> None:
    plan = BatchPlan(n_train=103, batch_size=24, workers=workers)  # last step: 7 rows
    rows = np.arange(plan.n_train)
    read = []
    for i in range(workers):
        start, size = plan.shard_starts[i], plan.shard_sizes[i]
        worker = gradient_worker(
            np.zeros((size, 1), np.float32),
            np.zeros((size, 2), np.float32),
            sizes=[1, 2],
            activations=["identity"],
            loss="mse",
            local_batch=plan.local_batches[i],
            steps_per_epoch=plan.steps_per_epoch,
            seed=4,
            worker_index=i,
        )
        for index in range(plan.steps_per_epoch):
            local = worker._batch_rows(2, index)
            np.testing.assert_array_equal(
                local, plan.local_rows(epoch_order(size, seed=4, epoch=2, worker_index=i), i, index)
            )
            read.append(rows[start : start + size][local])

    np.testing.assert_array_equal(np.sort(np.concatenate(read)), rows)
