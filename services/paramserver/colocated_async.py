"""AsyncColocatedWorker: asp and ssp on colocated workers of one node.

The parameter server's state (θ, its optimizer buffers, per shard the update count and
θ's version, per worker its clock) lives in one shared-memory file; each of the N
shards [lo_s, hi_s) has one lock (a thread lock inside a process, a POSIX record lock
between processes: both block in the kernel, neither spins). A worker's gradient
number c goes:

    wait (ssp only) until c − min_j clock_j ≤ s          # blocked on its peers' sockets
    read: θ_local[shard] ← θ[shard] under each shard's lock, noting its version
    g = ∂loss/∂θ at θ_local                                 # the engine, as for bsp
    push: under each shard's lock, the parameter server's update of θ[shard] with η_c
          (η_c / (1 + τ) with staleness_aware_lr), τ = version now − version read
    clock_j ← c + 1, and a byte to every peer (what an ssp waiter blocks on)

The update is the parameter server's code over the parameter server's state; the worker
process only lends it a thread, as BytePS's colocated servers share the worker's host.
Workers on several nodes use separate parameter-server actors instead (the runner's
fallback). `state_dict` (a checkpoint) and `export` (θ for the final or latest
weights) take every lock in shard order for a consistent θ and state.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from services.paramserver.collective import Endpoint, SharedArrays, SharedMemoryFull
from services.paramserver.colocated import EXCHANGE_TIMEOUT_S, ColocatedWorker, ShardState
from services.paramserver.optimizers import (
    OptimizerState,
    apply_update,
    learning_rate_at,
)
from services.paramserver.server import StepStats


class NotOneNode(Exception):
    """asp/ssp colocation needs shared memory: the workers landed on several nodes, or
    the node's shared memory has no room."""


