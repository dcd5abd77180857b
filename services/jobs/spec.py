"""JobSpec: a job's whole specification (what to train, on what, and how), checked when built.

Every field is checked when the dataclass is built; a bad one raises
`InvalidSpecError` naming its dotted path (``optimizer.learning_rate must be > 0,
got -1.0``). The spec is plain data: it is stored as JSON and never holds code.
Its parts live in their own modules (model_spec, dataset_spec, schedule_spec,
distribution_spec, the checks in spec_checks) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from services.datasets import DatasetOptions
from services.errors import InvalidSpecError
from services.jobs.dataset_spec import UPLOADED, DatasetSpec
from services.jobs.distribution_spec import (
    CONSISTENCY_MODES,
    DEFAULT_STALENESS,
    DEFAULT_TOPK_FRACTION,
    MAX_BATCH_SIZE,
    MAX_PS_SHARDS,
    MAX_STALENESS,
    MAX_WORKERS,
    check_distribution,
    check_workers,
    staleness_bound,
    topk_share,
)
from services.jobs.early_stopping import StopWhenSpec
from services.jobs.model_spec import (
    MAX_LAYERS,
    MAX_PARAMETERS,
    MAX_UNITS,
    REGRESSION_LOSSES,
    LayerSpec,
    check_layers,
    check_loss_options,
    check_output_layer,
    parameter_count,
)
from services.jobs.schedule_spec import ScheduleSpec
from services.jobs.spec_checks import check_choice, check_range, nested
from services.paramserver.optimizers import LRSchedule, OptimizerConfig
from services.paramserver.server_config import ServerConfig
from worker.configs import Compression, LocalBatches, ModelConfig, WorkerConfig
from worker.initializers import INITIALIZERS
from worker.losses import LOSSES
from worker.sampling import BatchPlan

__all__ = [
    "CONSISTENCY_MODES",
    "DEFAULT_STALENESS",
    "DEFAULT_TOPK_FRACTION",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_LAYERS",
    "MAX_NAME_LENGTH",
    "MAX_PARAMETERS",
    "MAX_PS_SHARDS",
    "MAX_STALENESS",
    "MAX_STEPS",
    "MAX_UNITS",
    "MAX_WORKERS",
    "REGRESSION_LOSSES",
    "UPLOADED",
    "DatasetSpec",
    "JobSpec",
    "LayerSpec",
    "ScheduleSpec",
    "nested",
]

MAX_EPOCHS = 100_000
MAX_STEPS = 100_000_000
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything a job needs, defaults filled in. `steps`, when set, overrides `epochs`."""

    name: str = "job"
    layers: tuple[LayerSpec, ...]
    loss: str = "softmax_cross_entropy"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch_size: int = 64
    epochs: int = 10
    steps: int | None = None
    dataset: DatasetSpec
    workers: int = 2
    consistency: str = "bsp"
    staleness: int | None = None  # ssp's bound s (DEFAULT_STALENESS when None)
    staleness_aware_lr: bool = False  # asp/ssp: η / (1 + staleness)
    ps_shards: int = 1  # θ split over this many parameter-server actors
    compression: str = "none"  # of pushed gradients: none, fp16, topk
    topk_fraction: float | None = None  # topk: share of g's entries sent per push
    seed: int = 0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    max_seconds: float | None = None
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    l2: float = 0.0
    label_smoothing: float = 0.0
    huber_delta: float = 1.0
    init: str = "auto"
    dtype: str = "float32"
    device: str = "cpu"
    stop_when: StopWhenSpec = field(default_factory=StopWhenSpec)

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME_LENGTH:
            raise InvalidSpecError("name", f"must be at most {MAX_NAME_LENGTH} characters")
        check_layers(self.layers, self.parameter_count)
        check_choice("loss", self.loss, sorted(LOSSES))
        check_output_layer(self.layers, self.loss, self.dataset)
        check_workers(self.workers, self.batch_size)
        check_range("epochs", self.epochs, 1, MAX_EPOCHS)
        if self.steps is not None:
            check_range("steps", self.steps, 1, MAX_STEPS)
        check_distribution(self)
        check_range("seed", self.seed, 0, 2**63 - 1)
        if self.eval_every is not None:
            check_range("eval_every", self.eval_every, 1, MAX_STEPS)
        if self.checkpoint_every is not None:
            check_range("checkpoint_every", self.checkpoint_every, 1, MAX_STEPS)
        if self.max_seconds is not None:
            check_range("max_seconds", self.max_seconds, 1.0, 30 * 24 * 3600.0)
        check_loss_options(
            self.loss,
            l2=self.l2,
            label_smoothing=self.label_smoothing,
            huber_delta=self.huber_delta,
        )
        check_choice("init", self.init, INITIALIZERS)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        check_choice("device", self.device, ("cpu", "gpu"))
        self._check_stop_when()

    def _check_stop_when(self) -> None:
        rule = self.stop_when
        if rule.needs_validation and self.dataset.validation_fraction == 0:
            raise InvalidSpecError(
                "stop_when.metric",
                f"{rule.metric} needs a validation split (dataset.validation_fraction > 0)",
            )
        if rule.metric == "validation_accuracy" and not self.dataset.is_classification:
            raise InvalidSpecError(
                "stop_when.metric",
                f"validation_accuracy applies only to classification, not {self.dataset.name}",
            )

    @property
    def staleness_bound(self) -> int | None:
        """ssp's s; None for bsp and asp (no bound)."""
        return staleness_bound(self.consistency, self.staleness)

    @property
    def topk_share(self) -> float:
        return topk_share(self.topk_fraction)

    @property
    def input_width(self) -> int:
        return self.dataset.input_width

    @property
    def sizes(self) -> list[int]:
        """[D, H1, ..., C]: layer l maps sizes[l-1] to sizes[l]."""
        return [self.input_width, *(layer.units for layer in self.layers)]

    @property
    def activations(self) -> list[str]:
        return [layer.activation for layer in self.layers]

    @property
    def model(self) -> ModelConfig:
        """The model this spec asks for, as the engine takes it (`MLP.from_config`)."""
        return ModelConfig(
            sizes=tuple(self.sizes),
            activations=tuple(self.activations),
            loss=self.loss,
            l2=self.l2,
            dropout=tuple(layer.dropout for layer in self.layers[:-1]),
            label_smoothing=self.label_smoothing,
            huber_delta=self.huber_delta,
        )

    def server_config(self, schedule: LRSchedule) -> ServerConfig:
        """The parameter server's config, with the job's schedule of η (`ScheduleSpec`
        made concrete for the job's step count)."""
        return ServerConfig(
            optimizer=self.optimizer,
            activations=tuple(self.activations),
            seed=self.seed,
            schedule=schedule,
            dtype=self.dtype,
            init=self.init,
        )

    def worker_config(self, index: int, plan: BatchPlan) -> WorkerConfig:
        """Gradient worker `index`'s config when the training rows split as `plan` says."""
        return WorkerConfig(
            model=self.model,
            batches=LocalBatches(
                size=plan.local_batches[index],
                seed=self.seed,
                worker_index=index,
                steps_per_epoch=plan.steps_per_epoch,
            ),
            device=self.device,
            compression=Compression(self.compression, self.topk_share),
        )

    @property
    def parameter_count(self) -> int:
        return parameter_count(self.sizes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Inverse of `to_dict` (for specs read back from the store)."""
        dataset = dict(data["dataset"])
        dataset["options"] = nested("dataset", DatasetOptions, **dataset["options"])
        return cls(
            **{
                **data,
                "layers": tuple(
                    nested(f"layers[{i}]", LayerSpec, **layer)
                    for i, layer in enumerate(data["layers"])
                ),
                "optimizer": nested("optimizer", OptimizerConfig, **data["optimizer"]),
                "schedule": nested("schedule", ScheduleSpec, **data.get("schedule", {})),
                "stop_when": nested("stop_when", StopWhenSpec, **data.get("stop_when", {})),
                "dataset": nested("dataset", DatasetSpec, **dataset),
            }
        )
