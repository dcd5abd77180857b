"""What the service knows about a job: its state, its record and its metric points."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.jobs.spec import JobSpec
from services.tenancy import LOCAL


class JobState(str, enum.Enum):
    """QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, kw_only=True)
class MetricPoint:
    """One optimizer step as the stream shows it. `step` is 1-based: θ's version after it."""

    step: int
    epoch: int
    loss: float
    samples_per_second: float
    learning_rate: float
    elapsed_seconds: float
    validation_loss: float | None = None
    validation_accuracy: float | None = None
    gradient_norms: tuple[float, ...] = ()
    staleness_mean: float = 0.0  # θ versions between a gradient's read and its apply
    staleness_max: int = 0
    # asp/ssp: the most gradients a worker had run ahead of the slowest when it read θ
    # (≤ the staleness bound under ssp; 0 for bsp). Points stored before it load as 0.
    clock_lead_max: int = 0
    bytes_pushed: int = 0  # gradient bytes sent to the parameter server (all workers)
    bytes_pulled: int = 0  # θ bytes read by the workers
    compute_seconds: float = 0.0  # mean time a worker took to compute one gradient


@dataclass(frozen=True)
class TrialTag:
    """What makes a job a sweep's trial: the sweep and the trial's number in it."""

    sweep_id: str
    number: int


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """A job as stored. Times are Unix seconds; None until they happen."""

    job_id: str
    spec: JobSpec
    owner: str = LOCAL.name  # the principal that submitted it
    state: JobState = JobState.QUEUED
    reason: str = ""
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    total_steps: int = 0
    step: int = 0
    weights_path: str = ""
    placement: tuple[dict, ...] = ()  # per worker: node_id, hostname, pid
    submission_id: str = ""
    runner: str = ""  # the Ray actor name of the job's runner when not "{job_id}/runner"
    sweep_id: str = ""  # a sweep's trial: the sweep (services/sweeps), else ""
    trial_number: int = 0  # and its trial number there
    queue_position: int = 0  # 1-based while waiting for a slot (derived, not stored)
    queue_reason: str = ""
    latest: MetricPoint | None = field(default=None, compare=False)

    @property
    def is_finished(self) -> bool:
        return self.state.is_terminal
