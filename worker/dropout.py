"""Inverted dropout: seeded masks, drawn once per (seed, worker, step) so runs repeat.

For a hidden layer with rate p, each unit is kept with probability 1 − p and scaled:

    ã = a ⊙ m,   m = 1[u ≥ p] / (1 − p),   u ~ U[0, 1)     # (N, H)

so E[ã] = a and inference simply runs the whole network. Backward multiplies by the
same mask: ∂loss/∂a = ∂loss/∂ã ⊙ m. Masks are drawn on the host with NumPy, so a CPU and
a GPU worker with the same seed use the same units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

# Keeps dropout's random stream apart from the data order's (`worker.sampling`).
_DROPOUT_STREAM = 0x0D5


def dropout_rates(dropout: float | Sequence[float], num_hidden: int) -> tuple[float, ...]:
    """One rate p ∈ [0, 1) per hidden layer, from one rate for all or one per hidden layer."""
    rates = [dropout] * num_hidden if isinstance(dropout, int | float) else list(dropout)
    if len(rates) != num_hidden:
        raise ValueError(
            f"dropout must be one rate or one per hidden layer ({num_hidden}), got {len(rates)}"
        )
    for rate in rates:
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (math.isfinite(rate) and 0.0 <= rate < 1.0)
        ):
            raise ValueError(f"dropout rates must be in [0, 1), got {rate!r}")
    return tuple(float(rate) for rate in rates)


def step_rng(seed: int, worker_index: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for the masks of batch `index` of `epoch` on worker `worker_index`."""
    return np.random.default_rng([seed, worker_index, epoch, index, _DROPOUT_STREAM])


def draw_masks(
    rng: np.random.Generator,
    rates: Sequence[float],
    batch: int,
    widths: Sequence[int],
    dtype: DTypeLike = np.float32,
) -> list[np.ndarray | None]:
    """Scaled masks m^l (batch, widths[l]) for every hidden layer; None where p = 0."""
    masks: list[np.ndarray | None] = []
    for rate, width in zip(rates, widths, strict=True):
        if rate == 0.0:
            masks.append(None)
            continue
        uniform = rng.random((batch, width), dtype=np.float32)
        masks.append(((uniform >= rate) / (1.0 - rate)).astype(dtype))
    return masks
