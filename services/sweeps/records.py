"""What the service knows about a sweep: its record, its trials and its events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.jobs.records import JobState
from services.sweeps.paths import Value
from services.sweeps.spec import SweepSpec


class EventKind(str, enum.Enum):
    TRIAL_STARTED = "TRIAL_STARTED"  # its job was submitted
    TRIAL_REPORTED = "TRIAL_REPORTED"  # an evaluation reached the scheduler
    TRIAL_STOPPED = "TRIAL_STOPPED"  # the scheduler stopped it at a rung
    TRIAL_FINISHED = "TRIAL_FINISHED"  # its job ended


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial as stored. `state` is its job's (None before its job exists);
    `concluded`: the search has been told how it ended."""

    number: int
    params: dict[str, Value]  # path -> value
    job_id: str = ""
    state: JobState | None = None
    reason: str = ""
    stopped_early: bool = False
    rung: int = 0
    metric: float | None = None
    metric_step: int = 0
    evaluations: int = 0
    step: int = 0
    total_steps: int = 0
    concluded: bool = False

    @property
    def is_active(self) -> bool:
        """Counts against parallel_trials: started and not yet concluded."""
        return not self.concluded


@dataclass(frozen=True, kw_only=True)
class SweepRecord:
    """A sweep as stored; `trials` in number order. Times are Unix seconds."""

    sweep_id: str
    spec: SweepSpec
    owner: str
    owner_is_admin: bool = False
    state: JobState = JobState.RUNNING
    reason: str = ""
    created_at: float
    finished_at: float | None = None
    submission_id: str = ""
    cancel_requested: bool = False  # CancelSweep was called: it ends CANCELLED
    trials: tuple[TrialRecord, ...] = field(default=(), compare=False)

    @property
    def is_finished(self) -> bool:
        return self.state.is_terminal

    @property
    def best(self) -> TrialRecord | None:
        """The finished (SUCCEEDED) trial with the best metric; the lowest number on a tie."""
        done = [t for t in self.trials if t.state is JobState.SUCCEEDED and t.metric is not None]
        if not done:
            return None
        sign = -1.0 if self.spec.maximize else 1.0
        return min(done, key=lambda t: (sign * t.metric, t.number))  # type: ignore[operator]

    @property
    def steps_trained(self) -> int:
        return sum(t.step for t in self.trials)

    @property
    def steps_full(self) -> int:
        return sum(t.total_steps for t in self.trials)


@dataclass(frozen=True, kw_only=True)
class SweepEvent:
    seq: int
    kind: EventKind
    at: float
    trial: TrialRecord
    message: str = ""
