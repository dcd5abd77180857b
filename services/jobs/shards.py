"""Joining one step's per-shard parts: θ's pieces into one vector, and the StepStats of
an update's shards into one."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.paramserver.server import StepStats


def merge_shards(parts: list[StepStats]) -> StepStats:
    """One update's stats from its shards' (they share loss, samples and staleness)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return dataclasses.replace(
        first,
        weight_squares=tuple(map(sum, zip(*(p.weight_squares for p in parts), strict=True))),
        square=sum(p.square for p in parts),
        bytes_pushed=sum(p.bytes_pushed for p in parts),
        bytes_pulled=None if first.bytes_pulled is None else sum(p.bytes_pulled for p in parts),
        finished_at=max((p.finished_at for p in parts if p.finished_at), default=None),
    )


def joined(parts: list[np.ndarray]) -> np.ndarray:
    """θ from its shards' parts, in shard order: (P,)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
