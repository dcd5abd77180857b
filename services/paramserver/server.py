"""ParameterServer: holds θ (or one contiguous shard of it) and its optimizer state, and
applies the gradients it is sent (the StepStats it returns are in `step_stats`).

A plain class; the job runner makes it a Ray actor (threaded, so a push waiting for
its gradient never blocks another's). Workers only compute gradients; this is the one
place θ changes: θ ← θ − η_t·g (or the configured optimizer's step), with η_t from the
learning-rate schedule. Three consistency modes:

- bsp: `apply_gradients` takes one gradient per worker, averages them weighted by
  sample count, g = Σ_i n_i g_i / Σ_i n_i, and applies one update: θ's version + 1.
- asp: `push` applies each worker's gradient as its own update, as soon as it comes.
- ssp: like asp; the runner lets a worker start clock c only once every worker has
  pushed c − s gradients (s = the staleness bound). `read_theta` notes the slowest
  worker's clock at every read, and each push's StepStats carry the worker's lead
  over it (`clock_lead`, ≤ s under ssp), which the job's metric points report.

For asp/ssp the staleness of a gradient is θ's version when it is applied minus the
version it was computed on (recorded when the worker read θ); with
`staleness_aware_lr`, η is scaled by 1 / (1 + staleness).

With S shards, shard s holds θ[lo_s : hi_s] (`ParamLayout.shard_bounds`) and updates
it independently; element-wise optimizers make that the same as one server (global-norm
clipping is the exception, and a sharded job cannot ask for it).

θ leaves the server by one path for use outside training: `export`, (step, θ), whose
ObjectRef the runner hands on (final weights, latest weights, evaluation). The other
reads are training's own: `theta_at` and `apply_gradients`' θ after the step (bsp, the
next step's input), `read_theta` (asp/ssp), and `state_dict` (checkpoints: θ with the
optimizer state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from services.paramserver.optimizers import (
    apply_update,
    init_state,
    learning_rate_at,
)
from services.paramserver.server_config import ServerConfig
from services.paramserver.step_stats import StepStats
from worker.compression import Compressed, decompress
from worker.gradient_worker import GradientResult
from worker.layout import ParamLayout

CONSISTENCY_MODES = ("bsp", "ssp", "asp")
_KEPT_PUSHES = 4096  # (worker, clock) results remembered so a retried push is applied once


class ParameterServer:
    """One job's parameter server (or one of its S shards); see the module docstring."""

    def __init__(
        self,
        *,
        sizes: Sequence[int],
        server: ServerConfig,
        workers: int,
        consistency: str = "bsp",
        staleness_aware_lr: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        """θ for layer `sizes`, the optimizer and θ's make-up from `server`; `workers`
        push gradients; `shard` = (s, S): hold the s-th of S contiguous parts of θ."""
        optimizer, dtype = server.optimizer, server.dtype
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if consistency not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}, got {consistency!r}")
        index, count = shard
        if count > 1 and optimizer.clip_norm:
            raise ValueError("global-norm clipping needs the whole gradient: use one shard")
        self.layout = ParamLayout(sizes)
        self.lo, self.hi = self.layout.shard_bounds(count)[index]
        self.optimizer = optimizer
        self.schedule = server.schedule
        self.workers = workers
        self.consistency = consistency
        self.staleness_aware_lr = staleness_aware_lr
        theta = self.layout.init_theta(server.activations, server.seed, dtype, init=server.init)
        self.theta = theta[self.lo : self.hi].copy()  # (hi − lo,): this shard of θ
        self.state = init_state(optimizer, len(self.theta), self.theta.dtype)
        self._g = np.zeros_like(self.theta)  # the applied gradient, reused every update
        self._part = np.zeros_like(self.theta)  # one decompressed gradient
        self.version = 0
        self._lock = threading.Lock()
        self._last: tuple[StepStats, np.ndarray] | None = None  # bsp: for a retried step
        self._clocks = [0] * workers  # asp/ssp: per worker, every clock below it is applied
        self._ahead: list[set[int]] = [set() for _ in range(workers)]  # applied, above it
        self._reads: dict[tuple[int, int], tuple[int, int]] = {}  # (w, c) → (version, min clock)
        self._pushed: dict[tuple[int, int], StepStats] = {}  # (w, c) → its stats

    # --- reads -------------------------------------------------------------------------

    def export(self) -> tuple[int, np.ndarray]:
        """(step, θ after it) taken together: θ is this shard's part, (hi − lo,) in θ's
        dtype; step is θ's version (bsp) or the slowest worker's clock (asp/ssp)."""
        with self._lock:
            return self._step(), self.theta.copy()

    def theta_at(self, step: int) -> np.ndarray:
        """θ for bsp step `step` (1-based): the compiled step graph's first node."""
        with self._lock:
            if step != self.version + 1 and (self._last is None or step != self.version):
                raise ValueError(f"step {step} cannot follow version {self.version}")
            return self.theta.copy()

    def read_theta(self, worker: int, clock: int) -> np.ndarray:
        """θ for `worker`'s gradient number `clock` (asp/ssp); records the version read
        and the slowest worker's clock at that moment."""
        with self._lock:
            self._reads[(worker, clock)] = (self.version, min(self._clocks))
            return self.theta.copy()

    def placement(self) -> dict[str, int]:
        """This server's process id (its worker's `placement` has the node too)."""
        return {"pid": os.getpid()}

    def ping(self) -> int:
        """θ's version; answers as long as the actor is alive and not stuck."""
        return self.version

    def clocks(self) -> list[int]:
        """Per worker, the clock below which every gradient is applied (asp/ssp)."""
        with self._lock:
            return list(self._clocks)

    def state_dict(self) -> dict:
        """θ, the optimizer state and θ's version, as copies (for a checkpoint)."""
        with self._lock:
            return {
                "step": self._step(),
                "theta": self.theta.copy(),
                "optimizer_step": self.state.step,
                "buffers": {name: array.copy() for name, array in self.state.buffers.items()},
            }

    def restore(self, *, step: int, theta: np.ndarray, optimizer_step: int, buffers: dict) -> None:
        """Continue from a checkpoint: θ (this shard's part) and optimizer state as they
        were after `step`; for asp/ssp every worker's clock restarts at `step`."""
        if theta.shape != self.theta.shape or set(buffers) != set(self.state.buffers):
            raise ValueError("the checkpoint does not fit this model and optimizer")
        with self._lock:
            self.theta[:] = theta
            for name, array in buffers.items():
                self.state.buffers[name][:] = array
            self.state.step = optimizer_step
            self.version = step if self.consistency == "bsp" else optimizer_step
            self._clocks = [step] * self.workers
            self._ahead = [set() for _ in range(self.workers)]
            self._last = None
            self._pushed.clear()
            self._reads.clear()

    # --- bsp ---------------------------------------------------------------------------

    def apply_gradients(
        self, *results: GradientResult, step: int | None = None
    ) -> tuple[StepStats, np.ndarray]:
        """One BSP step from one result per worker; returns (stats, θ after the step:
        the next step's input when steps go as tasks).

        With `step`, the call is idempotent: a step already applied (a retried push)
        returns its stats again and changes nothing.
        """
        with self._lock:
            if step is not None and step <= self.version:
                if self._last is None or self._last[0].version != step:
                    raise ValueError(
                        f"step {step} was applied before; θ is at version {self.version}"
                    )
                return self._last
            if step is not None and step != self.version + 1:
                raise ValueError(f"step {step} cannot follow version {self.version}")
            if len(results) != self.workers:
                raise ValueError(f"bsp needs {self.workers} gradients per step, got {len(results)}")
            for r in results:
                self._check(r)
            total = sum(r.samples for r in results)
            if total < 1:
                raise ValueError("a step needs at least one sample")
            g = self._g
            g.fill(0.0)
            for r in results:
                if r.samples:
                    g += (r.samples / total) * self._dense(r)  # Σ_i (n_i / n) g_i
            loss = sum(r.samples * r.loss for r in results) / total
            eta = learning_rate_at(self.version + 1, self.optimizer.learning_rate, self.schedule)
            squares, square = self.layout.squares(g, self.lo)
            stats = StepStats(
                version=self.version + 1,
                samples=total,
                loss=loss,
                learning_rate=eta,
                weight_squares=tuple(squares),
                square=square,
                staleness=(0,) * len(results),
                bytes_pushed=sum(r.nbytes for r in results),
                compute_seconds=sum(r.compute_seconds for r in results) / len(results),
            )
            apply_update(self.theta, g, self.state, self.optimizer, learning_rate=eta)
            self.version += 1
            self._last = (stats, self.theta.copy())
            return self._last

    def apply_step(self, step: int, *results: GradientResult) -> StepStats:
        """`apply_gradients` for the compiled step graph: only the stats come back."""
        return self.apply_gradients(*results, step=step)[0]

    # --- asp / ssp ---------------------------------------------------------------------

    def push(self, result: GradientResult) -> StepStats:
        """Apply one worker's gradient as its own update (asp/ssp). Idempotent per
        (worker, clock): a retried push returns the stats it had and changes nothing."""
        if self.consistency == "bsp":
            raise ValueError("push is for asp/ssp; bsp steps go through apply_gradients")
        self._check(result)
        key = (result.worker, result.clock)
        with self._lock:
            if key in self._pushed:
                return self._pushed[key]
            if not 0 <= result.worker < self.workers:
                raise ValueError(f"worker must be in [0, {self.workers}), got {result.worker}")
            if (
                result.clock < self._clocks[result.worker]
                or result.clock in self._ahead[result.worker]
            ):
                raise ValueError(
                    f"worker {result.worker}'s clock {result.clock} was applied before "
                    "and is no longer remembered"
                )
            # a push whose θ read this server did not note counts as read at the push
            read_version, slowest = self._reads.pop(key, (self.version, result.clock))
            staleness = self.version - read_version
            eta = learning_rate_at(result.clock + 1, self.optimizer.learning_rate, self.schedule)
            if self.staleness_aware_lr:
                eta /= 1 + staleness  # η / (1 + τ)
            g = self._dense(result)
            squares, square = self.layout.squares(g, self.lo)
            stats = StepStats(
                version=self.version + (1 if result.samples else 0),
                samples=result.samples,
                loss=result.loss,
                learning_rate=eta,
                weight_squares=tuple(squares),
                square=square,
                staleness=(staleness,),
                clock_lead=(result.clock - slowest,),
                bytes_pushed=result.nbytes,
                compute_seconds=result.compute_seconds,
                worker=result.worker,
                clock=result.clock,
            )
            if result.samples:  # an epoch's empty last batch only moves the clock
                apply_update(self.theta, g, self.state, self.optimizer, learning_rate=eta)
                self.version += 1
            ahead = self._ahead[result.worker]
            ahead.add(result.clock)  # pushes may arrive out of order (threads)
            while self._clocks[result.worker] in ahead:
                ahead.remove(self._clocks[result.worker])
                self._clocks[result.worker] += 1
            self._pushed[key] = stats
            if len(self._pushed) > _KEPT_PUSHES:
                del self._pushed[next(iter(self._pushed))]  # the oldest
            return stats

    # --- helpers -----------------------------------------------------------------------

    def _step(self) -> int:
        """The step θ is at: its version (bsp), the slowest worker's clock (asp/ssp)."""
        return self.version if self.consistency == "bsp" else min(self._clocks)

    def _check(self, r: GradientResult) -> None:
        size = r.gradient.size if isinstance(r.gradient, Compressed) else r.gradient.shape[0]
        if size != len(self.theta) or r.samples < 0:
            raise ValueError(
                f"a gradient must have {len(self.theta)} entries over >= 0 samples, "
                f"got {size} over {r.samples}"
            )

    def _dense(self, r: GradientResult) -> np.ndarray:
        if isinstance(r.gradient, Compressed):
            return decompress(r.gradient, out=self._part)
        return r.gradient
