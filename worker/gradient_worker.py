"""GradientWorker: holds one data shard and turns θ into a mini-batch gradient.

A plain class; the job runner makes it a Ray actor (`ray.remote(GradientWorker)`, with
`GradientWorker.actor_options(device)` for its resources), so tests build it without
Ray. It never updates θ: the parameter server does. On device "gpu" the shard lives in
GPU memory (CuPy) and only θ and the gradient cross the bus each step.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from worker.backend import get_array_module, to_numpy
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
    """

    gradient: np.ndarray
    samples: int
    loss: float
    gradient_norms: tuple[float, ...] = ()


class GradientWorker:
    """Computes ∂loss/∂θ on the next local mini-batch of its shard.

    X: (n, D) float32 shard, y: (n,) labels or (n, K) targets; `local_batch` rows per step.
    The gradient is computed in θ's dtype (float32, or float64 when the parameter server
    holds float64). `device` is "cpu" (NumPy) or "gpu" (CuPy); l2, dropout,
    label_smoothing and huber_delta configure the model as in `MLP`. Dropout masks are
    drawn from `dropout.step_rng(seed, worker_index, epoch, index)`, so a step repeats.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[int],
        activations: Sequence[str],
        loss: str,
        X: np.ndarray,
        y: np.ndarray,
        local_batch: int,
        seed: int,
        worker_index: int,
        blas_threads: int = 1,
        device: str = "cpu",
        l2: float = 0.0,
        dropout: float | Sequence[float] = 0.0,
        label_smoothing: float = 0.0,
        huber_delta: float = 1.0,
    ) -> None:
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if not 1 <= local_batch <= len(X):
            raise ValueError(f"local_batch must be in [1, {len(X)}], got {local_batch}")
        # One BLAS thread per worker by default: workers are the parallelism.
        self._blas_limit = threadpool_limits(limits=blas_threads)
        self.xp = get_array_module(device)
        self.device = device
        self.model = MLP(
            sizes,
            activations,
            loss,
            l2=l2,
            dropout=dropout,
            label_smoothing=label_smoothing,
            huber_delta=huber_delta,
        )
        self.X, self.y = self.xp.asarray(X), self.xp.asarray(y)  # on the device, once
        self.local_batch = local_batch
        self.seed = seed
        self.worker_index = worker_index
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @staticmethod
    def actor_options(device: str = "cpu") -> dict[str, float]:
        """Ray resources a worker on `device` needs beyond its CPUs: one GPU for "gpu"."""
        if device not in ("cpu", "gpu"):
            raise ValueError(f"unknown device {device!r}; expected one of cpu, gpu")
        return {"num_gpus": 1} if device == "gpu" else {}

    def placement(self) -> dict[str, str | int]:
        """Where this worker runs: Ray node id (when under Ray), host name and process id."""
        node_id = ""
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return {"node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid()}

    def compute_gradients(self, theta: np.ndarray, epoch: int, index: int) -> GradientResult:
        """Gradient of the mean loss over batch `index` of `epoch` at θ: (P,) in θ's dtype."""
        rows = self._batch_rows(epoch, index)
        if self.device != "cpu":
            rows = self.xp.asarray(rows)
        x, y = self.X[rows], self.y[rows]  # (b, D), (b,) or (b, K)
        rng = (
            step_rng(self.seed, self.worker_index, epoch, index) if self.model.has_dropout else None
        )
        theta = self.xp.asarray(theta)  # a copy onto the GPU; NumPy's θ as it is (only read)
        loss, grad = self.model.loss_and_gradient(theta, x, y, rng=rng)
        norms = tuple(self.model.layer_gradient_norms(grad))
        return GradientResult(
            gradient=to_numpy(grad), samples=len(rows), loss=float(loss), gradient_norms=norms
        )

    def _batch_rows(self, epoch: int, index: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = epoch_order(
                len(self.X), seed=self.seed, epoch=epoch, worker_index=self.worker_index
            )
            self._order_epoch = epoch
        rows = self._order[index * self.local_batch : (index + 1) * self.local_batch]
        if len(rows) != self.local_batch:
            raise ValueError(f"batch {index} of epoch {epoch} runs past the shard's end")
        return rows
