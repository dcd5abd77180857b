import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from bptrain.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SweepEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWEEP_EVENT_KIND_UNSPECIFIED: _ClassVar[SweepEventKind]
    TRIAL_STARTED: _ClassVar[SweepEventKind]
    TRIAL_REPORTED: _ClassVar[SweepEventKind]
    TRIAL_STOPPED: _ClassVar[SweepEventKind]
    TRIAL_FINISHED: _ClassVar[SweepEventKind]
SWEEP_EVENT_KIND_UNSPECIFIED: SweepEventKind
TRIAL_STARTED: SweepEventKind
TRIAL_REPORTED: SweepEventKind
TRIAL_STOPPED: SweepEventKind
TRIAL_FINISHED: SweepEventKind

class Values(_message.Message):
    __slots__ = ("numbers", "texts")
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    numbers: _containers.RepeatedScalarFieldContainer[float]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, numbers: _Optional[_Iterable[float]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class IntRange(_message.Message):
    __slots__ = ("low", "high", "step")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    step: int
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class SweepParameter(_message.Message):
    __slots__ = ("path", "grid", "choice", "uniform", "log_uniform", "integer")
    PATH_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    UNIFORM_FIELD_NUMBER: _ClassVar[int]
    LOG_UNIFORM_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    path: str
    grid: Values
    choice: Values
    uniform: Range
    log_uniform: Range
    integer: IntRange
    def __init__(self, path: _Optional[str] = ..., grid: _Optional[_Union[Values, _Mapping]] = ..., choice: _Optional[_Union[Values, _Mapping]] = ..., uniform: _Optional[_Union[Range, _Mapping]] = ..., log_uniform: _Optional[_Union[Range, _Mapping]] = ..., integer: _Optional[_Union[IntRange, _Mapping]] = ...) -> None: ...

class SweepScheduler(_message.Message):
    __slots__ = ("kind", "grace_period", "reduction_factor")
    KIND_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    grace_period: int
    reduction_factor: int
    def __init__(self, kind: _Optional[str] = ..., grace_period: _Optional[int] = ..., reduction_factor: _Optional[int] = ...) -> None: ...

class SweepSpec(_message.Message):
    __slots__ = ("name", "base", "parameters", "metric", "direction", "max_trials", "parallel_trials", "seed", "sampler", "scheduler")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TRIALS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    name: str
    base: _training_pb2.JobSpec
    parameters: _containers.RepeatedCompositeFieldContainer[SweepParameter]
    metric: str
    direction: str
    max_trials: int
    parallel_trials: int
    seed: int
    sampler: str
    scheduler: SweepScheduler
    def __init__(self, name: _Optional[str] = ..., base: _Optional[_Union[_training_pb2.JobSpec, _Mapping]] = ..., parameters: _Optional[_Iterable[_Union[SweepParameter, _Mapping]]] = ..., metric: _Optional[str] = ..., direction: _Optional[str] = ..., max_trials: _Optional[int] = ..., parallel_trials: _Optional[int] = ..., seed: _Optional[int] = ..., sampler: _Optional[str] = ..., scheduler: _Optional[_Union[SweepScheduler, _Mapping]] = ...) -> None: ...

class ParameterValue(_message.Message):
    __slots__ = ("path", "number", "text")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    path: str
    number: float
    text: str
    def __init__(self, path: _Optional[str] = ..., number: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("number", "job_id", "parameters", "state", "reason", "stopped_early", "rung", "metric", "metric_step", "step", "total_steps")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STOPPED_EARLY_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    METRIC_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    number: int
    job_id: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterValue]
    state: _training_pb2.JobState
    reason: str
    stopped_early: bool
    rung: int
    metric: float
    metric_step: int
    step: int
    total_steps: int
    def __init__(self, number: _Optional[int] = ..., job_id: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterValue, _Mapping]]] = ..., state: _Optional[_Union[_training_pb2.JobState, str]] = ..., reason: _Optional[str] = ..., stopped_early: _Optional[bool] = ..., rung: _Optional[int] = ..., metric: _Optional[float] = ..., metric_step: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class Sweep(_message.Message):
    __slots__ = ("sweep_id", "name", "state", "reason", "spec", "created_at", "finished_at", "trials", "best_trial", "steps_trained", "steps_full", "submission_id", "owner")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_TRAINED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FULL_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    name: str
    state: _training_pb2.JobState
    reason: str
    spec: SweepSpec
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    best_trial: int
    steps_trained: int
    steps_full: int
    submission_id: str
    owner: str
    def __init__(self, sweep_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[_training_pb2.JobState, str]] = ..., reason: _Optional[str] = ..., spec: _Optional[_Union[SweepSpec, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., best_trial: _Optional[int] = ..., steps_trained: _Optional[int] = ..., steps_full: _Optional[int] = ..., submission_id: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class SubmitSweepRequest(_message.Message):
    __slots__ = ("spec", "submission_id", "validate_only")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    spec: SweepSpec
    submission_id: str
    validate_only: bool
    def __init__(self, spec: _Optional[_Union[SweepSpec, _Mapping]] = ..., submission_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class GetSweepRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class ListSweepsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _training_pb2.JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_training_pb2.JobState, str]] = ...) -> None: ...

class ListSweepsResponse(_message.Message):
    __slots__ = ("sweeps", "next_page_token")
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sweeps: _containers.RepeatedCompositeFieldContainer[Sweep]
    next_page_token: str
    def __init__(self, sweeps: _Optional[_Iterable[_Union[Sweep, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelSweepRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class StreamSweepRequest(_message.Message):
    __slots__ = ("sweep_id", "after_seq")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    after_seq: int
    def __init__(self, sweep_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class SweepEvent(_message.Message):
    __slots__ = ("seq", "kind", "at", "trial", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: SweepEventKind
    at: _timestamp_pb2.Timestamp
    trial: Trial
    message: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[SweepEventKind, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trial: _Optional[_Union[Trial, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class StreamSweepResponse(_message.Message):
    __slots__ = ("event", "final")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    event: SweepEvent
    final: Sweep
    def __init__(self, event: _Optional[_Union[SweepEvent, _Mapping]] = ..., final: _Optional[_Union[Sweep, _Mapping]] = ...) -> None: ...
