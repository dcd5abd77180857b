"""ParameterServer: holds θ (one flat buffer) and its optimizer state, applies gradients.

A plain class; the job runner makes it a Ray actor. Workers only compute gradients;
this is the one place θ changes: θ ← θ − η·g (or the configured optimizer's step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.paramserver.optimizers import OptimizerConfig, apply_update, init_state
from worker.gradient_worker import GradientResult
from worker.layout import ParamLayout


@dataclass(frozen=True)
class StepStats:
    """What one applied update looked like.

    version: θ's version after the update (the number of updates applied).
    loss: sample-weighted mean of the workers' losses, i.e. the global batch's mean loss.
    """

    version: int
    samples: int
    loss: float
    learning_rate: float
    gradient_norms: tuple[float, ...]


class ParameterServer:
    """Bulk-synchronous parameter server for one job.

    Each `apply_gradients` call takes one gradient per worker, averages them weighted
    by sample count, g = Σ_i n_i g_i / Σ_i n_i, applies one optimizer step and moves
    θ's version up by one.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[int],
        activations: Sequence[str],
        optimizer: OptimizerConfig,
        workers: int,
        seed: int,
    ) -> None:
        self.layout = ParamLayout(sizes)
        self.optimizer = optimizer
        self.workers = workers
        self.theta = self.layout.init_theta(activations, seed)  # (P,) float32
        self.state = init_state(optimizer, self.layout.size, self.theta.dtype)
        self._g = np.zeros_like(self.theta)  # (P,) averaged gradient, reused every step
        self.version = 0

    def get_theta(self) -> np.ndarray:
        """A snapshot of θ: (P,) float32."""
        return self.theta.copy()

    def apply_gradients(self, *results: GradientResult) -> tuple[StepStats, np.ndarray]:
        """One BSP step from one result per worker; returns (stats, θ after the step)."""
        if len(results) != self.workers:
            raise ValueError(f"bsp needs {self.workers} gradients per step, got {len(results)}")
        for r in results:
            if r.gradient.shape != self.theta.shape or r.samples < 1:
                raise ValueError(
                    f"a gradient must be {self.theta.shape} over >= 1 sample, "
                    f"got {r.gradient.shape} over {r.samples}"
                )
        total = sum(r.samples for r in results)
        g = self._g
        g.fill(0.0)
        for r in results:
            g += (r.samples / total) * r.gradient  # Σ_i (n_i / n) g_i
        loss = sum(r.samples * r.loss for r in results) / total
        apply_update(self.theta, g, self.state, self.optimizer)
        self.version += 1
        norms = tuple(float(np.linalg.norm(W)) for W, _ in self.layout.views(g))
        stats = StepStats(
            version=self.version,
            samples=total,
            loss=loss,
            learning_rate=self.optimizer.learning_rate,
            gradient_norms=norms,
        )
        return stats, self.theta.copy()