class AsyncColocatedWorker(ColocatedWorker):
    """Worker `index` of an asp/ssp job whose parameter server is in shared memory."""

    def __init__(self, *, staleness_bound: int | None, staleness_aware_lr: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bound = staleness_bound  # None: asp
        self.staleness_aware_lr = staleness_aware_lr
        self.bounds = self.layout.shard_bounds(self.workers)
        self._resume_optimizer_step = self.state.step
        self._resume_buffers = self.state.buffers  # this shard's, as restored
        self._locks = [threading.Lock() for _ in self.bounds]
        self._lock_file: int | None = None
        self._states: list[OptimizerState] = []
        self._g = np.zeros_like(self.theta)  # (P,) this worker's gradient

    def join(self, endpoints: Sequence[Endpoint], tag: str) -> str:
        if len({e.node_id for e in endpoints}) > 1:
            raise NotOneNode("asp/ssp colocation needs every worker on one node")
        if self.workers > 1:
            self.mesh.connect(endpoints)
        P, N, dtype = len(self.theta), self.workers, self.theta.dtype.str
        specs = {
            "theta": ((P,), dtype),
            **{f"buffer:{name}": ((P,), dtype) for name in self.state.buffers},
            "versions": ((N,), "<i8"),  # per shard: updates applied to it
            "optimizer_steps": ((N,), "<i8"),
            "clocks": ((N,), "<i8"),  # per worker: gradients pushed
        }
        path = SharedArrays.path_for(tag)
        is_created = True
        if self.index == 0:
            try:
                self.shared = SharedArrays(path, specs, create=True)
                self._lock_file = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except SharedMemoryFull:
                is_created = False
        if not self.mesh.broadcast_flag(0, is_created, EXCHANGE_TIMEOUT_S):
            raise NotOneNode("no room in the node's shared memory for the parameter server")
        if self.index != 0:
            self.shared = SharedArrays(path, specs, create=False)
            self._lock_file = os.open(f"{path}.lock", os.O_RDWR)
        shared = self.shared.arrays
        lo, hi = self.lo, self.hi
        shared["theta"][lo:hi] = self._theta_local[lo:hi]
        for name, buffer in self._resume_buffers.items():
            shared[f"buffer:{name}"][lo:hi] = buffer
        shared["versions"][self.index] = self._resume_optimizer_step
        shared["optimizer_steps"][self.index] = self._resume_optimizer_step
        shared["clocks"][self.index] = self.step
        self.mesh.barrier(EXCHANGE_TIMEOUT_S)
        if self.index == 0:
            self.shared.unlink()
            os.unlink(f"{path}.lock")
        self.theta = shared["theta"]
        self._states = [
            OptimizerState(
                step=0,
                buffers={name: shared[f"buffer:{name}"][a:b] for name in self.state.buffers},
            )
            for a, b in self.bounds
        ]
        self._theta_read = np.empty_like(self.theta)  # (P,) θ as this worker read it
        return "shm"

    @contextmanager
    def _holding(self, s: int):
        """Shard s's lock: this process's threads, then the other processes."""
        with self._locks[s]:
            fcntl.lockf(self._lock_file, fcntl.LOCK_EX, 1, s)
            try:
                yield
            finally:
                fcntl.lockf(self._lock_file, fcntl.LOCK_UN, 1, s)

    # --- the loop ---------------------------------------------------------------------

    def _train(self, stop: int, snapshot_every: Sequence[int], total_steps: int) -> None:
        while self.step < stop:
            self._wait_until_allowed(self.step + 1)  # clock c is step c + 1
            self._one_push(self.step)

    def _one_push(self, clock: int) -> None:
        shared = self.shared.arrays
        clocks, versions = shared["clocks"], shared["versions"]
        started = time.perf_counter()
        while self.bound is not None and clock - int(clocks.min()) > self.bound:
            self.mesh.wait_for_news(EXCHANGE_TIMEOUT_S)
        read_versions = []
        slowest = int(clocks.min())
        for s, (a, b) in enumerate(self.bounds):
            with self._holding(s):
                self._theta_read[a:b] = self.theta[a:b]
                read_versions.append(int(versions[s]))
        read = time.perf_counter()
        g = self._g
        result = self.engine.compute_gradients_into(g, self._theta_read, clock)
        computed = time.perf_counter()
        eta = learning_rate_at(clock + 1, self.server.optimizer.learning_rate, self.server.schedule)
        staleness = 0
        order = [(self.index + k) % self.workers for k in range(self.workers)]  # spread locks
        for s in order:
            a, b = self.bounds[s]
            with self._holding(s):
                tau = int(versions[s]) - read_versions[s]
                staleness = max(staleness, tau)
                if result.samples:  # an epoch's empty last batch only moves the clock
                    state = self._states[s]
                    state.step = int(shared["optimizer_steps"][s])
                    rate = eta / (1 + tau) if self.staleness_aware_lr else eta
                    apply_update(
                        self.theta[a:b], g[a:b], state, self.server.optimizer, learning_rate=rate
                    )
                    shared["optimizer_steps"][s] = state.step
                    versions[s] += 1
        clocks[self.index] = clock + 1
        self.mesh.announce()
        pushed = time.perf_counter()
        self.step = clock + 1
        squares, square = self.layout.squares(g, 0)
        stats = StepStats(
            version=int(versions.min()),
            samples=result.samples,
            loss=result.loss,
            learning_rate=eta / (1 + staleness) if self.staleness_aware_lr else eta,
            weight_squares=tuple(squares),
            square=square,
            staleness=(staleness,),
            clock_lead=(clock - slowest,),  # ahead of the slowest worker when it read θ
            bytes_pushed=g.nbytes,  # the whole gradient, into the shared state
            bytes_pulled=self.theta.nbytes,
            compute_seconds=computed - read,
            finished_at=time.time(),
            worker=self.index,
            clock=clock,
        )
        waiting = read - started
        with self._lock:
            self._drained.stats.append(stats)
            self._profile += (computed - read, 0.0, waiting, pushed - computed)
            self._profile_steps += 1

    # --- what the runner reads --------------------------------------------------------

    @contextmanager
    def _holding_all(self):
        """Every shard's lock, in shard order: θ and the state stand still."""
        for s in range(len(self.bounds)):
            self._locks[s].acquire()
            fcntl.lockf(self._lock_file, fcntl.LOCK_EX, 1, s)
        try:
            yield
        finally:
            for s in reversed(range(len(self.bounds))):
                fcntl.lockf(self._lock_file, fcntl.LOCK_UN, 1, s)
                self._locks[s].release()

    def state_dict(self) -> ShardState:
        """The whole parameter server's state for a checkpoint, consistent: θ, the
        optimizer's buffers and update count; `step` is the slowest worker's clock."""
        with self._holding_all():
            shared = self.shared.arrays
            return ShardState(
                step=int(shared["clocks"].min()),
                theta=self.theta.copy(),
                optimizer_step=int(shared["optimizer_steps"][0]),
                buffers={name: shared[f"buffer:{name}"].copy() for name in self.state.buffers},
            )

    def export(self, timeout_s: float = 10.0) -> tuple[int, np.ndarray]:
        """(the slowest worker's clock, θ (P,)), consistent; never waits for a step
        (`timeout_s`: the bsp worker's, unused here)."""
        with self._holding_all():
            return int(self.shared.arrays["clocks"].min()), self.theta.copy()

    def close(self) -> None:
        super().close()
        if self._lock_file is not None:
            os.close(self._lock_file)
