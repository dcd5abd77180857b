"""Checkpoints of a job: θ, optimizer state and step, written atomically with a checksum.

Each checkpoint is two files in the job's directory:
  ckpt-<step>.npz   the arrays (theta, optimizer buffers) — written to a temp file,
                    fsynced, then renamed, so a crash never leaves half a file;
  ckpt-<step>.json  step, θ version, optimizer step and the .npz's sha256 — written
                    after the .npz, so a checkpoint without one is ignored.
Loading takes the newest checkpoint whose sha256 matches and skips (and logs) the
others. Kept: the last `keep` checkpoints and, besides them, the newest at or before
`recorded` (the last step whose metrics the store holds): a runner that replaces this
one resumes at or before that step, so that checkpoint is the one it needs however far
the runner trained ahead. The data cursor is the step itself: every worker's batch order
follows from (seed, epoch, worker), so it is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.paramserver.colocated import ShardState

log = logging.getLogger(__name__)

_NAME = re.compile(r"ckpt-(\d+)\.json")


@dataclass(frozen=True)
class Checkpoint:
    """θ and optimizer state after `step` optimizer steps."""

    step: int
    theta: np.ndarray  # (P,) float32
    optimizer_step: int
    buffers: dict[str, np.ndarray]  # each (P,): velocity, or Adam's m and v


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class CheckpointStore:
    """The checkpoints of one job, in `directory`."""

    def __init__(self, directory: Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.recorded: int | None = None  # the store's last step; its checkpoint is kept

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write `checkpoint` and drop all but the newest `keep`; returns the .npz path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        arrays = {f"buffer_{name}": array for name, array in checkpoint.buffers.items()}
        np.savez(buffer, theta=checkpoint.theta, **arrays)
        data = buffer.getvalue()
        npz = self.directory / f"ckpt-{checkpoint.step}.npz"
        _write_atomically(npz, data)
        meta = {
            "step": checkpoint.step,
            "optimizer_step": checkpoint.optimizer_step,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _write_atomically(npz.with_suffix(".json"), json.dumps(meta).encode())
        self._prune()
        return npz

    def steps(self) -> list[int]:
        """Steps that have a checkpoint description, newest first."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def latest(self, at_most: int | None = None) -> Checkpoint | None:
        """The newest checkpoint that reads back intact (at step <= at_most), or None."""
        for step in self.steps():
            if at_most is not None and step > at_most:
                continue
            checkpoint = self._load(step)
            if checkpoint is not None:
                return checkpoint
        return None

    def _load(self, step: int) -> Checkpoint | None:
        npz = self.directory / f"ckpt-{step}.npz"
        try:
            meta = json.loads(npz.with_suffix(".json").read_text())
            data = npz.read_bytes()
        except (OSError, ValueError) as error:
            log.warning("checkpoint %s is unreadable (%s); trying an older one", npz, error)
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            log.warning("checkpoint %s fails its checksum; trying an older one", npz)
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            buffers = {
                name.removeprefix("buffer_"): archive[name]
                for name in archive.files
                if name.startswith("buffer_")
            }
            return Checkpoint(
                step=int(meta["step"]),
                theta=archive["theta"],
                optimizer_step=int(meta["optimizer_step"]),
                buffers=buffers,
            )

    def discard_after(self, step: int) -> list[int]:
        """Remove every checkpoint past `step`; returns their steps. A new runner calls
        it with the store's last step: later checkpoints come from a runner that trained
        past what was recorded, and resuming from one would skip unreported steps."""
        dropped = [s for s in self.steps() if s > step]
        for s in dropped:
            self._remove(s)
        return dropped

    def _prune(self) -> None:
        steps = self.steps()
        kept = set(steps[: self.keep])
        if self.recorded is not None:
            kept.update(next(([s] for s in steps if s <= self.recorded), []))
        for step in steps:
            if step not in kept:
                self._remove(step)

    def _remove(self, step: int) -> None:
        for suffix in (".json", ".npz"):  # the description first: then it is not listed
            (self.directory / f"ckpt-{step}{suffix}").unlink(missing_ok=True)


def split_shards(checkpoint: Checkpoint, bounds: list[tuple[int, int]]) -> list[ShardState]:
    """A checkpoint cut into the shards [lo, hi) of `bounds` (views, not copies)."""
    return [
        ShardState(
            step=checkpoint.step,
            theta=checkpoint.theta[lo:hi],
            optimizer_step=checkpoint.optimizer_step,
            buffers={name: array[lo:hi] for name, array in checkpoint.buffers.items()},
            shard=s,
        )
        for s, (lo, hi) in enumerate(bounds)
    ]


def join_shards(states: list[ShardState]) -> Checkpoint:
    """One checkpoint from every shard's state (in shard order, all of one step)."""
    steps = {state.step for state in states}
    if len(steps) != 1:
        raise ValueError(f"shard states of different steps: {sorted(steps)}")
    return Checkpoint(
        step=states[0].step,
        theta=np.concatenate([state.theta for state in states]),
        optimizer_step=states[0].optimizer_step,
        buffers={
            name: np.concatenate([state.buffers[name] for state in states])
            for name in states[0].buffers
        },
    )
