"""SweepDriver: moves one sweep forward: follows its trials' jobs, reports their
evaluations to the search, stops the ones the scheduler stops, starts new trials while
the budget lasts, and ends the sweep.

Every decision is written to the sweep store before it is acted on (a trial is
recorded before its job is submitted, a stop before its job is cancelled), and every
action is idempotent (a trial's job is submitted under the submission id
"{sweep_id}.trial-{n}"; cancelling an ended job changes nothing; Optuna's `tell`
skips a finished trial), so a server restarted at any point redoes what it may not
have finished and repeats no decision.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from optuna.trial import TrialState

from services.errors import (
    AlreadyExistsError,
    InvalidSpecError,
    NotFoundError,
    ResourceExhaustedError,
)
from services.jobs.manager import JobManager
from services.jobs.records import JobRecord, JobState, MetricPoint, TrialTag
from services.sweeps.paths import parse
from services.sweeps.records import EventKind, SweepRecord, TrialRecord
from services.sweeps.search import Search, Verdict
from services.sweeps.store import SweepStore
from services.tenancy import Principal

log = logging.getLogger(__name__)

POINTS_PER_READ = 1000
CANCELLED_SWEEP = "cancelled by request"


class SweepDriver:
    """Advances sweeps; called from one thread at a time (the manager's)."""

    def __init__(
        self,
        *,
        jobs: JobManager,
        store: SweepStore,
        search_for: Callable[[SweepRecord], Search],
        cancels: Executor,
        on_trial_end: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.search_for = search_for
        self.cancels = cancels
        self.on_trial_end = on_trial_end
        self._seen: dict[str, int] = {}  # job id -> last stored step read
        self._cancelling: set[str] = set()  # job ids with a cancel in flight
        self._lock = threading.Lock()

    def advance(self, sweep_id: str) -> SweepRecord:
        """One pass over the sweep; returns it as stored after the pass."""
        record = self.store.get(sweep_id)
        search = self.search_for(record)
        for trial in record.trials:
            if not trial.concluded:
                self._follow(record, search, trial, cancel=record.cancel_requested)
        record = self.store.get(sweep_id)
        if record.state is JobState.RUNNING and not record.cancel_requested:
            self._start_trials(record, search)
            record = self.store.get(sweep_id)
        return self._maybe_end(record)

    # --- a trial ------------------------------------------------------------------------

    def _follow(
        self, sweep: SweepRecord, search: Search, trial: TrialRecord, *, cancel: bool
    ) -> None:
        if not trial.job_id:
            if cancel:
                self._conclude(sweep, search, trial, JobState.CANCELLED, CANCELLED_SWEEP)
                return
            trial = self._submit(sweep, search, trial)
            if trial.concluded or not trial.job_id:
                return
        job = self.jobs.store.get(trial.job_id)
        before = trial
        trial = self._read_evaluations(sweep, search, trial, job)
        trial = dataclasses.replace(
            trial, state=job.state, step=job.step, total_steps=job.total_steps
        )
        if job.state.is_terminal:
            self._conclude(sweep, search, trial, job.state, job.reason)
            return
        if trial != before:
            self.store.put_trial(sweep.sweep_id, trial)
        if cancel or trial.stopped_early:
            self._cancel(sweep, trial.job_id, trial.reason or CANCELLED_SWEEP)

    def _read_evaluations(
        self, sweep: SweepRecord, search: Search, trial: TrialRecord, job: JobRecord
    ) -> TrialRecord:
        """Report each new evaluation of the trial's job. After a stop the search hears
        no more, but the trial keeps its latest metric: a job that ends before the
        cancel reaches it is a finished trial, with its last evaluation's metric."""
        seen = max(self._seen.get(job.job_id, 0), trial.metric_step)
        while True:
            points = self.jobs.store.metrics_after(job.job_id, seen, POINTS_PER_READ)
            for point in points:
                value = _metric(point, sweep.spec.metric)
                if value is None:
                    continue
                if trial.stopped_early:
                    trial = dataclasses.replace(trial, metric=value, metric_step=point.step)
                else:
                    trial = self._report(sweep, search, trial, point.step, value)
            if points:
                seen = points[-1].step
            if len(points) < POINTS_PER_READ:
                break
        self._seen[job.job_id] = seen
        return trial

    def _report(
        self, sweep: SweepRecord, search: Search, trial: TrialRecord, step: int, value: float
    ) -> TrialRecord:
        evaluation = trial.evaluations + 1
        verdict = search.report(trial.number, evaluation, value, rungs=trial.rung)
        trial = dataclasses.replace(
            trial, evaluations=evaluation, metric=value, metric_step=step, rung=verdict.rung
        )
        metric = sweep.spec.metric
        message = f"trial {trial.number}: {metric} {value:.4g} at step {step}"
        self.store.put_trial(sweep.sweep_id, trial)
        self._event(sweep, EventKind.TRIAL_REPORTED, trial, message)
        if verdict.stop:
            trial = dataclasses.replace(
                trial, stopped_early=True, reason=_stop_reason(sweep, verdict, value)
            )
            self.store.put_trial(sweep.sweep_id, trial)  # the decision, before the cancel
            self._event(
                sweep, EventKind.TRIAL_STOPPED, trial, f"trial {trial.number} {trial.reason}"
            )
            self._cancel(sweep, trial.job_id, trial.reason)
        return trial

    def _submit(self, sweep: SweepRecord, search: Search, trial: TrialRecord) -> TrialRecord:
        """Submit the trial's job (again after a restart: the same submission id answers
        with the same job). A spec the parameters make invalid fails the trial; a full
        queue leaves it waiting for the next pass."""
        values = {parse(path): value for path, value in trial.params.items()}
        try:
            spec = sweep.spec.trial_spec(values, name=f"{sweep.spec.name}/trial-{trial.number}")
            job = self.jobs.submit(
                spec,
                principal=_principal(sweep),
                submission_id=f"{sweep.sweep_id}.trial-{trial.number}",
                trial=TrialTag(sweep.sweep_id, trial.number),
            )
        except ResourceExhaustedError as error:
            log.info("sweep %s: trial %d waits: %s", sweep.sweep_id, trial.number, error)
            return trial
        except (InvalidSpecError, NotFoundError, AlreadyExistsError) as error:
            self._conclude(sweep, search, trial, JobState.FAILED, f"its job was refused: {error}")
            return dataclasses.replace(trial, concluded=True)
        trial = dataclasses.replace(trial, job_id=job.job_id, state=job.state)
        self.store.put_trial(sweep.sweep_id, trial)
        shown = ", ".join(f"{path}={value!r}" for path, value in trial.params.items())
        self._event(sweep, EventKind.TRIAL_STARTED, trial, f"trial {trial.number}: {shown}")
        return trial

    def _conclude(
        self, sweep: SweepRecord, search: Search, trial: TrialRecord, state: JobState, reason: str
    ) -> None:
        """The trial's job ended (or never ran): tell the search, record, announce."""
        if state is JobState.SUCCEEDED and trial.metric is not None:
            search.tell(trial.number, value=trial.metric, state=TrialState.COMPLETE)
            outcome = "completed"
            if trial.stopped_early:  # its job ended before the cancel reached it
                reason = f"{trial.reason} (its job had finished already)"
        elif trial.stopped_early:
            search.tell(trial.number, value=None, state=TrialState.PRUNED)
            outcome, reason = "stopped", trial.reason
        else:
            search.tell(trial.number, value=None, state=TrialState.FAIL)
            outcome = "cancelled" if state is JobState.CANCELLED else "failed"
            if state is JobState.SUCCEEDED:
                state, reason = JobState.FAILED, "its job made no evaluation of the metric"
        trial = dataclasses.replace(trial, state=state, reason=reason, concluded=True)
        self.store.put_trial(sweep.sweep_id, trial)
        shown = f"{sweep.spec.metric} {trial.metric:.4g}" if trial.metric is not None else ""
        message = f"trial {trial.number} {state.value.lower()}" + (
            f": {reason}" if reason else f" ({shown})" if shown else ""
        )
        self._event(sweep, EventKind.TRIAL_FINISHED, trial, message)
        self._seen.pop(trial.job_id, None)
        self.on_trial_end(outcome)

    def _cancel(self, sweep: SweepRecord, job_id: str, reason: str) -> None:
        """Cancel the job in the background (it returns once the job has ended)."""
        with self._lock:
            if job_id in self._cancelling:
                return
            self._cancelling.add(job_id)

        def cancel() -> None:
            try:
                self.jobs.cancel(job_id, principal=_principal(sweep), reason=reason)
            except Exception:  # the next pass tries again
                log.exception("sweep %s: cancelling %s failed", sweep.sweep_id, job_id)
            finally:
                with self._lock:
                    self._cancelling.discard(job_id)

        self.cancels.submit(cancel)

    # --- the sweep ----------------------------------------------------------------------

    def _start_trials(self, sweep: SweepRecord, search: Search) -> None:
        active = sum(1 for t in sweep.trials if t.is_active)
        number = len(sweep.trials)
        while active < sweep.spec.parallel_trials and number < sweep.spec.max_trials:
            asked = search.ask(number)
            params = {path: parse(path).coerce(value) for path, value in asked.items()}
            trial = TrialRecord(number=number, params=params)
            self.store.put_trial(sweep.sweep_id, trial)  # the decision, before the job
            trial = self._submit(sweep, search, trial)
            if not trial.job_id and not trial.concluded:
                return  # the queue is full: the next pass tries again
            active += 0 if trial.concluded else 1
            number += 1

    def _maybe_end(self, sweep: SweepRecord) -> SweepRecord:
        if sweep.is_finished or any(t.is_active for t in sweep.trials):
            return sweep
        if sweep.cancel_requested:
            state, reason = JobState.CANCELLED, CANCELLED_SWEEP
        elif len(sweep.trials) < sweep.spec.max_trials:
            return sweep
        elif (best := sweep.best) is not None:
            state = JobState.SUCCEEDED
            reason = f"best: trial {best.number}, {sweep.spec.metric} {best.metric:.4g}"
        else:
            state, reason = JobState.FAILED, "no trial finished with an evaluation of the metric"
        self.store.finish(sweep.sweep_id, state, reason, time.time())
        return self.store.get(sweep.sweep_id)

    def _event(self, sweep: SweepRecord, kind: EventKind, trial: TrialRecord, message: str) -> None:
        self.store.add_event(sweep.sweep_id, kind, time.time(), trial, message)


def _metric(point: MetricPoint, metric: str) -> float | None:
    """The metric at an evaluation (a point with a validation pass), else None."""
    if point.validation_loss is None:
        return None
    if metric == "loss":
        return point.loss
    return getattr(point, metric)


def _stop_reason(sweep: SweepRecord, verdict: Verdict, value: float) -> str:
    metric, sign = sweep.spec.metric, "<" if sweep.spec.maximize else ">"
    bar = f" {sign} {verdict.bar:.4g}" if verdict.bar is not None else ""
    return f"stopped by ASHA at rung {verdict.rung}: {metric} {value:.4g}{bar}"


def _principal(sweep: SweepRecord) -> Principal:
    return Principal(sweep.owner, is_admin=sweep.owner_is_admin)
