"""A job's specification as validated dataclasses: what to train, on what, and how.

Every field is checked when the dataclass is built; a bad one raises
`InvalidSpecError` naming its dotted path (``optimizer.learning_rate must be > 0,
got -1.0``). The spec is plain data: it is stored as JSON and never holds code.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from services.datasets import DATASET_NAMES, DatasetOptions, input_width, output_width
from services.errors import InvalidSpecError, quoted
from services.jobs.early_stopping import StopWhenSpec
from services.paramserver.optimizers import LRSchedule, OptimizerConfig
from worker.activations import ACTIVATIONS
from worker.compression import COMPRESSIONS
from worker.initializers import INITIALIZERS
from worker.losses import LOSSES

CONSISTENCY_MODES = ("bsp", "ssp", "asp")
DEFAULT_STALENESS = 2  # ssp's bound s when the spec gives none
DEFAULT_TOPK_FRACTION = 0.01
MAX_STALENESS = 1000
MAX_PS_SHARDS = 64
REGRESSION_LOSSES = ("mse", "huber", "binary_cross_entropy")
UPLOADED = "uploaded"  # dataset name of a dataset sent with UploadDataset

MAX_LAYERS = 64
MAX_UNITS = 65_536
MAX_PARAMETERS = 50_000_000
MAX_WORKERS = 64
MAX_BATCH_SIZE = 65_536
MAX_EPOCHS = 100_000
MAX_STEPS = 100_000_000
MAX_NAME_LENGTH = 200


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpecError(name, f"must be a finite number, got {value}")
    if value < low:
        raise InvalidSpecError(name, f"must be >= {low}, got {value}")
    if value > high:
        raise InvalidSpecError(name, f"must be <= {high}, got {value}")


def _check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise InvalidSpecError(name, f"must be one of {', '.join(choices)}, got {quoted(value)}")


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One dense layer: z = a_prev W + b, a = activation(z); W is (in, units)."""

    units: int
    activation: str
    dropout: float = 0.0  # inverted dropout on this layer's output while training

    def __post_init__(self) -> None:
        _check_range("units", self.units, 1, MAX_UNITS)
        _check_choice("activation", self.activation, sorted(ACTIVATIONS))
        _check_range("dropout", self.dropout, 0.0, 0.99)


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """How η changes with the step (see services.paramserver.optimizers.LRSchedule).

    The job's total step count, which a cosine schedule needs, is known only once its
    data is loaded: `schedule(total_steps)` builds the optimizer's schedule then.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1
    min_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        self.schedule(total_steps=self.warmup_steps + 1)  # validates every field

    def schedule(self, total_steps: int) -> LRSchedule:
        return LRSchedule(**dataclasses.asdict(self), total_steps=total_steps)


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A built-in or uploaded dataset, its generator options and the validation hold-out.

    For name "uploaded", `dataset_id` names the upload, and the server fills in
    `task`, `features` and `outputs` from it before the spec is built.
    """

    name: str
    validation_fraction: float = 0.1
    options: DatasetOptions = field(default_factory=DatasetOptions)
    dataset_id: str = ""
    task: str = ""
    features: int = 0
    outputs: int = 0

    def __post_init__(self) -> None:
        names = (*DATASET_NAMES, UPLOADED)
        if not self.name:
            raise InvalidSpecError("name", f"is required; one of {', '.join(names)}")
        _check_choice("name", self.name, names)
        _check_range("validation_fraction", self.validation_fraction, 0.0, 0.5)
        if self.name == UPLOADED:
            if not self.dataset_id:
                raise InvalidSpecError("dataset_id", "is required when name is uploaded")
            if self.task not in ("classification", "regression") or self.features < 1:
                raise InvalidSpecError("dataset_id", "must name an uploaded dataset")
        else:
            if self.dataset_id:
                raise InvalidSpecError("dataset_id", "applies only to name uploaded")
            # Here, not in JobSpec, so a bad option is named under "dataset." (spirals: D = 2).
            input_width(self.name, self.options)

    @property
    def input_width(self) -> int:
        """D, the features per row."""
        return self.features if self.name == UPLOADED else input_width(self.name, self.options)

    @property
    def output_width(self) -> int:
        """C classes, or K regression targets."""
        return self.outputs if self.name == UPLOADED else output_width(self.name, self.options)

    @property
    def is_classification(self) -> bool:
        if self.name == UPLOADED:
            return self.task == "classification"
        return self.name != "synthetic/regression"


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
        self._check_layers()
        _check_choice("loss", self.loss, sorted(LOSSES))
        self._check_output_layer()
        _check_range("workers", self.workers, 1, MAX_WORKERS)
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.batch_size < self.workers:
            raise InvalidSpecError(
                "batch_size",
                f"must be >= workers ({self.workers}) so every worker gets a sample, "
                f"got {self.batch_size}",
            )
        _check_range("epochs", self.epochs, 1, MAX_EPOCHS)
        if self.steps is not None:
            _check_range("steps", self.steps, 1, MAX_STEPS)
        self._check_distribution()
        _check_range("seed", self.seed, 0, 2**63 - 1)
        if self.eval_every is not None:
            _check_range("eval_every", self.eval_every, 1, MAX_STEPS)
        if self.checkpoint_every is not None:
            _check_range("checkpoint_every", self.checkpoint_every, 1, MAX_STEPS)
        if self.max_seconds is not None:
            _check_range("max_seconds", self.max_seconds, 1.0, 30 * 24 * 3600.0)
        _check_range("l2", self.l2, 0.0, 1e6)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.99)
        if self.label_smoothing and self.loss != "softmax_cross_entropy":
            raise InvalidSpecError("label_smoothing", "applies only to softmax_cross_entropy")
        _check_range("huber_delta", self.huber_delta, 1e-9, 1e9)
        if self.huber_delta != 1.0 and self.loss != "huber":
            raise InvalidSpecError("huber_delta", "applies only to the huber loss")
        _check_choice("init", self.init, INITIALIZERS)
        _check_choice("dtype", self.dtype, ("float32", "float64"))
        _check_choice("device", self.device, ("cpu", "gpu"))
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

    def _check_distribution(self) -> None:
        _check_choice("consistency", self.consistency, CONSISTENCY_MODES)
        if self.staleness is not None:
            if self.consistency != "ssp":
                raise InvalidSpecError("staleness", "applies only to consistency ssp")
            _check_range("staleness", self.staleness, 0, MAX_STALENESS)
        if self.staleness_aware_lr and self.consistency == "bsp":
            raise InvalidSpecError("staleness_aware_lr", "applies only to consistency asp or ssp")
        _check_range("ps_shards", self.ps_shards, 1, MAX_PS_SHARDS)
        if self.ps_shards > self.parameter_count:
            raise InvalidSpecError(
                "ps_shards", f"must be <= the model's {self.parameter_count} parameters"
            )
        if self.ps_shards > 1 and self.optimizer.clip_norm:
            raise InvalidSpecError(
                "ps_shards",
                "must be 1 with optimizer.clip_norm (clipping by the global norm needs "
                "the whole gradient in one place)",
            )
        _check_choice("compression", self.compression, COMPRESSIONS)
        if self.topk_fraction is not None:
            if self.compression != "topk":
                raise InvalidSpecError("topk_fraction", "applies only to compression topk")
            _check_range("topk_fraction", self.topk_fraction, 1e-6, 1.0)

    @property
    def staleness_bound(self) -> int | None:
        """ssp's s; None for bsp and asp (no bound)."""
        if self.consistency != "ssp":
            return None
        return DEFAULT_STALENESS if self.staleness is None else self.staleness

    @property
    def topk_share(self) -> float:
        return DEFAULT_TOPK_FRACTION if self.topk_fraction is None else self.topk_fraction

    def _check_layers(self) -> None:
        if not self.layers:
            raise InvalidSpecError("layers", "must hold at least one layer")
        if len(self.layers) > MAX_LAYERS:
            raise InvalidSpecError("layers", f"must hold at most {MAX_LAYERS} layers")
        if self.parameter_count > MAX_PARAMETERS:
            raise InvalidSpecError(
                "layers",
                f"give {self.parameter_count} parameters; the limit is {MAX_PARAMETERS}",
            )

    def _check_output_layer(self) -> None:
        last = f"layers[{len(self.layers) - 1}]"
        expected = self.dataset.output_width
        if self.layers[-1].units != expected:
            raise InvalidSpecError(
                f"{last}.units",
                f"must be {expected} (the outputs of {self.dataset.name}), "
                f"got {self.layers[-1].units}",
            )
        is_classification = self.dataset.is_classification
        if is_classification and self.loss != "softmax_cross_entropy":
            raise InvalidSpecError(
                "loss",
                f"must be softmax_cross_entropy for {self.dataset.name}, got {quoted(self.loss)}",
            )
        if not is_classification and self.loss not in REGRESSION_LOSSES:
            raise InvalidSpecError(
                "loss",
                f"must be one of {', '.join(REGRESSION_LOSSES)} for {self.dataset.name}, "
                f"got {quoted(self.loss)}",
            )
        if self.layers[-1].dropout:
            raise InvalidSpecError(f"{last}.dropout", "must be 0 on the output layer")
        if self.loss == "softmax_cross_entropy" and self.layers[-1].activation != "identity":
            raise InvalidSpecError(
                f"{last}.activation",
                "must be identity for softmax_cross_entropy (the layer gives logits; "
                f"softmax is fused into the loss), got {quoted(self.layers[-1].activation)}",
            )

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
    def model_options(self) -> dict[str, Any]:
        """Keyword options of worker.model.MLP (and GradientWorker) this spec asks for."""
        return {
            "l2": self.l2,
            "dropout": [layer.dropout for layer in self.layers[:-1]],
            "label_smoothing": self.label_smoothing,
            "huber_delta": self.huber_delta,
        }

    @property
    def parameter_count(self) -> int:
        sizes = self.sizes
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Inverse of `to_dict` (for specs read back from the store)."""
        dataset = dict(data["dataset"])
        dataset["options"] = DatasetOptions(**dataset["options"])
        return cls(
            **{
                **data,
                "layers": tuple(LayerSpec(**layer) for layer in data["layers"]),
                "optimizer": OptimizerConfig(**data["optimizer"]),
                "schedule": ScheduleSpec(**data.get("schedule", {})),
                "stop_when": StopWhenSpec(**data.get("stop_when", {})),
                "dataset": DatasetSpec(**dataset),
            }
        )


def nested(path: str, factory: Any, **fields: Any) -> Any:
    """Build a nested spec part, naming `path` in any field error (``layers[1].units``)."""
    try:
        return factory(**fields)
    except InvalidSpecError as error:
        raise error.under(path) from None
