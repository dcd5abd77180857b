"""RunnerOptions: how one job's runner runs it (beyond the job's spec).

The API process builds them (`runner_launch.runner_options`) and hands them to a runner
it starts or to a standby runner it assigns the job to; Ray pickles them on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.jobs.lead import MAX_LEAD_S
from services.jobs.run_status import DRAIN_PERIOD_S

TRANSPORTS = ("auto", "colocated", "graph", "tasks")


@dataclass(frozen=True)
class RunnerOptions:
    """One job's runner options, checked when made (ValueError); each has a default, so
    `JobRunner(job_id, spec)` runs a job with no uploaded data, checkpoints or resumption.

    - `worker_cpus`: the CPUs each of the job's workers reserves (> 0).
    - `datasets_dir`: where uploaded datasets are (None: none can be read).
    - `checkpoint_dir`: where the job's checkpoints go (None: no checkpoints).
    - `resume_at_most`: the last step whose metrics are stored (>= 0); a resumed job
      starts from the newest checkpoint at or before it, so no step goes unreported.
    - `transport` (bsp), one of `TRANSPORTS`: "auto" picks colocated workers where
      `colocated_cohort.is_colocated` says so, else tasks; "colocated" insists on them;
      "graph" runs steps with a parameter-server actor as a Ray compiled graph, "tasks"
      as one task per hop (both kept for comparison and for what the colocated workers
      do not cover).
    - `max_lead_s`: how far (in seconds of training) the runner may run past the last
      step a `poll` acknowledged (> 0); None when nobody polls (the runner then trains
      straight to the end).
    - `drain_period_s`: how often colocated workers' statistics are drained, so how
      soon a step's point (and its evaluation) reaches `poll` (in [0.05, 5]); a sweep's
      trials drain more often, so that a scheduler's verdict reaches them sooner.
    - `stop_history`: (step, value) of the spec's `stop_when` metric at the stored steps
      up to `resume_at_most`, in step order: a runner that replaces a lost one resumes
      the rule's count from them (`StepReporter.replay_evaluations`), so patience is
      not counted again from its resume.
    """

    worker_cpus: float = 1.0
    datasets_dir: Path | None = None
    checkpoint_dir: Path | None = None
    resume_at_most: int = 0
    transport: str = "auto"
    max_lead_s: float | None = MAX_LEAD_S
    drain_period_s: float = DRAIN_PERIOD_S
    stop_history: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.worker_cpus > 0:
            raise ValueError(f"worker_cpus must be > 0, got {self.worker_cpus}")
        if self.resume_at_most < 0:
            raise ValueError(f"resume_at_most must be >= 0, got {self.resume_at_most}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.max_lead_s is not None and not self.max_lead_s > 0:
            raise ValueError(f"max_lead_s must be > 0 or None, got {self.max_lead_s}")
        if not 0.05 <= self.drain_period_s <= 5.0:
            raise ValueError(f"drain_period_s must be in [0.05, 5], got {self.drain_period_s}")
        steps = [step for step, _ in self.stop_history]
        if steps and not (
            steps[0] > 0 and steps[-1] <= self.resume_at_most and steps == sorted(set(steps))
        ):
            raise ValueError(
                "stop_history must hold increasing steps in [1, resume_at_most = "
                f"{self.resume_at_most}]"
            )
