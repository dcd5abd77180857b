"""ColocatedWorker: a bsp gradient worker that also holds one shard of the parameter server.

ps-lite's and BytePS's colocated servers: with N workers, worker i holds θ's shard
i = [lo_i, hi_i) (`ParamLayout.shard_bounds(N)`) and that shard's optimizer state, and a
bsp step is, on every worker at once:

    g_i   = ∂loss/∂θ on the worker's mini-batch at θ     # (P,), written into G[i]
    reduce-scatter:  ḡ[lo_i:hi_i] = Σ_j (n_j / n) G[j, lo_i:hi_i]
    update:          θ[lo_i:hi_i] ← optimizer step with η_t (this shard's state)
    all-gather:      θ whole again on every worker

The parameter-server code (`apply_update`, `learning_rate_at`) is the only thing that
changes θ, and each shard has exactly one owner; the worker's engine only computes g.
With one worker nothing moves at all. The step loop runs inside the worker (`train`);
the job runner starts it and drains step statistics in batches (`drain`), so no
coordinator is on the step path. See `collective` for the two transports.

A plain class; the runner makes it a threaded Ray actor (`drain`, `export` answer
while `train` runs). Here: set-up and the exchange loop; the shard's state and what
the runner reads are in `colocated_state`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from services.paramserver.collective import Endpoint, Mesh, PeerLost, SharedArrays, SharedMemoryFull
from services.paramserver.colocated_state import (
    Drained,
    ShardKeeper,
    ShardState,
    thread_runqueue_seconds,
)
from services.paramserver.optimizers import apply_update, init_state, learning_rate_at
from services.paramserver.server_config import ServerConfig
from services.paramserver.step_stats import StepStats
from worker.configs import WorkerConfig
from worker.gradient_worker import GradientWorker, process_placement

log = logging.getLogger(__name__)

EXCHANGE_TIMEOUT_S = 60.0  # a peer silent this long is taken for lost
_KEPT_RECORDS = 100_000  # undrained step records kept (a runner that stopped draining)


class ColocatedWorker(ShardKeeper):
    """Worker `index` (its batches' worker_index) of `workers`, owning θ's shard `index`."""

    def __init__(
        self,
        *,
        workers: int,
        server: ServerConfig,
        worker: WorkerConfig,
        X: np.ndarray,
        y: np.ndarray,
        resume: ShardState | None = None,
        resume_theta: np.ndarray | None = None,
    ) -> None:
        """On the shard X, y (apart: Ray resolves ObjectRefs); `resume`/`resume_theta`: from
        a checkpoint (this shard's state, the whole θ), else from step 0 and θ's init."""
        self.index, self.workers = worker.batches.worker_index, workers
        self.engine = GradientWorker(worker, X, y)
        self.layout = self.engine.model.layout
        self.server = server
        self.lo, self.hi = self.layout.shard_bounds(workers)[self.index]
        if resume_theta is not None:
            theta = np.array(resume_theta, dtype=server.dtype)  # (P,)
        else:
            theta = self.layout.init_theta(
                server.activations, server.seed, server.dtype, init=server.init
            )
        self.state = init_state(server.optimizer, self.hi - self.lo, theta.dtype)
        self.step = 0
        if resume is not None:
            self._restore(resume, theta)
        self._theta_local = theta  # θ until `join` maps the shared one
        self.theta = theta
        self.G = np.zeros((1, len(theta)), dtype=theta.dtype)  # this worker's g (and peers')
        self.header = np.zeros((workers, 2))  # per worker: samples, loss of its g
        self.mesh: Mesh | None = None
        self.shared: SharedArrays | None = None
        self._reduced = np.empty(self.hi - self.lo, dtype=theta.dtype)  # ḡ on this shard
        self._scratch = np.empty_like(self._reduced)
        self._received: np.ndarray | None = None  # TCP: peers' slices of g for this shard
        self._lock = threading.Condition()
        self._drained = Drained()
        self._latest: tuple[int, np.ndarray] | None = None
        self._theta_wanted = False
        self._training = False
        self._ended = False  # the step loop ran and returned (or raised)
        self._allowed: int | None = None  # no step past it starts (None: no limit)
        self._is_held = False
        self._profile = np.zeros(4)  # Σ seconds: compute, communication, waiting, update
        self._profile_steps = 0
        self._cpu_at_start = time.process_time()
        self._preempted_s: float | None = None  # until a step loop's first reading

    # --- set-up ----------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        """Open this worker's listening socket; where the others reach it."""
        import ray

        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        self.mesh = Mesh(self.index, self.workers, host=host)
        return Endpoint(self.index, node, self.mesh.host, self.mesh.port)

    def placement(self) -> dict:
        return process_placement()  # answers between jobs too (a kept worker)

    def join(self, endpoints: Sequence[Endpoint], tag: str) -> str:
        """Connect the mesh; on one node, map the shared G and θ. Returns the transport
        ("local" for one worker, "shm" or "tcp")."""
        if self.workers == 1:
            return "local"
        self.mesh.connect(endpoints)
        P, N = len(self.theta), self.workers
        specs = {"G": ((N, P), self.theta.dtype.str), "theta": ((P,), self.theta.dtype.str)}
        specs["header"] = ((N, 2), "<f8")
        path = SharedArrays.path_for(tag)
        is_one_node = len({e.node_id for e in endpoints}) == 1
        is_shared = is_one_node
        if is_one_node and self.index == 0:
            try:
                self.shared = SharedArrays(path, specs, create=True)
            except SharedMemoryFull as error:
                log.warning("%s; the workers exchange over TCP instead", error)
                is_shared = False
        if is_one_node:  # every worker learns whether the file exists
            is_shared = self.mesh.broadcast_flag(0, is_shared, EXCHANGE_TIMEOUT_S)
        if not is_shared:
            self._received = np.empty((self.workers, self.hi - self.lo), self.theta.dtype)
            return "tcp"
        if self.index != 0:
            self.shared = SharedArrays(path, specs, create=False)
        shared = self.shared.arrays
        lo, hi = self.lo, self.hi
        shared["theta"][lo:hi] = self._theta_local[lo:hi]  # each owner its own shard
        self.mesh.barrier(EXCHANGE_TIMEOUT_S)  # every one mapped it, θ whole
        if self.index == 0:
            self.shared.unlink()  # nothing left in /dev/shm however the job ends
        self.theta, self.G, self.header = shared["theta"], shared["G"], shared["header"]
        return "shm"

    # --- the step loop ---------------------------------------------------------------

    def train(
        self,
        stop: int,
        snapshot_every: Sequence[int],
        total_steps: int,
        allowed: int | None = None,
    ) -> int:
        """Run bsp steps self.step + 1 .. stop. After step t, a shard snapshot is kept
        for the runner when t is a multiple of one of `snapshot_every` or t is
        `total_steps`. No step past `allowed` starts until `drain` allows it (the
        runner's bounded lead over the store; every worker gets the same limit, well
        before it reaches it). Returns the last step done."""
        with self._lock:
            self._training, self._ended = True, False
            self._allowed = allowed
            if not self._profile_steps:  # CPU per step counts from the first step
                self._cpu_at_start = time.process_time()
        queued_before = thread_runqueue_seconds()
        try:
            self._train(stop, snapshot_every, total_steps)
        finally:
            queued_after = thread_runqueue_seconds()
            with self._lock:
                if queued_before is not None and queued_after is not None:
                    self._preempted_s = (self._preempted_s or 0.0) + queued_after - queued_before
                self._training, self._ended = False, True
                self._lock.notify_all()
        return self.step

    def _train(self, stop: int, snapshot_every: Sequence[int], total_steps: int) -> None:
        while self.step < stop:
            self._wait_until_allowed(self.step + 1)
            self._one_step(self.step + 1)
            step = self.step
            if step == total_steps or any(step % k == 0 for k in snapshot_every):
                snapshot = self.shard_state()
                with self._lock:
                    self._drained.snapshots.append(snapshot)

    def _one_step(self, step: int) -> None:
        started = time.perf_counter()
        g = self.G[self.index if self.shared is not None else 0]  # (P,)
        result = self.engine.compute_gradients_into(g, self.theta, step - 1)
        computed = time.perf_counter()
        self.header[self.index] = (result.samples, result.loss)
        reduced, communication, waiting = self._reduce_scatter(g)
        total = float(self.header[:, 0].sum())
        loss = float(self.header[:, 0] @ self.header[:, 1]) / total
        reducing_done = time.perf_counter()
        eta = learning_rate_at(step, self.server.optimizer.learning_rate, self.server.schedule)
        squares, square = self.layout.squares(reduced, self.lo)
        shard = self.theta[self.lo : self.hi]
        apply_update(shard, reduced, self.state, self.server.optimizer, learning_rate=eta)
        updated = time.perf_counter()
        waiting += self._all_gather()
        self.step = step
        peers = self.workers - 1
        slice_bytes = (self.hi - self.lo) * self.theta.itemsize
        stats = StepStats(
            version=step,
            samples=int(total),
            loss=loss,
            learning_rate=eta,
            weight_squares=tuple(squares),
            square=square,
            staleness=(0,) * self.workers,
            bytes_pushed=peers * slice_bytes,  # the other workers' slices of g read
            bytes_pulled=peers * slice_bytes,  # this shard of θ read by the others
            compute_seconds=computed - started,
            finished_at=time.time(),
            worker=self.index,
        )
        profile = (computed - started, communication, waiting, updated - reducing_done)
        with self._lock:
            self._drained.stats.append(stats)
            if len(self._drained.stats) > _KEPT_RECORDS:
                del self._drained.stats[: -_KEPT_RECORDS // 2]
            self._profile += profile
            self._profile_steps += 1
            if self._theta_wanted:
                self._latest = (step, self.theta.copy())
                self._theta_wanted = False
                self._lock.notify_all()

    def _reduce_scatter(self, g: np.ndarray) -> tuple[np.ndarray, float, float]:
        """ḡ over this shard, Σ_j (n_j / n) g_j[lo:hi]; every worker's (samples, loss) in
        `header`. Returns (ḡ, communication s, waiting s)."""
        lo, hi, N = self.lo, self.hi, self.workers
        if N == 1:
            return g, 0.0, 0.0  # n_0 / n = 1: g itself
        started = time.perf_counter()
        if self.shared is not None:
            self.mesh.barrier(EXCHANGE_TIMEOUT_S)  # every G[j] and header row written
            parts = self.G[:, lo:hi]
            arrived = time.perf_counter()
        else:
            bounds = self.layout.shard_bounds(N)
            sends = {j: [self.header[self.index], g[a:b]] for j, (a, b) in enumerate(bounds)}
            receives = {j: [self.header[j], self._received[j]] for j in range(N)}
            del sends[self.index], receives[self.index]
            self.mesh.exchange(sends, receives, EXCHANGE_TIMEOUT_S)
            self._received[self.index] = g[lo:hi]
            parts = self._received
            arrived = started  # TCP: the wait is inside the transfer
        weights = self.header[:, 0] / self.header[:, 0].sum()  # n_j / n
        reduced = self._reduced
        np.multiply(parts[0], float(weights[0]), out=reduced)  # a Python float keeps θ's dtype
        for j in range(1, N):
            np.multiply(parts[j], float(weights[j]), out=self._scratch)
            reduced += self._scratch
        done = time.perf_counter()
        return reduced, done - arrived, arrived - started

    def _all_gather(self) -> float:
        """θ whole on every worker again; returns the seconds it took."""
        if self.workers == 1:
            return 0.0
        started = time.perf_counter()
        if self.shared is not None:
            self.mesh.barrier(EXCHANGE_TIMEOUT_S)  # every shard of the shared θ updated
        else:
            bounds = self.layout.shard_bounds(self.workers)
            mine = self.theta[self.lo : self.hi]
            sends = {j: [mine] for j in range(self.workers) if j != self.index}
            receives = {j: [self.theta[a:b]] for j, (a, b) in enumerate(bounds) if j != self.index}
            self.mesh.exchange(sends, receives, EXCHANGE_TIMEOUT_S)
        return time.perf_counter() - started

    def _wait_until_allowed(self, step: int) -> None:
        """Block (no spinning) while `step` is past the allowed one."""
        with self._lock:
            if self._allowed is None or step <= self._allowed:
                return
            self._is_held = True
            self._lock.notify_all()  # a waiting drain returns: the runner should know
            self._lock.wait_for(lambda: self._allowed is None or step <= self._allowed)
            self._is_held = False

    def close(self) -> None:
        if self.mesh is not None:
            self.mesh.close()
        if self.shared is not None:
            self.shared.unlink()

    def forget(self) -> None:  # between jobs: a kept worker (services/jobs/kept_workers.py)
        """Leave the job (mesh closed; state, data and θ dropped), idle until `renew`."""
        if vars(self):
            self.close()
            vars(self).clear()

    def renew(self, **kwargs: object) -> None:
        """Become a new job's worker in this process (this class's `__init__` arguments)."""
        self.forget()
        self.__init__(**kwargs)


__all__ = ["ColocatedWorker", "PeerLost", "ServerConfig", "ShardState"]
