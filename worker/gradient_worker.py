"""GradientWorker: holds one data shard and turns θ into a mini-batch gradient.

A plain class; the job runner makes it a Ray actor (`ray.remote(GradientWorker)`), so
tests build it without Ray. It never updates θ: the parameter server does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from worker.model import MLP
from worker.sampling import epoch_order


@dataclass(frozen=True)
class GradientResult:
    """One worker's contribution to one step.

    gradient: (P,) mean ∂loss/∂θ over the worker's `samples` rows, θ's flat layout.
    loss: mean loss over those rows, computed on the θ the gradient was taken at.
    """

    gradient: np.ndarray
    samples: int
    loss: float


class GradientWorker:
    """Computes ∂loss/∂θ on the next local mini-batch of its shard.

    X: (n, D) float32 shard, y: (n,) labels or (n, K) targets; `local_batch` rows per step.
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
    ) -> None:
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if not 1 <= local_batch <= len(X):
            raise ValueError(f"local_batch must be in [1, {len(X)}], got {local_batch}")
        # One BLAS thread per worker by default: workers are the parallelism.
        self._blas_limit = threadpool_limits(limits=blas_threads)
        self.model = MLP(sizes, activations, loss)
        self.X, self.y = X, y
        self.local_batch = local_batch
        self.seed = seed
        self.worker_index = worker_index
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

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
        """Gradient of the mean loss over batch `index` of `epoch` at θ: (P,) float32."""
        rows = self._batch_rows(epoch, index)
        x, y = self.X[rows], self.y[rows]  # (b, D), (b,) or (b, K)
        loss, grad = self.model.loss_and_gradient(theta, x, y)
        return GradientResult(gradient=grad, samples=len(rows), loss=float(loss))

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
