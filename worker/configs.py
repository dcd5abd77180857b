"""The engine's configs, one per concern: what the model is (`ModelConfig`), which rows a
worker reads (`LocalBatches`), how it sends its gradients (`Compression`), and a gradient
worker's whole configuration but its data (`WorkerConfig`). Plain frozen data: the job
runner builds them from a job's spec and Ray sends them to the workers; each value is
checked where it is used (`MLP`, `GradientWorker`, `GradientCompressor`), once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """An MLP: sizes = [D, H1, ..., C] (layer l maps sizes[l-1] to sizes[l]);
    activations[l-1] is layer l's σ; `loss` names the loss. l2: λ ≥ 0 of the
    (λ/2) Σ‖W^l‖² term; dropout: one rate p ∈ [0, 1) for every hidden layer's output, or
    one per hidden layer; label_smoothing: ε for softmax_cross_entropy; huber_delta: δ
    for huber. `MLP.from_config` builds it and checks every value."""

    sizes: tuple[int, ...]
    activations: tuple[str, ...]
    loss: str
    l2: float = 0.0
    dropout: float | tuple[float, ...] = 0.0
    label_smoothing: float = 0.0
    huber_delta: float = 1.0

    def __post_init__(self) -> None:  # lists become tuples: the config stays hashable
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "activations", tuple(self.activations))
        if isinstance(self.dropout, Sequence):
            object.__setattr__(self, "dropout", tuple(self.dropout))


@dataclass(frozen=True)
class LocalBatches:
    """The rows a worker reads: `size` a step, an epoch `steps_per_epoch` steps
    (⌈n / size⌉ of its n rows when None; the last step reads what is left, maybe
    nothing), in an order drawn per epoch from `seed` and `worker_index`."""

    size: int
    seed: int
    worker_index: int = 0
    steps_per_epoch: int | None = None


@dataclass(frozen=True)
class Compression:
    """How a worker's pushed gradients are compressed: "none", "fp16" or "topk" (the
    largest `topk_fraction` of g's entries, the rest kept as a residual)."""

    kind: str = "none"
    topk_fraction: float = 0.01


@dataclass(frozen=True)
class WorkerConfig:
    """A gradient worker's configuration but its data shard: the model, its batches, the
    device ("cpu": NumPy, "gpu": CuPy), gradient compression and BLAS threads (one by
    default: workers are the parallelism)."""

    model: ModelConfig
    batches: LocalBatches
    device: str = "cpu"
    compression: Compression = field(default_factory=Compression)
    blas_threads: int = 1
