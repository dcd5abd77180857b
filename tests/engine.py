"""Engine objects for tests, from the flat fields a test varies one at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.paramserver.optimizer_config import LRSchedule, OptimizerConfig
from services.paramserver.server import ParameterServer
from services.paramserver.server_config import ServerConfig
from worker.configs import LocalBatches, ModelConfig, WorkerConfig
from worker.gradient_worker import GradientWorker


def gradient_worker(
    X: np.ndarray,
    y: np.ndarray,
    *,
    sizes: Sequence[int],
    activations: Sequence[str],
    loss: str,
    local_batch: int,
    seed: int,
    worker_index: int = 0,
    steps_per_epoch: int | None = None,
    device: str = "cpu",
    **model_options: object,
) -> GradientWorker:
    """A GradientWorker on X, y; `model_options` are ModelConfig's (l2, dropout, ...)."""
    model = ModelConfig(tuple(sizes), tuple(activations), loss, **model_options)
    batches = LocalBatches(local_batch, seed, worker_index, steps_per_epoch)
    return GradientWorker(WorkerConfig(model, batches, device=device), X, y)


def parameter_server(
    *,
    sizes: Sequence[int],
    activations: Sequence[str],
    optimizer: OptimizerConfig,
    workers: int,
    seed: int = 0,
    schedule: LRSchedule | None = None,
    dtype: str = "float32",
    init: str | Sequence[str] = "auto",
    **options: object,
) -> ParameterServer:
    """A ParameterServer; `options` are its own (consistency, staleness_aware_lr, shard)."""
    init = init if isinstance(init, str) else tuple(init)
    server = ServerConfig(
        optimizer=optimizer,
        activations=tuple(activations),
        seed=seed,
        schedule=schedule or LRSchedule(),
        dtype=dtype,
        init=init,
    )
    return ParameterServer(sizes=sizes, server=server, workers=workers, **options)
