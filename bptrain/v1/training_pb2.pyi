import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class WeightsFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTS_FORMAT_UNSPECIFIED: _ClassVar[WeightsFormat]
    NPZ: _ClassVar[WeightsFormat]
    SAFETENSORS: _ClassVar[WeightsFormat]
    ONNX: _ClassVar[WeightsFormat]

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_NPZ: _ClassVar[DatasetFormat]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
WEIGHTS_FORMAT_UNSPECIFIED: WeightsFormat
NPZ: WeightsFormat
SAFETENSORS: WeightsFormat
ONNX: WeightsFormat
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_NPZ: DatasetFormat

class LayerSpec(_message.Message):
    __slots__ = ("units", "activation", "dropout")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    units: int
    activation: str
    dropout: float
    def __init__(self, units: _Optional[int] = ..., activation: _Optional[str] = ..., dropout: _Optional[float] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "learning_rate", "momentum", "beta1", "beta2", "epsilon", "weight_decay", "rho", "clip_norm")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    kind: str
    learning_rate: float
    momentum: float
    beta1: float
    beta2: float
    epsilon: float
    weight_decay: float
    rho: float
    clip_norm: float
    def __init__(self, kind: _Optional[str] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., epsilon: _Optional[float] = ..., weight_decay: _Optional[float] = ..., rho: _Optional[float] = ..., clip_norm: _Optional[float] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("kind", "warmup_steps", "step_size", "gamma", "min_learning_rate")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    warmup_steps: int
    step_size: int
    gamma: float
    min_learning_rate: float
    def __init__(self, kind: _Optional[str] = ..., warmup_steps: _Optional[int] = ..., step_size: _Optional[int] = ..., gamma: _Optional[float] = ..., min_learning_rate: _Optional[float] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("name", "dataset_id", "validation_fraction", "samples", "features", "classes", "noise")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset_id: str
    validation_fraction: float
    samples: int
    features: int
    classes: int
    noise: float
    def __init__(self, name: _Optional[str] = ..., dataset_id: _Optional[str] = ..., validation_fraction: _Optional[float] = ..., samples: _Optional[int] = ..., features: _Optional[int] = ..., classes: _Optional[int] = ..., noise: _Optional[float] = ...) -> None: ...

class StopWhen(_message.Message):
    __slots__ = ("metric", "at_least", "at_most", "patience_evaluations")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    AT_MOST_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    at_least: float
    at_most: float
    patience_evaluations: int
    def __init__(self, metric: _Optional[str] = ..., at_least: _Optional[float] = ..., at_most: _Optional[float] = ..., patience_evaluations: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "layers", "loss", "optimizer", "batch_size", "epochs", "steps", "dataset", "workers", "consistency", "seed", "eval_every", "checkpoint_every", "max_seconds", "schedule", "l2", "label_smoothing", "huber_delta", "init", "dtype", "device", "staleness", "staleness_aware_lr", "ps_shards", "compression", "topk_fraction", "stop_when")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    HUBER_DELTA_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_AWARE_LR_FIELD_NUMBER: _ClassVar[int]
    PS_SHARDS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STOP_WHEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    loss: str
    optimizer: OptimizerSpec
    batch_size: int
    epochs: int
    steps: int
    dataset: DatasetSpec
    workers: int
    consistency: str
    seed: int
    eval_every: int
    checkpoint_every: int
    max_seconds: float
    schedule: ScheduleSpec
    l2: float
    label_smoothing: float
    huber_delta: float
    init: str
    dtype: str
    device: str
    staleness: int
    staleness_aware_lr: bool
    ps_shards: int
    compression: str
    topk_fraction: float
    stop_when: StopWhen
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ..., loss: _Optional[str] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[int] = ..., steps: _Optional[int] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., workers: _Optional[int] = ..., consistency: _Optional[str] = ..., seed: _Optional[int] = ..., eval_every: _Optional[int] = ..., checkpoint_every: _Optional[int] = ..., max_seconds: _Optional[float] = ..., schedule: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., l2: _Optional[float] = ..., label_smoothing: _Optional[float] = ..., huber_delta: _Optional[float] = ..., init: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., staleness: _Optional[int] = ..., staleness_aware_lr: _Optional[bool] = ..., ps_shards: _Optional[int] = ..., compression: _Optional[str] = ..., topk_fraction: _Optional[float] = ..., stop_when: _Optional[_Union[StopWhen, _Mapping]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("step", "epoch", "loss", "samples_per_second", "learning_rate", "validation_loss", "validation_accuracy", "elapsed_seconds", "gradient_norms", "staleness_mean", "staleness_max", "bytes_pushed", "bytes_pulled", "compute_seconds", "clock_lead_max")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORMS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MEAN_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MAX_FIELD_NUMBER: _ClassVar[int]
    BYTES_PUSHED_FIELD_NUMBER: _ClassVar[int]
    BYTES_PULLED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_LEAD_MAX_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: int
    loss: float
    samples_per_second: float
    learning_rate: float
    validation_loss: float
    validation_accuracy: float
    elapsed_seconds: float
    gradient_norms: _containers.RepeatedScalarFieldContainer[float]
    staleness_mean: float
    staleness_max: int
    bytes_pushed: int
    bytes_pulled: int
    compute_seconds: float
    clock_lead_max: int
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., learning_rate: _Optional[float] = ..., validation_loss: _Optional[float] = ..., validation_accuracy: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., gradient_norms: _Optional[_Iterable[float]] = ..., staleness_mean: _Optional[float] = ..., staleness_max: _Optional[int] = ..., bytes_pushed: _Optional[int] = ..., bytes_pulled: _Optional[int] = ..., compute_seconds: _Optional[float] = ..., clock_lead_max: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "name", "state", "reason", "spec", "created_at", "started_at", "finished_at", "step", "total_steps", "latest", "workers", "queue_position", "queue_reason", "submission_id", "owner", "sweep_id", "trial_number")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_REASON_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: JobState
    reason: str
    spec: JobSpec
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    step: int
    total_steps: int
    latest: MetricPoint
    workers: _containers.RepeatedCompositeFieldContainer[WorkerPlacement]
    queue_position: int
    queue_reason: str
    submission_id: str
    owner: str
    sweep_id: str
    trial_number: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., latest: _Optional[_Union[MetricPoint, _Mapping]] = ..., workers: _Optional[_Iterable[_Union[WorkerPlacement, _Mapping]]] = ..., queue_position: _Optional[int] = ..., queue_reason: _Optional[str] = ..., submission_id: _Optional[str] = ..., owner: _Optional[str] = ..., sweep_id: _Optional[str] = ..., trial_number: _Optional[int] = ...) -> None: ...

class WorkerPlacement(_message.Message):
    __slots__ = ("index", "node_id", "hostname", "pid")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    index: int
    node_id: str
    hostname: str
    pid: int
    def __init__(self, index: _Optional[int] = ..., node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "submission_id", "validate_only")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    submission_id: str
    validate_only: bool
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., submission_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StreamMetricsRequest(_message.Message):
    __slots__ = ("job_id", "after_step", "batched")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_STEP_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_step: int
    batched: bool
    def __init__(self, job_id: _Optional[str] = ..., after_step: _Optional[int] = ..., batched: _Optional[bool] = ...) -> None: ...

class MetricPoints(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class StreamMetricsResponse(_message.Message):
    __slots__ = ("point", "final", "points")
    POINT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    point: MetricPoint
    final: Job
    points: MetricPoints
    def __init__(self, point: _Optional[_Union[MetricPoint, _Mapping]] = ..., final: _Optional[_Union[Job, _Mapping]] = ..., points: _Optional[_Union[MetricPoints, _Mapping]] = ...) -> None: ...

class GetWeightsRequest(_message.Message):
    __slots__ = ("job_id", "format", "latest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    format: WeightsFormat
    latest: bool
    def __init__(self, job_id: _Optional[str] = ..., format: _Optional[_Union[WeightsFormat, str]] = ..., latest: _Optional[bool] = ...) -> None: ...

class WeightsChunk(_message.Message):
    __slots__ = ("data", "trailer")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    trailer: WeightsTrailer
    def __init__(self, data: _Optional[bytes] = ..., trailer: _Optional[_Union[WeightsTrailer, _Mapping]] = ...) -> None: ...

class WeightsTrailer(_message.Message):
    __slots__ = ("sha256", "total_bytes", "format")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_bytes: int
    format: WeightsFormat
    def __init__(self, sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., format: _Optional[_Union[WeightsFormat, str]] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk", "sha256")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    header: DatasetHeader
    chunk: bytes
    sha256: str
    def __init__(self, header: _Optional[_Union[DatasetHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class DatasetHeader(_message.Message):
    __slots__ = ("name", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: DatasetFormat
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("dataset_id", "name", "task", "rows", "features", "outputs", "size_bytes", "created_at", "owner")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    name: str
    task: str
    rows: int
    features: int
    outputs: int
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, dataset_id: _Optional[str] = ..., name: _Optional[str] = ..., task: _Optional[str] = ..., rows: _Optional[int] = ..., features: _Optional[int] = ..., outputs: _Optional[int] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GradientCheckReport(_message.Message):
    __slots__ = ("layer_errors", "worst_error", "checked_entries", "passed", "tolerance")
    LAYER_ERRORS_FIELD_NUMBER: _ClassVar[int]
    WORST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    layer_errors: _containers.RepeatedScalarFieldContainer[float]
    worst_error: float
    checked_entries: int
    passed: bool
    tolerance: float
    def __init__(self, layer_errors: _Optional[_Iterable[float]] = ..., worst_error: _Optional[float] = ..., checked_entries: _Optional[int] = ..., passed: _Optional[bool] = ..., tolerance: _Optional[float] = ...) -> None: ...
