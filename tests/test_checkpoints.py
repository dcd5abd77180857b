"""CheckpointStore: atomic writes, checksums, the newest intact checkpoint, pruning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from services.jobs.checkpoints import Checkpoint, CheckpointStore, join_shards, split_shards


def checkpoint(step: int) -> Checkpoint:
    rng = np.random.default_rng(step)
    return Checkpoint(
        step=step,
        theta=rng.normal(size=50).astype(np.float32),
        optimizer_step=step,
        buffers={"m": rng.normal(size=50).astype(np.float32), "v": np.ones(50, np.float32)},
    )


def test_the_latest_checkpoint_reads_back_exactly(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    store.save(checkpoint(10))
    store.save(checkpoint(20))
    latest = store.latest()
    expected = checkpoint(20)
    assert latest is not None and latest.step == 20 and latest.optimizer_step == 20
    np.testing.assert_array_equal(latest.theta, expected.theta)
    assert sorted(latest.buffers) == ["m", "v"]
    np.testing.assert_array_equal(latest.buffers["m"], expected.buffers["m"])


def test_only_the_newest_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (5, 10, 15, 20):
        store.save(checkpoint(step))
    assert store.steps() == [20, 15]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-15.json",
        "ckpt-15.npz",
        "ckpt-20.json",
        "ckpt-20.npz",
    ]


def test_pruning_keeps_the_newest_checkpoint_at_or_before_the_recorded_step(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.recorded = 12  # the store holds steps 1..12; the runner trained far ahead
    for step in range(10, 110, 10):
        store.save(checkpoint(step))
    assert store.steps() == [100, 90, 80, 10]  # 10: where a replacement runner resumes
    assert store.latest(at_most=12).step == 10
    store.recorded = 85  # the store caught up: 80 is the one needed now, and is kept
    store.save(checkpoint(110))
    assert store.steps() == [110, 100, 90, 80]


def test_no_recorded_step_keeps_only_the_newest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.recorded = 3  # below every checkpoint: nothing extra to keep
    for step in (5, 10, 15):
        store.save(checkpoint(step))
    assert store.steps() == [15, 10]


def test_checkpoints_past_the_recorded_step_are_discarded(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    for step in (10, 20, 30, 40):
        store.save(checkpoint(step))
    assert store.discard_after(25) == [40, 30]
    assert store.steps() == [20, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-10.json", "ckpt-10.npz", "ckpt-20.json", "ckpt-20.npz",
    ]  # fmt: skip
    assert store.discard_after(20) == []
    assert CheckpointStore(tmp_path / "none").discard_after(0) == []  # no directory yet


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete the arrays", "bad json"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(10))
    store.save(checkpoint(20))
    npz = tmp_path / "ckpt-20.npz"
    if damage == "flip a byte":
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF
        npz.write_bytes(bytes(data))
    elif damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "delete the arrays":
        npz.unlink()
    else:
        npz.with_suffix(".json").write_text("{not json")
    latest = store.latest()
    assert latest is not None and latest.step == 10
    np.testing.assert_array_equal(latest.theta, checkpoint(10).theta)


def test_a_half_written_checkpoint_without_its_description_is_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(10))
    (tmp_path / "ckpt-30.npz").write_bytes(b"partial")  # crashed before the .json
    (tmp_path / ".ckpt-40.npz.tmp").write_bytes(b"partial")  # crashed before the rename
    assert store.steps() == [10]
    assert store.latest().step == 10


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)


def test_latest_at_most_a_step_skips_newer_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for step in (10, 20, 30):
        store.save(checkpoint(step))
    assert store.latest(at_most=25).step == 20
    assert store.latest(at_most=30).step == 30
    assert store.latest(at_most=5) is None


def test_a_checkpoint_split_into_shards_joins_back_to_itself() -> None:
    theta = np.arange(10, dtype=np.float32)
    whole = Checkpoint(step=7, theta=theta, optimizer_step=7, buffers={"m": theta * 2})
    parts = split_shards(whole, [(0, 4), (4, 7), (7, 10)])
    assert [p.shard for p in parts] == [0, 1, 2] and parts[1].theta.tolist() == [4, 5, 6]
    joined = join_shards(parts)
    assert joined.step == 7 and joined.optimizer_step == 7
    np.testing.assert_array_equal(joined.theta, theta)
    np.testing.assert_array_equal(joined.buffers["m"], theta * 2)
    with pytest.raises(ValueError, match="different steps"):
        join_shards([parts[0], dataclasses.replace(parts[1], step=8)])


@pytest.mark.parametrize(
    ("step", "every", "min_interval_s", "since_last_s", "due"),
    [
        (20, 10, 0.0, 0.0, True),  # checkpoint_every set: every multiple, however soon
        (25, 10, 0.0, 5.0, False),  # not a multiple
        (20, 10, 1.0, 0.2, False),  # default cadence: an epoch later, but too soon
        (20, 10, 1.0, 1.0, True),  # ... and once a second has passed
        (100, 10, 1.0, 0.0, True),  # the last step always
        (97, 10, 1.0, 9.0, True),  # the last step even off the cadence
    ],
)
def test_checkpoint_is_due_at_multiples_no_more_often_than_the_floor_and_at_the_end(
    step: int, every: int, min_interval_s: float, since_last_s: float, due: bool
) -> None:
    from services.jobs.runner import is_checkpoint_due

    last = 97 if step == 97 else 100
    assert is_checkpoint_due(step, last, every, min_interval_s, since_last_s) is due
