"""GradientWorker: holds one data shard and turns θ into a mini-batch gradient.

A plain class; the job runner makes it a Ray actor (`ray.remote(GradientWorker)`, with
`GradientWorker.actor_options(device)` for its resources), so tests build it without
Ray. It never updates θ: the parameter server does. On device "gpu" the shard lives in
GPU memory (CuPy) and only θ and the gradient cross the bus each step.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from worker.backend import get_array_module, to_numpy
from worker.compression import Compressed, GradientCompressor
from worker.configs import WorkerConfig
from worker.dropout import step_rng
from worker.model import MLP
from worker.sampling import epoch_order


@dataclass(frozen=True)
class GradientResult:
    """One worker's contribution to one step.

    gradient: (P,) mean ∂loss/∂θ over the worker's `samples` rows, θ's flat layout
        and dtype, a host (NumPy) array whatever the worker's device.
    loss: mean loss over those rows (L2 term included), computed on the θ the gradient
        was taken at.
    gradient_norms: ‖∂loss/∂W^l‖ of this gradient for l = 1..L (vanishing or exploding δ).
    worker, clock: which worker computed it, for its gradient number `clock` (0-based).
    compute_seconds: time spent computing it (θ in hand to gradient out).

    For a sharded parameter server `gradient` is one shard's slice of g, and it may be
    `Compressed` (fp16, or top-k with the residual kept by the worker).
    """

    gradient: np.ndarray | Compressed
    samples: int
    loss: float
    gradient_norms: tuple[float, ...] = ()
    worker: int = 0
    clock: int = 0
    compute_seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the gradient as pushed."""
        return self.gradient.nbytes


