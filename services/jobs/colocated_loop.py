"""The colocated workers' loop: the runner launches their step loop once
(`ColocatedCohort.launch`), then drains their statistics and snapshots in batches every
RunStatus.drain_period_s and reports the steps that are complete; it is off the step path. A fault
restarts every worker from the newest checkpoint at or before the last reported step.

bsp workers keep shard snapshots at checkpoint and evaluation steps; asp/ssp ones share
one parameter server, whose state is read here when such a step is reported. The final θ
is the runner's to export (`ColocatedCohort.export`).
"""

from __future__ import annotations

import logging

import ray
from ray.exceptions import RayTaskError

from services.jobs.colocated_cohort import ColocatedCohort
from services.jobs.faults import FAULTS, STEP_TIMEOUT_S, is_recoverable
from services.jobs.outcomes import JobFailed
from services.jobs.pending_steps import PendingSteps
from services.jobs.shards import joined, merge_shards
from services.jobs.training_run import TrainingRun
from services.paramserver.colocated import ShardState
from services.paramserver.server import StepStats

log = logging.getLogger(__name__)


def train_colocated(run: TrainingRun, step: int) -> None:
    """Train from `step` (done) to the last step, restarting the workers on a fault."""
    ColocatedLoop(run, step).train()


class ColocatedLoop:
    """One job's colocated training, from step `reported` on."""

    def __init__(self, run: TrainingRun, reported: int) -> None:
        report = run.report
        self.run, self.report, self.reported = run, report, reported
        self.cohort: ColocatedCohort = report.cohort
        self.snapshot_every = (report.eval_every, report.checkpoint_every)
        self.is_async = report.spec.consistency != "bsp"
        self.pending = self._new_pending()
        self.running: list[ray.ObjectRef] = []  # the workers' loops, until all ended
        self.allowed = reported  # the last step the workers may train (the lead's limit)

    def train(self) -> None:
        report, cohort = self.report, self.cohort
        report.start_clock()  # before the launch: step 1's end is after it
        self.allowed = self.run.status.lead.limit(self.reported)
        self.running = self._launch()
        while self.reported < report.steps:
            report.check_limits(self.reported)
            try:
                self._drain()
            except (*FAULTS, RayTaskError) as error:
                if not is_recoverable(error):
                    raise
                self.run.recovery.stop_if_cancelled()
                self.run.recovery.restart(cohort, self.reported, error)
                self.pending = self._new_pending()
                self.running = self._launch()
        try:
            self.run.output.profiles = cohort.profiles()
        except FAULTS as error:  # a worker lost after the last step: no profile then
            log.info("job %s: no worker profiles (%s)", cohort.job_id, error)

    def _new_pending(self) -> PendingSteps:
        waits_for = () if self.is_async else self.snapshot_every
        return PendingSteps(self.report.spec.workers, waits_for, self.report.steps)

    def _launch(self) -> list[ray.ObjectRef]:
        steps = self.report.steps
        return self.cohort.launch(steps, self.snapshot_every, steps, self.allowed)

    def _drain(self) -> None:
        """One drain: report the steps it completes, and follow the lead and the loops."""
        status = self.run.status
        period = status.drain_period_s if self.running else 0.0
        batches = self.cohort.drain(period, self.allowed)
        for drained in batches:
            self.pending.add(drained.stats, drained.snapshots)
        with status.batch():  # the drained steps reach `poll` together
            self._report_complete()
        if not self.running and self.reported < self.report.steps:  # every loop ended
            raise JobFailed(f"the workers stopped at step {self.reported}")  # a bug
        if any(drained.is_held for drained in batches):  # at the lead's limit
            status.wait_for_record(self.reported, self.allowed, self.run.is_cancelled)
        self.allowed = status.lead.limit(self.reported)
        finished, _ = ray.wait(self.running, num_returns=len(self.running), timeout=0)
        ray.get(finished, timeout=STEP_TIMEOUT_S)  # a worker's error surfaces here
        if self.running and len(finished) == len(self.running):
            self.running = []  # every loop ended: the next drain has the rest

    def _report_complete(self) -> None:
        report = self.report
        for done_step, stats, states in self.pending.complete(after=self.reported):
            stats, states = self._merged(done_step, stats, states)
            theta = joined([s.theta for s in states]) if states else None
            self.reported = done_step
            report.finish_step(done_step, stats, None, theta, states)

    def _merged(
        self, step: int, stats: list[StepStats], states: list[ShardState] | None
    ) -> tuple[list[StepStats], list[ShardState] | None]:
        """A complete step's updates and θ's shard states as `finish_step` takes them:
        bsp shards' stats merged into one update; asp/ssp's shared server's state read
        on a snapshot step."""
        if not self.is_async:
            return [merge_shards(stats)], states
        is_snapshot = step == self.report.steps or any(step % k == 0 for k in self.snapshot_every)
        return stats, [self.cohort.state_dict()] if is_snapshot else None
