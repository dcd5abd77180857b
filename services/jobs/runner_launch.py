"""How the API process gets a job's runner actor: found by name, or started detached for it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import ray

from services.cluster import remote_class
from services.jobs.lead import MAX_LEAD_S
from services.jobs.records import JobRecord
from services.jobs.run_status import DRAIN_PERIOD_S
from services.jobs.runner import JobRunner
from services.jobs.runner_options import RunnerOptions
from services.jobs.spec import JobSpec

RUNNER_START_TIMEOUT_S = 60.0  # for a dead runner's name to be freed


def runner_actor_name(record: JobRecord) -> str:
    """The Ray actor name of a job's runner: a standby's, stored with the job, or the one
    a runner started for the job gets."""
    return record.runner or f"{record.job_id}/runner"


def running_runner(record: JobRecord) -> ray.actor.ActorHandle | None:
    """The job's runner if it outlived an earlier API server (it is detached)."""
    try:
        return ray.get_actor(runner_actor_name(record))
    except ValueError:
        return None


@dataclass(frozen=True)
class JobSetup:
    """Where one job's files are and what its workers reserve (from the service's config).

    - `weights_path`: the file the job's final θ is written to when it SUCCEEDED.
    - `checkpoint_dir`: the job's checkpoints (its runners resume from them).
    - `datasets_dir`: where uploaded datasets are.
    - `worker_cpus`: the CPUs each of the job's workers reserves.
    - `drain_period_s`: how often its runner drains the workers' statistics.
    - `max_lead_s`: how far (in seconds of training) its runner may run past the stored step.
    """

    weights_path: Path
    checkpoint_dir: Path
    datasets_dir: Path
    worker_cpus: float
    drain_period_s: float = DRAIN_PERIOD_S
    max_lead_s: float = MAX_LEAD_S


def runner_options(
    setup: JobSetup, *, resume_at_most: int, stop_history: tuple[tuple[int, float], ...] = ()
) -> RunnerOptions:
    """A runner's options for the job, resuming after step `resume_at_most` with its
    `stop_when` metric's `stop_history` (the paths made absolute: the runner's process
    may have another working directory)."""
    return RunnerOptions(
        worker_cpus=setup.worker_cpus,
        datasets_dir=setup.datasets_dir.resolve(),
        checkpoint_dir=setup.checkpoint_dir.resolve(),
        resume_at_most=resume_at_most,
        drain_period_s=setup.drain_period_s,
        max_lead_s=setup.max_lead_s,
        stop_history=stop_history,
    )


def start_runner(
    name: str, job_id: str, spec: JobSpec, options: RunnerOptions
) -> ray.actor.ActorHandle:
    """A detached runner named `name` for the job: it goes on when this API process stops,
    and the next one reattaches by that name."""
    # A dead runner's name is freed shortly after its death: retry until it is.
    deadline = time.monotonic() + RUNNER_START_TIMEOUT_S
    while True:
        try:
            return (
                remote_class(JobRunner)
                .options(name=name, num_cpus=0, max_concurrency=4, lifetime="detached")
                .remote(job_id, spec, options)
            )
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
