"""RunnerMonitor: the API process's side of one running job.

It starts the job's runner actor, copies the runner's metric points into the store as they
come, records state changes, writes the weights when the job succeeds and removes the
runner when the job ends. The one writer of a job's state after submission; cancels too.

θ (final, or latest on request) comes as ObjectRefs of the parameter server's (or colocated
workers') export from the runner: this process fetches the bytes in one `ray.get`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError

from services.errors import FailedPreconditionError
from services.jobs.records import JobState
from services.jobs.runner import RunnerUpdate
from services.jobs.runner_launch import (
    JobSetup,
    runner_actor_name,
    runner_options,
    running_runner,
    start_runner,
)
from services.jobs.runner_options import RunnerOptions
from services.jobs.runner_pool import RunnerPool, Standby
from services.jobs.spec import JobSpec
from services.jobs.store import JobStore
from services.jobs.weights import join_exported, write_weights
from services.metrics import ServiceMetrics

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5
RPC_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0  # a poll returns in POLL_TIMEOUT_S, unless the host is very busy
CANCEL_TIMEOUT_S = 5.0
CANCEL_REASON = "cancelled by request"
MAX_RUNNER_REPLACEMENTS = 3  # in a row, with no step recorded between them


@dataclass(frozen=True)
class MonitorCallbacks:
    """What a monitor tells its owner, from the monitor's thread (each returns at once).

    - `on_change()`: after the store changed (points stored, a state changed).
    - `on_end(job_id)`: once the monitor is done with the job (not when it was stopped).
    """

    on_change: Callable[[], None]
    on_end: Callable[[str], None] = lambda job_id: None


class RunnerMonitor:
    """Follows one job's runner from creation to a terminal state, in its own thread."""

    def __init__(
        self,
        *,
        job_id: str,
        spec: JobSpec,
        store: JobStore,
        setup: JobSetup,
        callbacks: MonitorCallbacks,
        metrics: ServiceMetrics | None = None,
        pool: RunnerPool | None = None,
    ) -> None:
        """`pool`: booted runners to take one from instead of starting one."""
        self.job_id = job_id
        self.spec = spec
        self.store = store
        self.setup = setup
        self.callbacks = callbacks
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.pool = pool
        self._lock = threading.Lock()
        self._runner: ray.actor.ActorHandle | None = None
        self._standby: Standby | None = None  # the pool's runner that `_runner` is
        self._has_ended = False  # the runner reported its job's terminal state
        self._is_finishing = False  # ... and its end is being recorded
        self._is_cancel_requested = False
        self._cancel_reason = CANCEL_REASON
        self._is_stopping = False
        self._thread = threading.Thread(target=self._run, name=f"monitor-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def cancel(self, reason: str = CANCEL_REASON) -> None:
        """Stops the job; returns once it is recorded ended (CANCELLED: `reason`, or its end)."""
        with self._lock:
            self._is_cancel_requested = True
            self._cancel_reason = reason
            runner = None if self._is_finishing else self._runner  # its weights are due
        if runner is not None:
            try:
                ray.get(runner.cancel.remote(self.job_id), timeout=CANCEL_TIMEOUT_S)
            except (GetTimeoutError, RayActorError):
                with self._lock:
                    is_ours = self._runner is runner  # not yet given back to the pool
                if is_ours:
                    ray.kill(runner, no_restart=True)
        self._thread.join(timeout=CANCEL_TIMEOUT_S + RPC_TIMEOUT_S)

    def latest_weights(self) -> tuple[int, np.ndarray]:
        """(step, θ (P,)) of the running job as it is now."""
        runner = self._runner
        if runner is None:
            raise FailedPreconditionError(f"job {self.job_id} has not started yet")
        gone = FailedPreconditionError(f"job {self.job_id} is no longer running")
        not_yet = FailedPreconditionError(f"job {self.job_id} has not finished a step yet")
        try:
            refs = ray.get(runner.latest_weights.remote(self.job_id), timeout=RPC_TIMEOUT_S)
            step, theta = join_exported(ray.get(refs, timeout=RPC_TIMEOUT_S))
        except (RayActorError, GetTimeoutError, ObjectLostError):  # an actor gone meanwhile
            raise gone from None
        except RayTaskError as error:
            if isinstance(error.cause, LookupError):  # its runner took another job since
                raise gone from None
            raise not_yet from None  # no cohort yet, or no step done in time
        if step == 0:
            raise not_yet
        return step, theta

    def request_stop(self) -> None:
        """Asks the thread to stop following (it ends after its current poll)."""
        self._is_stopping = True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops following (the server is shutting down); the job itself is not touched.
        Waits for the thread's Ray call to return, so Ray can then shut down under it."""
        self.request_stop()
        self._thread.join(timeout=timeout_s)

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self._lock:
                if self._is_cancel_requested:
                    self._record_end(JobState.CANCELLED, self._cancel_reason)
                    return
                self._runner = running_runner(self.store.get(self.job_id)) or self._new_runner()
            # Also for a runner found running: an API process killed while its runner was
            # being created may never have delivered that call (run is once per runner).
            self._runner.run.remote()
            losses = 0  # runners lost in a row without a step recorded in between
            while True:
                # Points already stored (by an earlier runner or server) are not fetched again.
                before = self.store.get(self.job_id).step
                if not self._follow(self._runner, after_step=before):
                    return
                losses = 1 if self.store.get(self.job_id).step > before else losses + 1
                self._release_runner()
                if losses > MAX_RUNNER_REPLACEMENTS:
                    break
                log.warning("job %s lost its runner; starting a new one", self.job_id)
                with self._lock:
                    if self._is_cancel_requested:
                        self._record_end(JobState.CANCELLED, self._cancel_reason)
                        return
                    self._runner = self._new_runner()
                self._runner.run.remote()
            self._record_end(
                JobState.FAILED,
                f"the job's runner was lost {losses} times in a row without a step between; "
                "giving up",
            )
        except Exception:
            log.exception("monitor of job %s failed", self.job_id)
            self._record_end(
                JobState.FAILED, "internal error while running the job (see the server log)"
            )
        finally:
            if self._runner is not None and not self._is_stopping:
                self._release_runner()
            if not self._is_stopping:
                self.callbacks.on_end(self.job_id)

    def _release_runner(self) -> None:
        """The runner is done (its job ended, or it was lost): a pool's runner goes back
        to the pool (recycled if its job ended), any other is killed. This monitor does
        not touch it again."""
        with self._lock:
            runner, self._runner = self._runner, None
            standby, self._standby = self._standby, None
        if standby is not None:
            self.pool.give_back(standby, is_reusable=self._has_ended)
        elif runner is not None:
            ray.kill(runner, no_restart=True)

    def _new_runner(self) -> ray.actor.ActorHandle:
        """A booted standby from the pool given this job, else a runner started for it.
        Detached: the job goes on when this API process stops; the next one reattaches
        by the name stored with the job."""
        standby = self.pool.take() if self.pool is not None else None
        if standby is not None:
            try:
                options = self._runner_options()
                ray.get(
                    standby.actor.assign.remote(self.job_id, self.spec, options),
                    timeout=RPC_TIMEOUT_S,
                )
                self.store.update(self.job_id, runner=standby.name)
                self._standby = standby
                return standby.actor
            except (RayActorError, GetTimeoutError) as error:  # it died before its job
                log.info("job %s: standby runner %s lost (%s)", self.job_id, standby.name, error)
                self.pool.give_back(standby, is_reusable=False)
        self.store.update(self.job_id, runner="")
        return start_runner(self.runner_name, self.job_id, self.spec, self._runner_options())

    def _runner_options(self) -> RunnerOptions:
        """The runner's options for this job, resuming after its stored step with the
        stored values of its `stop_when` metric."""
        stored = self.store.get(self.job_id).step
        rule = self.spec.stop_when
        history = self.store.metric_history(self.job_id, rule.metric, stored) if rule.is_set else []
        return runner_options(self.setup, resume_at_most=stored, stop_history=tuple(history))

    @property
    def runner_name(self) -> str:
        """The name of a runner started for this job (not a standby's)."""
        return f"{self.job_id}/runner"

    def _follow(self, runner: ray.actor.ActorHandle, after_step: int) -> bool:
        """Store the runner's points and states until the job ends (False) or the runner
        is lost (True: the caller starts a new one, which resumes from a checkpoint)."""
        is_running = False
        placement: tuple[dict, ...] = ()
        while not self._is_stopping:
            try:
                update: RunnerUpdate = ray.get(
                    runner.poll.remote(after_step, POLL_TIMEOUT_S), timeout=RPC_TIMEOUT_S
                )
            except (RayActorError, GetTimeoutError) as error:
                if self._is_cancel_requested:
                    self._record_end(JobState.CANCELLED, self._cancel_reason)
                    return False
                log.warning("job %s lost its runner: %s", self.job_id, error)
                return True
            # The workers first, then their steps: a reader never sees a step of workers
            # the job does not list (after a replacement, the old ones are gone).
            if not is_running and update.state is not JobState.QUEUED:
                self.store.update(
                    self.job_id,
                    state=JobState.RUNNING,
                    started_at=update.started_at or time.time(),
                    total_steps=update.total_steps,
                    placement=update.placement,
                )
                is_running, placement = True, update.placement
                if self.pool is not None:
                    self.pool.fill()  # its actors are up: boot one if none is idle or out
            elif update.placement != placement:  # a worker was replaced
                self.store.update(self.job_id, placement=update.placement)
                placement = update.placement
            if update.points:
                self.store.add_metrics(self.job_id, update.points)
                self.metrics.points_recorded(self.job_id, update.points)
                after_step = update.points[-1].step
            if update.points or update.state.is_terminal:
                self.callbacks.on_change()
            if update.state.is_terminal:
                with self._lock:  # a cancel from now on leaves the runner to finish
                    self._is_finishing = True
                self._finish(runner, update)
                return False
        return False

    def _finish(self, runner: ray.actor.ActorHandle, update: RunnerUpdate) -> None:
        """The runner reported the job's end: its weights are written, the runner goes
        (back to the pool, so that the next job finds it there), then the end is
        recorded."""
        if update.state is JobState.SUCCEEDED:
            refs = ray.get(runner.final_weights.remote(), timeout=RPC_TIMEOUT_S)
            _, theta = join_exported(ray.get(refs, timeout=RPC_TIMEOUT_S))
            write_weights(self.setup.weights_path, self.spec, theta)
            self.store.update(self.job_id, weights_path=str(self.setup.weights_path))
        self._has_ended = True
        self._release_runner()
        self._record_end(update.state, update.reason)

    def _record_end(self, state: JobState, reason: str) -> None:
        if state is JobState.CANCELLED and self._is_cancel_requested:
            reason = self._cancel_reason  # the runner only knows that it was cancelled
        self.store.update(self.job_id, state=state, reason=reason, finished_at=time.time())
        self.metrics.job_finished(self.job_id, state)
        self.callbacks.on_change()


__all__ = ["CANCEL_REASON", "JobSetup", "MonitorCallbacks", "RunnerMonitor", "runner_actor_name"]
