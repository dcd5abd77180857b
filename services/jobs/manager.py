"""JobManager: the jobs service the API calls: submit, look up, list, cancel, weights, datasets.

Every call a client reaches names the calling principal (services/tenancy.py): a user
sees and controls only its own jobs and datasets, and another's id answers exactly as
an unknown one; an admin sees and controls everything.

The manager keeps the store, the queue (services/jobs/queue.py) and one RunnerMonitor
per started job together under one lock; which weights file serves a job is
services/jobs/weights_locator.py's answer.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from services.datasets.uploads import DatasetInfo, DatasetRegistry
from services.errors import UnavailableError
from services.jobs.config import JobsConfig
from services.jobs.dataset_guard import refuse_if_in_use
from services.jobs.export import exported
from services.jobs.monitor import CANCEL_REASON, JobSetup, MonitorCallbacks, RunnerMonitor
from services.jobs.queue import JobQueue
from services.jobs.records import JobRecord, JobState, TrialTag
from services.jobs.run_status import DRAIN_PERIOD_S
from services.jobs.runner_pool import RunnerPool
from services.jobs.spec import JobSpec
from services.jobs.store import JobStore, page_limit, unknown_job
from services.jobs.submissions import check_submission_id, earlier_submission
from services.jobs.weights_locator import WeightsLocator
from services.metrics import ServiceMetrics
from services.tenancy import Principal

__all__ = ["JobManager", "JobsConfig"]  # JobsConfig lives in services/jobs/config.py

log = logging.getLogger(__name__)

TRIAL_DRAIN_PERIOD_S = 0.1


class JobManager:
    """Owns the store, the queue, and one RunnerMonitor per started job. Needs Ray."""

    def __init__(
        self,
        config: JobsConfig | None = None,
        *,
        metrics: ServiceMetrics | None = None,
        ray_address: str | None = None,
    ) -> None:
        """With `ray_address`, jobs wait until `ray_ready()` says the cluster answers;
        without it, Ray is already initialised (embedded, or connected by the caller)."""
        self.config = config or JobsConfig()
        self.store = JobStore(self.config.database)
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.metrics.track_job_states(self.store.count_by_state)
        self.datasets = DatasetRegistry(
            self.config.datasets_dir,
            self.config.database,
            max_bytes=self.config.max_dataset_bytes,
            quota_bytes=self.config.quotas.dataset_bytes,
        )
        self.runners = RunnerPool(
            self.config.standby_runners,
            keep_workers_s=self.config.keep_workers_s,
            others_running=lambda: len(self._monitors) > 1,  # the ending job's is still there
        )
        self._monitors: dict[str, RunnerMonitor] = {}  # started and not yet ended
        self._queue = JobQueue(self.config, self.store.owners_in_states((JobState.QUEUED,)))
        self._weights = WeightsLocator(self.config, self.store, running=self._running_monitor)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.ray_address = ray_address
        self._is_ray_ready = ray_address is None
        if self._is_ray_ready:
            self._recover()
        else:
            self._queue.pause(f"waiting for Ray at {ray_address} to answer")

    def ray_ready(self) -> None:
        """Ray answers now: start the jobs that waited for it."""
        log.info("Ray at %s is reachable", self.ray_address)
        self._is_ray_ready = True
        self._queue.resume()
        self._recover()

    def _recover(self) -> None:
        """Jobs a previous server left unfinished go on. A running job's monitor reattaches
        to its runner if that outlived the server, else starts a new one, which resumes
        from the job's last checkpoint; running jobs take their slots even beyond the
        limit (they hold their actors already). Queued jobs queue again, in order."""
        with self._lock:
            unfinished = self.store.ids_in_states((JobState.QUEUED, JobState.RUNNING))
            records = [self.store.get(job_id) for job_id in unfinished]
            self.runners.remove_strays({record.runner for record in records})
            self.runners.fill()
            for record in records:
                if record.state is JobState.RUNNING:
                    self._start_monitor(record.job_id)
            self._start_waiting()

    def dataset_lookup(self, principal: Principal) -> Callable[[str], DatasetInfo]:
        """Dataset id -> the dataset as `principal` sees it (NotFoundError, the same as for
        an unknown id, where it may not): what a spec's uploaded dataset resolves by."""
        return functools.partial(self.datasets.get, principal=principal)

    def submit(
        self,
        spec: JobSpec,
        *,
        principal: Principal,
        submission_id: str = "",
        trial: TrialTag | None = None,
    ) -> JobRecord:
        """Queue a job owned by `principal`; the same `submission_id` (the principal's
        own: each principal has its own ids) and spec again return the first job.
        `trial` tags a sweep's trial (services/sweeps).

        A dataset the principal may not see is NotFoundError, as an unknown one. Beyond
        `max_queued_jobs` waiting jobs, or the principal's queued_jobs quota, the job is
        refused with ResourceExhaustedError naming the limit.
        """
        check_submission_id(submission_id)
        if spec.dataset.dataset_id:
            self.datasets.get(spec.dataset.dataset_id, principal=principal)
        with self._lock:
            earlier = earlier_submission(self.store, submission_id, spec, owner=principal.name)
            if earlier is not None:
                return self._queue.place(earlier)
            self._queue.check_room(principal.name)
            record = JobRecord(
                job_id=f"job-{uuid.uuid4().hex[:12]}",
                owner=principal.name,
                spec=spec,
                created_at=time.time(),
                submission_id=submission_id,
                sweep_id=trial.sweep_id if trial else "",
                trial_number=trial.number if trial else 0,
            )
            self.store.create(record)
            self.metrics.job_submitted()
            self._queue.add(record.job_id, record.owner)
            self._start_waiting()
            log.info("job %s submitted (%s)", record.job_id, spec.name)
            return self._queue.place(record)

    def _start_waiting(self) -> None:
        """Start waiting jobs, oldest first, while running slots are free (lock held)."""
        while (job_id := self._queue.next_to_start()) is not None:
            self._queue.remove_waiting(job_id)
            self._start_monitor(job_id)

    def _start_monitor(self, job_id: str) -> None:
        record = self.store.get(job_id)
        monitor = RunnerMonitor(
            job_id=job_id,
            spec=record.spec,
            store=self.store,
            setup=JobSetup(
                weights_path=self.config.weights_path(job_id),
                checkpoint_dir=self.config.checkpoint_dir(job_id),
                datasets_dir=self.config.datasets_dir,
                worker_cpus=self.config.worker_cpus,
                # a trial's points reach its sweep's scheduler sooner, its verdict the trial
                drain_period_s=TRIAL_DRAIN_PERIOD_S if record.sweep_id else DRAIN_PERIOD_S,
                max_lead_s=self.config.max_lead_s,
            ),
            callbacks=MonitorCallbacks(on_change=self._notify, on_end=self._job_ended),
            metrics=self.metrics,
            pool=self.runners,
        )
        self._monitors[job_id] = monitor
        self._queue.hold_slot(job_id, record.owner)
        monitor.start()

    def _job_ended(self, job_id: str) -> None:
        with self._lock:
            self._monitors.pop(job_id, None)
            self._queue.release(job_id)
            self._start_waiting()
        self._notify()

    def get(self, job_id: str, *, principal: Principal) -> JobRecord:
        return self._queue.place(self._visible_job(job_id, principal))

    def _visible_job(self, job_id: str, principal: Principal) -> JobRecord:
        """The stored job, or for another's job the same NotFoundError as an unknown id."""
        record = self.store.get(job_id)
        if not principal.can_see(record.owner):
            raise unknown_job(job_id)
        return record

    def list(
        self,
        *,
        principal: Principal,
        state: JobState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[JobRecord], str]:
        """The principal's jobs, newest first (an admin's list holds everyone's)."""
        size = page_limit(page_size)
        owner = None if principal.is_admin else principal.name
        records, next_token = self.store.list(
            owner=owner, state=state, limit=size, page_token=page_token
        )
        return [self._queue.place(r) for r in records], next_token

    def cancel(
        self, job_id: str, *, principal: Principal, reason: str = CANCEL_REASON
    ) -> JobRecord:
        """Ends a queued or running job; returns it once it is recorded as ended
        (CANCELLED with `reason`, unless it ended otherwise first)."""
        record = self._visible_job(job_id, principal)
        if record.is_finished:
            return record
        with self._lock:
            monitor = self._monitors.get(job_id)
            if self._queue.withdraw(job_id):
                self.store.update(
                    job_id,
                    state=JobState.CANCELLED,
                    reason=reason,
                    finished_at=time.time(),
                )
                self.metrics.job_finished(job_id, JobState.CANCELLED)
            if monitor is None and record.state is JobState.RUNNING:
                self._require_ray()
        if monitor is not None:
            monitor.cancel(reason)
        self._notify()
        return self.store.get(job_id)

    def _require_ray(self) -> None:
        if not self._is_ray_ready:
            raise UnavailableError(f"Ray at {self.ray_address} does not answer; try again later")

    def _running_monitor(self, job_id: str) -> RunnerMonitor | None:
        """The monitor of a job this server follows; None for one it no longer follows,
        UnavailableError while it cannot tell (Ray does not answer yet)."""
        with self._lock:
            monitor = self._monitors.get(job_id)
        if monitor is None:
            self._require_ray()
        return monitor

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` is called after every change of the store that a follower may
        want (points stored, a state changed), from whichever thread made it; it must
        return at once (the API's followers hand it to their event loop)."""
        self._listeners.append(listener)

    def weights_file(
        self, job_id: str, fmt: str = "npz", *, principal: Principal, latest: bool = False
    ) -> Path:
        """The job's weights as `fmt` (npz, safetensors or onnx); see services/jobs/export.py.

        With `latest`, a RUNNING job answers with θ as of its latest step, and a job that
        ended without weights (FAILED, CANCELLED) with its last checkpoint.
        """
        record = self._visible_job(job_id, principal)
        return exported(self._weights.npz(record, latest=latest), fmt)

    def weights_path(self, job_id: str) -> Path:
        """The SUCCEEDED job's weights file, whoever owns it (weights_file checks first)."""
        return self._weights.succeeded(job_id)

    def delete_dataset(self, dataset_id: str, *, principal: Principal) -> DatasetInfo:
        """Delete the principal's uploaded dataset (an admin: everyone's entries for it)
        unless a queued or running job needs it (services/jobs/dataset_guard.py)."""
        self.datasets.get(dataset_id, principal=principal)  # NotFoundError first
        with self._lock:
            refuse_if_in_use(
                dataset_id, principal=principal, store=self.store, datasets=self.datasets
            )
            return self.datasets.delete(dataset_id, principal=principal)

    def shutdown(self) -> None:
        """Stops following jobs; they are marked FAILED when the next server starts."""
        with self._lock:
            monitors = list(self._monitors.values())
        for monitor in monitors:
            monitor.request_stop()  # all at once, then wait for each
        for monitor in monitors:
            monitor.stop()
        self.runners.close()
        self.store.close()
        self.datasets.close()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