class GradientWorker:
    """Computes ∂loss/∂θ on the next local mini-batch of its shard.

    X: (n, D) float32 shard, y: (n,) labels or (n, K) targets; `config` says the model,
    the rows each step reads (`LocalBatches`: the last step of an epoch reads what is
    left, maybe nothing), the device ("cpu": NumPy, "gpu": CuPy), the compression of
    pushed gradients and the BLAS threads. The gradient is computed in θ's dtype
    (float32, or float64 when the parameter server holds float64). Dropout masks are
    drawn from `dropout.step_rng(seed, worker_index, epoch, index)`, so a step repeats.
    """

    def __init__(self, config: WorkerConfig, X: np.ndarray, y: np.ndarray) -> None:
        batches = config.batches
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if not 1 <= batches.size <= len(X):
            raise ValueError(f"local_batch must be in [1, {len(X)}], got {batches.size}")
        self._blas_limit = threadpool_limits(limits=config.blas_threads)
        self.xp = get_array_module(config.device)
        self.device = config.device
        self.model = MLP.from_config(config.model)
        self.X, self.y = self.xp.asarray(X), self.xp.asarray(y)  # on the device, once
        self.local_batch = batches.size
        self.steps_per_epoch = batches.steps_per_epoch or math.ceil(len(X) / batches.size)
        if self.steps_per_epoch * batches.size < len(X):
            raise ValueError(
                f"{self.steps_per_epoch} steps of {batches.size} rows cannot read {len(X)} rows"
            )
        self.compression = config.compression
        self._compressors: list[GradientCompressor] = []  # one per θ shard (its residual)
        self._theta: np.ndarray | None = None  # θ joined from its shards
        self.seed = batches.seed
        self.worker_index = batches.worker_index
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @staticmethod
    def actor_options(device: str = "cpu") -> dict[str, float]:
        """Ray resources a worker on `device` needs beyond its CPUs: one GPU for "gpu"."""
        if device not in ("cpu", "gpu"):
            raise ValueError(f"unknown device {device!r}; expected one of cpu, gpu")
        return {"num_gpus": 1} if device == "gpu" else {}

    def placement(self) -> dict[str, str | int]:
        """Where this worker runs (`process_placement`)."""
        return process_placement()

    def compute_gradients(self, theta: np.ndarray, epoch: int, index: int) -> GradientResult:
        """Gradient of the mean loss over batch `index` of `epoch` at θ: (P,) in θ's dtype."""
        grad = np.empty_like(theta)
        samples, loss = self._gradient_into(grad, theta, epoch, index)
        norms = (
            tuple(self.model.layer_gradient_norms(grad))
            if samples
            else (0.0,) * self.model.layout.num_layers
        )
        return GradientResult(
            gradient=grad,
            samples=samples,
            loss=loss,
            gradient_norms=norms,
            worker=self.worker_index,
        )

    def compute_gradients_into(
        self, out: np.ndarray, theta: np.ndarray, clock: int
    ) -> GradientResult:
        """This worker's gradient number `clock` (0-based) at θ, written into `out`
        ((P,), θ's dtype, host memory: a shared buffer, say); the result's `gradient` is
        `out` itself and its per-layer norms are left out (the caller has them cheaper)."""
        epoch, index = divmod(clock, self.steps_per_epoch)
        samples, loss = self._gradient_into(out, theta, epoch, index)
        return GradientResult(
            gradient=out,
            samples=samples,
            loss=loss,
            gradient_norms=(0.0,) * self.model.layout.num_layers,
            worker=self.worker_index,
            clock=clock,
        )

    def _gradient_into(
        self, out: np.ndarray, theta: np.ndarray, epoch: int, index: int
    ) -> tuple[int, float]:
        """g of batch `index` of `epoch` at θ, written into `out`; returns (its rows, the
        mean loss over them): (0, 0.0) with g = 0 when the batch is empty."""
        rows = self._batch_rows(epoch, index)
        if len(rows) == 0:  # an epoch's last step left nothing for this worker
            out.fill(0.0)
            return 0, 0.0
        if self.device != "cpu":
            rows = self.xp.asarray(rows)
        x, y = self.X[rows], self.y[rows]  # (b, D), (b,) or (b, K)
        rng = (
            step_rng(self.seed, self.worker_index, epoch, index) if self.model.has_dropout else None
        )
        if self.device == "cpu":  # θ as it is (only read); g straight into `out`
            loss, _ = self.model.loss_and_gradient(theta, x, y, grad=out, rng=rng)
        else:  # θ onto the GPU, g back into host memory
            loss, grad = self.model.loss_and_gradient(self.xp.asarray(theta), x, y, rng=rng)
            out[:] = to_numpy(grad)
        return len(rows), float(loss)

    def gradients(
        self, clock: int, *theta_parts: np.ndarray
    ) -> GradientResult | tuple[GradientResult, ...]:
        """The gradient for this worker's step number `clock` (0-based; epoch and batch
        follow from it) at θ given as S contiguous shards: one result per shard, each
        holding that shard's slice of g, compressed as configured (`compression`)."""
        started = time.perf_counter()
        theta = theta_parts[0] if len(theta_parts) == 1 else self._joined(theta_parts)
        epoch, index = divmod(clock, self.steps_per_epoch)
        whole = self.compute_gradients(theta, epoch, index)
        seconds = time.perf_counter() - started
        g = whole.gradient  # (P,)
        if len(self._compressors) != len(theta_parts):
            kind, fraction = self.compression.kind, self.compression.topk_fraction
            self._compressors = [GradientCompressor(kind, fraction) for _ in theta_parts]
        results, lo = [], 0
        for part, compressor in zip(theta_parts, self._compressors, strict=True):
            hi = lo + len(part)
            pushed = compressor.compress(g[lo:hi]) if compressor.kind != "none" else g[lo:hi]
            results.append(
                GradientResult(
                    gradient=pushed,
                    samples=whole.samples,
                    loss=whole.loss,
                    gradient_norms=whole.gradient_norms,
                    worker=self.worker_index,
                    clock=clock,
                    compute_seconds=seconds,
                )
            )
            lo = hi
        return results[0] if len(results) == 1 else tuple(results)

    def step_gradient(self, step: int, theta: np.ndarray) -> GradientResult:
        """bsp step `step` (1-based) at θ: `gradients(step − 1, θ)`, for the compiled graph."""
        return self.gradients(step - 1, theta)

    def _joined(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        size = sum(len(p) for p in parts)
        theta = self._theta
        if theta is None or theta.shape != (size,) or theta.dtype != parts[0].dtype:
            self._theta = np.empty(size, dtype=parts[0].dtype)  # (P,), reused
        np.concatenate(parts, out=self._theta)
        return self._theta

    def _batch_rows(self, epoch: int, index: int) -> np.ndarray:
        if not 0 <= index < self.steps_per_epoch:
            raise ValueError(f"batch {index} of epoch {epoch} runs past the shard's end")
        if epoch != self._order_epoch:
            self._order = epoch_order(
                len(self.X), seed=self.seed, epoch=epoch, worker_index=self.worker_index
            )
            self._order_epoch = epoch
        return self._order[index * self.local_batch : (index + 1) * self.local_batch]


def process_placement() -> dict[str, str | int]:
    """Where this process runs: Ray node id (when under Ray), host name and process id."""
    node_id = ""
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return {"node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid()}
