"""StepStats: the record of one applied update (bsp) or one applied push (asp/ssp), as the
parameter server and the colocated workers report it to the job runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepStats:
    """What one applied update (bsp) or one applied push (asp/ssp) looked like.

    version: θ's version (this shard's) after the update: updates applied so far.
    loss: sample-weighted mean of the gradients' losses (the global batch's, for bsp).
    learning_rate: the η this update used (the schedule's value, staleness-scaled).
    weight_squares: Σ (∂loss/∂W^l)² of the applied gradient over this shard's part of θ,
        per layer; summed over shards and square-rooted: the per-layer norms.
    staleness: per gradient, θ's version at apply time minus the version it was
        computed on (0 for bsp).
    clock_lead: asp/ssp, per gradient, how many gradients its worker was ahead of the
        slowest worker when it read θ (its clock − the slowest clock then); ssp keeps
        each ≤ the staleness bound. Empty for bsp (no worker runs ahead).
    bytes_pushed: bytes of the gradients as they arrived (after compression).
    compute_seconds: mean time a worker took to compute one of the gradients.
    worker, clock: for a push, whose gradient and its clock (0-based); -1 for bsp.
    """

    version: int
    samples: int
    loss: float
    learning_rate: float
    weight_squares: tuple[float, ...]
    square: float = 0.0  # Σ g² over this shard's part of θ (biases included)
    staleness: tuple[int, ...] = ()
    clock_lead: tuple[int, ...] = ()
    bytes_pushed: int = 0
    bytes_pulled: int | None = None  # θ bytes read by workers (None: one θ per gradient)
    compute_seconds: float = 0.0
    finished_at: float | None = None  # time.time() when the step ended, where it ran
    worker: int = -1
    clock: int = -1

    @property
    def gradient_norms(self) -> tuple[float, ...]:
        """‖∂loss/∂W^l‖ per layer (exact when this is the only shard)."""
        return tuple(math.sqrt(s) for s in self.weight_squares)

    @property
    def gradient_norm(self) -> float:
        """‖g‖ over this shard's part of θ, before any clipping."""
        return math.sqrt(self.square)
