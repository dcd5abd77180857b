"""TrainingRun: what a step loop is given (the job's step reporter, its status shared
with `poll`, its recovery) and TrainingOutput, what it leaves for the runner's callers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray

from services.jobs.faults import Recovery
from services.jobs.run_status import RunStatus
from services.jobs.step_report import StepReporter


@dataclass
class TrainingOutput:
    """Filled in while a job trains; `snapshot`, `final_theta` and benchmarks read it."""

    latest: tuple[int, list[ray.ObjectRef] | None] | None = None  # (step, θ's shard refs)
    theta: np.ndarray | None = None  # θ after the last step: (P,)
    profiles: list[dict] = field(default_factory=list)  # colocated workers' `profile()`


@dataclass(frozen=True)
class TrainingRun:
    """One job's training as its step loop sees it; `transport` as JobRunner's."""

    report: StepReporter
    status: RunStatus
    recovery: Recovery
    output: TrainingOutput
    transport: str
    is_cancelled: Callable[[], bool]
