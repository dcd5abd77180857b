"""JobRunner: trains one job on Ray, from its first step to a terminal state.

A plain class made a Ray actor by the job manager (threaded, so `poll` and `cancel`
answer while `run` trains). The driver (the API process) is not in the step loop, and
θ and g never pass through the runner. Which parameter server a job gets is
`colocated_cohort.is_colocated`'s choice, and its step loop follows:

- bsp (the default): N colocated workers, each holding one θ shard and its optimizer
  state (`ColocatedCohort`, `colocated_loop`); the runner drains their statistics and
  checkpoint snapshots in batches, off the step path.
- bsp with S > 1 parameter-server actors or compression: θ's and the gradient slices'
  ObjectRefs pass between the actors, or, with one shard and `transport="graph"`, each
  step runs as a Ray compiled graph (`bsp_loop`).
- asp/ssp: every worker pushes its gradients at its own pace (`async_loop`).

Each step's checks, metric point and checkpoint are `step_report`'s; the state and the
points `poll` returns are `run_status`'s; faults and their repair are `faults`'s. Every
step is reported once.

Weights leave by one path: `final_weights` and `latest_weights` return the ObjectRefs
of the cohort's `export` (the parameter-server shards', or the first colocated
worker's), not arrays: the caller fetches θ from where it was exported. The final refs
are kept until the runner is released, after the caller has fetched them.

Checkpoints go to the `checkpoint_dir` of the job's
`RunnerOptions` (services/jobs/runner_options.py) every `checkpoint_every` steps and at
the end.

The resume rule: a runner resumes from the newest intact checkpoint at or before the
last step the store has recorded (`resume_at_most`); checkpoints past it are removed at
start (an earlier runner trained past what was recorded). The runner's lead over the
store is bounded (`lead.Lead`), and pruning keeps the checkpoint that rule needs. The
spec's `stop_when` rule resumes from the stored values of its metric up to that
checkpoint (`RunnerOptions.stop_history`), so a replacement stops where its
predecessor would have.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import numpy as np
import ray

from services.errors import InvalidSpecError
from services.jobs.async_loop import train_async
from services.jobs.bsp_loop import train_bsp
from services.jobs.checkpoints import CheckpointStore
from services.jobs.cohort import Cohort, PlacementError
from services.jobs.colocated_cohort import ColocatedCohort, is_colocated
from services.jobs.colocated_loop import train_colocated
from services.jobs.faults import RECOVERY_ATTEMPTS, STEP_TIMEOUT_S, Recovery
from services.jobs.kept_workers import KeptWorkers
from services.jobs.lead import Lead
from services.jobs.outcomes import JobCancelled, JobFailed, StoppedEarly
from services.jobs.records import JobState
from services.jobs.run_status import RunnerUpdate, RunStatus
from services.jobs.runner_options import TRANSPORTS, RunnerOptions
from services.jobs.spec import JobSpec
from services.jobs.step_report import StepReporter, is_checkpoint_due
from services.jobs.training_data import DataError, TrainingData, prepare_data, total_steps
from services.jobs.training_run import TrainingOutput, TrainingRun
from services.paramserver.colocated_async import NotOneNode

# Imported from here by other modules and tests (some now defined in the modules above).
__all__ = ["RECOVERY_ATTEMPTS", "TRANSPORTS", "JobRunner", "RunnerUpdate", "is_checkpoint_due"]

log = logging.getLogger(__name__)


class JobRunner:
    """Runs one job from start to a terminal state; see the module docstring."""

    def __init__(self, job_id: str, spec: JobSpec, options: RunnerOptions | None = None) -> None:
        """`options`: how to run the job (`RunnerOptions`; its defaults when None)."""
        options = options if options is not None else RunnerOptions()
        if options.transport == "colocated" and not is_colocated(spec):
            raise ValueError("this job cannot run on colocated workers (see is_colocated)")
        self.job_id = job_id
        self.spec = spec
        self.options = options
        checkpoint_dir = options.checkpoint_dir
        self.checkpoints = CheckpointStore(Path(checkpoint_dir)) if checkpoint_dir else None
        lead = Lead(0, max_s=options.max_lead_s)
        lead.record(options.resume_at_most)
        self._status = RunStatus(
            lead, last_published=options.resume_at_most, drain_period_s=options.drain_period_s
        )
        self._cancelled = threading.Event()
        self._recovery = Recovery(job_id, self._cancelled.is_set)
        self._cohort: Cohort | ColocatedCohort | None = None
        self._output = TrainingOutput()

    @property
    def profiles(self) -> list[dict]:
        """Colocated workers' `profile()`, once trained."""
        return self._output.profiles

    # --- called by the job manager ---------------------------------------------------

    def run(self) -> JobState:
        """Trains to the end; returns the terminal state (also visible through `poll`).

        Once per runner: a later call (an API process that reattached and cannot know
        whether its predecessor's call reached this actor) returns the state at once."""
        status = self._status
        if not status.begin():
            return status.state
        try:
            self._train()
            status.finish(JobState.SUCCEEDED, "")
        except StoppedEarly as stopped:
            status.finish(JobState.SUCCEEDED, str(stopped))
        except JobCancelled:
            status.finish(JobState.CANCELLED, "cancelled by request")
        except (JobFailed, DataError, PlacementError) as error:
            status.finish(JobState.FAILED, str(error))
        except Exception as error:
            if self._cancelled.is_set():
                status.finish(JobState.CANCELLED, "cancelled by request")
            else:
                log.exception("job %s failed", self.job_id)
                status.finish(JobState.FAILED, f"{type(error).__name__}: {error}"[:500])
        finally:
            self._release_actors(ended=status.state)
        return status.state

    def poll(self, after_step: int, timeout_s: float) -> RunnerUpdate:
        """Points with step > after_step (waiting up to timeout_s for one), and the state.

        Points up to after_step are acknowledged (stored by the caller) and dropped here.
        After a parameter server is restored from a checkpoint, the steps after the
        checkpoint are computed again; those at or below `after_step` are not sent
        again (BSP recomputes them exactly), so every step reaches the store once.
        """
        update = self._status.poll(after_step, timeout_s, self._on_recorded)
        cohort = self._cohort
        if cohort is None:
            return update
        return dataclasses.replace(
            update, placement=tuple(cohort.placement), restarts=cohort.replacements
        )

    def cancel(self, job_id: str | None = None) -> None:
        """Stops the step loop and its actors; `run` then ends CANCELLED. With `job_id`,
        only if that is this runner's job (a recycled runner may run another by now)."""
        if job_id is not None and job_id != getattr(self, "job_id", None):
            return
        self._cancelled.set()
        self._release_actors()

    def final_weights(self) -> list[ray.ObjectRef]:
        """θ after the last step, once the job SUCCEEDED: the ObjectRefs of one export,
        (step, θ part) each, in shard order (`weights.join_exported` joins them)."""
        if self._output.final is None:
            raise RuntimeError("the job has no final θ")
        return self._output.final

    def latest_weights(self, job_id: str | None = None) -> list[ray.ObjectRef]:
        """θ as the running job holds it now: the ObjectRefs of one export, as
        `final_weights`'s; returns at once (the caller waits for them). With `job_id`,
        LookupError unless that is this runner's job."""
        if job_id is not None and job_id != getattr(self, "job_id", None):
            raise LookupError(f"this runner does not run job {job_id}")
        if self._cohort is None:
            raise RuntimeError("the job has not started training")
        return self._cohort.export()

    def process_ids(self) -> dict[str, list[int]]:
        """Process ids of this job's runner, workers and parameter-server actors, for
        per-process CPU figures (bench/distributed.py reads them from /proc)."""
        cohort = self._cohort
        servers = getattr(cohort, "servers", [])
        placements = ray.get([s.placement.remote() for s in servers], timeout=STEP_TIMEOUT_S)
        return {
            "runner": [os.getpid()],
            "workers": [p["pid"] for p in (cohort.placement if cohort else [])],
            "servers": [p["pid"] for p in placements],
        }

    # --- training ----------------------------------------------------------------------

    def _train(self) -> None:
        spec, options = self.spec, self.options
        data = prepare_data(spec, options.datasets_dir)
        steps = total_steps(spec, data.plan)
        colocated = options.transport == "colocated" or (
            options.transport == "auto" and is_colocated(spec)
        )
        self._discard_unrecorded_checkpoints()
        status = self._status
        status.lead = Lead(steps, max_s=options.max_lead_s)
        status.lead.record(options.resume_at_most)
        kind = ColocatedCohort if colocated else Cohort
        try:  # > 0 when resuming from a checkpoint
            step = self._start_cohort(kind, data, steps)
        except NotOneNode as error:  # asp/ssp over several nodes: parameter-server actors
            log.info("job %s: %s; using parameter-server actors", self.job_id, error)
            colocated = False
            step = self._start_cohort(Cohort, data, steps)
        cohort = self._cohort
        status.lead.start(step)
        status.start(steps)
        report = StepReporter(
            cohort, steps, publish=status.publish, is_cancelled=self._cancelled.is_set
        )
        run = TrainingRun(
            report, status, self._recovery, self._output, options.transport, self._cancelled.is_set
        )
        if colocated:
            loop = train_colocated
        else:
            loop = train_bsp if spec.consistency == "bsp" else train_async
        try:
            report.replay_evaluations(step, options.stop_history)
            loop(run, step)
        except StoppedEarly as stopped:
            self._output.final = self._exported(cohort, report.reported, stopped.theta)
            raise
        self._output.final = self._exported(cohort, report.reported)

    @staticmethod
    def _exported(
        cohort: Cohort | ColocatedCohort, step: int, theta: np.ndarray | None = None
    ) -> list[ray.ObjectRef]:
        """The final θ's refs, once the export is done (so the actors may go): the
        cohort's export, or, for colocated workers stopped early at `step`, `theta`
        (they trained past it: that step's θ is the snapshot the runner drained)."""
        if theta is not None and isinstance(cohort, ColocatedCohort):
            return [ray.put((step, theta))]
        refs = cohort.export()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=STEP_TIMEOUT_S, fetch_local=False)
        if len(ready) < len(refs):
            raise JobFailed(f"the final θ was not exported in {STEP_TIMEOUT_S:.0f} s")
        return refs

    def _discard_unrecorded_checkpoints(self) -> None:
        """Remove the checkpoints past the recorded step (`resume_at_most`)."""
        if self.checkpoints is None:
            return
        recorded = self.options.resume_at_most
        self.checkpoints.recorded = recorded
        dropped = self.checkpoints.discard_after(recorded)
        if dropped:
            log.info(
                "job %s: checkpoints %s are past the recorded step %d; removed",
                self.job_id, dropped, recorded,
            )  # fmt: skip

    def _start_cohort(
        self, kind: type[Cohort] | type[ColocatedCohort], data: TrainingData, steps: int
    ) -> int:
        """Create the job's actors (`self._cohort`); returns the step they start after.
        Colocated workers renew what a standby runner kept of its last job's."""
        kept = self._kept_workers()
        if kept is not None and kind is not ColocatedCohort:
            kept.drop()  # parameter-server actors and gradient workers: none renews them
            kept = None
        extra = {"kept": kept} if kept is not None else {}
        try:
            self._cohort = cohort = kind(
                self.job_id,
                self.spec,
                data,
                worker_cpus=self.options.worker_cpus,
                checkpoints=self.checkpoints,
                total_steps=steps,
                **extra,
            )
        except InvalidSpecError as error:  # a schedule that does not fit the step count
            if kept is not None:
                kept.drop()
            raise JobFailed(str(error.under("schedule"))) from None
        at_most = self.options.resume_at_most
        return self._recovery.recovered(
            lambda: cohort.start(at_most), lambda: cohort.restart(at_most)
        )

    def _on_recorded(self, recorded: int) -> None:
        """The store holds every step up to `recorded`: checkpoints before it may go."""
        if self.checkpoints is not None:
            self.checkpoints.recorded = recorded

    def _kept_workers(self) -> KeptWorkers | None:
        """Idle workers of an earlier job for this one to renew: a standby runner's."""
        return None

    def _release_actors(self, ended: JobState | None = None) -> None:
        """Kill the job's actors; `ended`: the job's terminal state, once `run` ends."""
        if self._cohort is not None:
            self._cohort.release()
