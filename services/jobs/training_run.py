"""TrainingRun: what a step loop is given (the job's step reporter, its status shared
with `poll`, its recovery) and TrainingOutput, what the runner keeps for its callers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from services.jobs.faults import Recovery
from services.jobs.run_status import RunStatus
from services.jobs.step_report import StepReporter


@dataclass
class TrainingOutput:
    """Filled in while a job trains; `final_weights` and benchmarks read it."""

    # θ after the last step: the ObjectRefs of one export, (step, θ part) each, kept
    # here (their owner) until the runner's caller has fetched them
    final: list[ray.ObjectRef] | None = None
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
