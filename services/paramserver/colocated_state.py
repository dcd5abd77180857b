"""A colocated worker's shard state and checkpoint side: the records it hands the runner
(`ShardState`, its part of a checkpoint; `Drained`, the steps since the last drain), the
parameter server's configuration it holds (`ServerConfig`), and `ShardKeeper`, the half of
`ColocatedWorker` that restores, snapshots and reads out that state while the exchange
loop (`colocated`) runs.

θ leaves a colocated worker by one path for use outside training: `export`, (step, θ),
whose ObjectRef the runner hands on (final and latest weights). The shard snapshots
drained with the statistics are checkpoints (θ with the optimizer state), not exports.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from services.paramserver.optimizers import OptimizerState
from services.paramserver.step_stats import StepStats


@dataclass(frozen=True)
class ShardState:
    """One shard's part of a checkpoint: θ[lo:hi], the optimizer's buffers over it and
    its update count, as of `step`."""

    step: int
    theta: np.ndarray  # (hi − lo,)
    optimizer_step: int
    buffers: dict[str, np.ndarray]
    shard: int = 0  # which of the workers' shards


@dataclass
class Drained:
    """What `drain` hands the runner: the steps done since the last drain."""

    stats: list[StepStats] = field(default_factory=list)
    snapshots: list[ShardState] = field(default_factory=list)
    is_held: bool = False  # the loop waits for `drain` to allow its next step


def thread_runqueue_seconds() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux's
    /proc/thread-self/schedstat, its second field); None where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class ShardKeeper:
    """What a `ColocatedWorker` keeps of its shard and hands the runner. A mixin:
    `ColocatedWorker.__init__` sets every attribute it reads (annotated here)."""

    index: int
    lo: int
    hi: int
    step: int
    theta: np.ndarray  # (P,)
    state: OptimizerState  # this shard's
    _lock: threading.Condition
    _drained: Drained
    _latest: tuple[int, np.ndarray] | None
    _theta_wanted: bool
    _training: bool
    _ended: bool
    _allowed: int | None
    _is_held: bool
    _profile: np.ndarray  # (4,)
    _profile_steps: int
    _cpu_at_start: float
    _preempted_s: float | None  # the step loop's thread runnable but not running, Σ

    def _restore(self, resume: ShardState, theta: np.ndarray) -> None:
        if resume.theta.shape != (self.hi - self.lo,) or set(resume.buffers) != set(
            self.state.buffers
        ):
            raise ValueError("the checkpoint does not fit this model, optimizer and shard")
        theta[self.lo : self.hi] = resume.theta
        for name, array in resume.buffers.items():
            self.state.buffers[name][:] = array
        self.state.step = resume.optimizer_step
        self.step = resume.step

    def drain(self, timeout_s: float = 0.0, allowed: int | None = None) -> Drained:
        """Step statistics and snapshots since the last drain, oldest first; waits up to
        `timeout_s` first, and returns at once when the step loop has ended or is held
        (so the runner hears of the last step, a failure or a held loop without waiting
        out the period). Steps up to `allowed` may start from now on where the loop
        has a limit (it only ever rises)."""
        with self._lock:
            if allowed is not None and self._allowed is not None and allowed > self._allowed:
                self._allowed = allowed
                self._lock.notify_all()
            if timeout_s > 0:
                self._lock.wait_for(lambda: self._ended or self._is_held, timeout=timeout_s)
            drained, self._drained = self._drained, Drained()
            drained.is_held = self._is_held
        return drained

    def shard_state(self) -> ShardState:
        """This shard's θ and optimizer state as of the last step (copies)."""
        return ShardState(
            step=self.step,
            theta=self.theta[self.lo : self.hi].copy(),
            optimizer_step=self.state.step,
            buffers={name: array.copy() for name, array in self.state.buffers.items()},
            shard=self.index,
        )

    def export(self, timeout_s: float = 10.0) -> tuple[int, np.ndarray]:
        """(step, the whole θ after it), taken between two steps; (P,). While training,
        waits up to `timeout_s` for the step under way (TimeoutError after)."""
        with self._lock:
            if not self._training or self._is_held:  # θ is not changing
                return self.step, self.theta.copy()
            self._theta_wanted = True
            if not self._lock.wait_for(
                lambda: not (self._theta_wanted and self._training) or self._is_held,
                timeout=timeout_s,
            ):
                raise TimeoutError(f"no step finished within {timeout_s:g} s")
            if self._theta_wanted:  # training ended first, or the loop is held
                self._theta_wanted = False
                return self.step, self.theta.copy()
            return self._latest

    def profile(self) -> dict[str, float]:
        """Mean seconds per step in compute, communication, waiting and update, this
        process's CPU seconds per step since its first step, and the seconds per step its
        step loop was ready to run but waited for a CPU (preempted; over the step loops
        that have returned; None before the first has or where the kernel does not
        say). Preemption is inside
        the phases, not beside them: it lengthens whichever phase it falls in."""
        with self._lock:
            steps = max(self._profile_steps, 1)
            compute, communication, waiting, update = self._profile / steps
            cpu = (time.process_time() - self._cpu_at_start) / steps
            preempted = None if self._preempted_s is None else self._preempted_s / steps
        return {
            "steps": self._profile_steps,
            "compute_s": float(compute),
            "communication_s": float(communication),
            "waiting_s": float(waiting),
            "update_s": float(update),
            "cpu_s": float(cpu),
            "preempted_s": preempted,
            "pid": os.getpid(),
        }
