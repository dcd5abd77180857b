"""ParameterServer: holds θ (one flat buffer) and its optimizer state, applies gradients.

A plain class; the job runner makes it a Ray actor. Workers only compute gradients;
this is the one place θ changes: θ ← θ − η_t·g (or the configured optimizer's step),
with η_t from the learning-rate schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.paramserver.optimizers import (
    LRSchedule,
    OptimizerConfig,
    apply_update,
    global_norm,
    init_state,
    learning_rate_at,
)
from worker.gradient_worker import GradientResult
from worker.layout import ParamLayout


@dataclass(frozen=True)
class StepStats:
    """What one applied update looked like.

    version: θ's version after the update (the number of updates applied).
    loss: sample-weighted mean of the workers' losses, i.e. the global batch's mean loss.
    learning_rate: the η_t this update used (the schedule's value at this step).
    gradient_norms: ‖∂loss/∂W^l‖ of the averaged gradient, per layer.
    gradient_norm: ‖g‖ over all of θ's averaged gradient, before any clipping.
    """

    version: int
    samples: int
    loss: float
    learning_rate: float
    gradient_norms: tuple[float, ...]
    gradient_norm: float = 0.0


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
        schedule: LRSchedule | None = None,
        dtype: str = "float32",
        init: str | Sequence[str] = "auto",
    ) -> None:
        """`schedule` scales optimizer.learning_rate per step (constant when None);
        `dtype` ("float32" or "float64") is θ's, which workers compute in; `init` picks
        the initialiser ("auto", "he", "glorot", or one per layer)."""
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.layout = ParamLayout(sizes)
        self.optimizer = optimizer
        self.schedule = schedule or LRSchedule()
        self.workers = workers
        self.theta = self.layout.init_theta(activations, seed, dtype, init=init)  # (P,)
        self.state = init_state(optimizer, self.layout.size, self.theta.dtype)
        self._g = np.zeros_like(self.theta)  # (P,) averaged gradient, reused every step
        self.version = 0
        self._last: tuple[StepStats, np.ndarray] | None = None  # for a retried step

    def get_theta(self) -> np.ndarray:
        """A snapshot of θ: (P,) in θ's dtype (float32 unless asked otherwise)."""
        return self.theta.copy()

    def ping(self) -> int:
        """θ's version; answers as long as the actor is alive and not stuck."""
        return self.version

    def state_dict(self) -> dict:
        """θ, the optimizer state and θ's version, as copies (for a checkpoint)."""
        return {
            "step": self.version,
            "theta": self.theta.copy(),
            "optimizer_step": self.state.step,
            "buffers": {name: array.copy() for name, array in self.state.buffers.items()},
        }

    def restore(self, *, step: int, theta: np.ndarray, optimizer_step: int, buffers: dict) -> None:
        """Continue from a checkpoint: θ and optimizer state as they were after `step`."""
        if theta.shape != self.theta.shape or set(buffers) != set(self.state.buffers):
            raise ValueError("the checkpoint does not fit this model and optimizer")
        self.theta[:] = theta
        for name, array in buffers.items():
            self.state.buffers[name][:] = array
        self.state.step = optimizer_step
        self.version = step
        self._last = None

    def apply_gradients(
        self, *results: GradientResult, step: int | None = None
    ) -> tuple[StepStats, np.ndarray]:
        """One BSP step from one result per worker; returns (stats, θ after the step).

        With `step`, the call is idempotent: a step already applied (a retried push)
        returns its stats again and changes nothing.
        """
        if step is not None and step <= self.version:
            if self._last is None or self._last[0].version != step:
                raise ValueError(f"step {step} was applied before; θ is at version {self.version}")
            return self._last
        if step is not None and step != self.version + 1:
            raise ValueError(f"step {step} cannot follow version {self.version}")
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
        norms = tuple(float(np.linalg.norm(W)) for W, _ in self.layout.views(g))
        gradient_norm = global_norm(g)
        eta = learning_rate_at(self.version + 1, self.optimizer.learning_rate, self.schedule)
        apply_update(self.theta, g, self.state, self.optimizer, learning_rate=eta)
        self.version += 1
        stats = StepStats(
            version=self.version,
            samples=total,
            loss=loss,
            learning_rate=eta,
            gradient_norms=norms,
            gradient_norm=gradient_norm,
        )
        self._last = (stats, self.theta.copy())
        return self._last
