"""JobManager: the jobs service the API calls: submit, look up, list, cancel, weights, datasets.

Every call a client reaches names the calling principal (services/tenancy.py): a user
sees and controls only its own jobs and datasets, and another's id answers exactly as
an unknown one; an admin sees and controls everything.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.datasets.uploads import DatasetInfo, DatasetRegistry
from services.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidSpecError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.jobs.checkpoints import CheckpointStore
from services.jobs.export import exported
from services.jobs.monitor import RunnerMonitor
from services.jobs.records import JobRecord, JobState
from services.jobs.runner_pool import RunnerPool
from services.jobs.spec import JobSpec
from services.jobs.store import JobStore, unknown_job
from services.jobs.weights import write_weights
from services.metrics import ServiceMetrics
from services.tenancy import Principal, Quotas

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


SUBMISSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True, kw_only=True)
class JobsConfig:
    """Where jobs keep their state, what each worker asks Ray for, and the queue's limits.

    At most `max_running_jobs` jobs run at once; later ones wait QUEUED in FIFO order,
    and a submission beyond `max_queued_jobs` waiting jobs is refused. `quotas` bound
    each principal within those limits (services/tenancy.py).
    """

    storage: Path = Path(".bptrain")
    worker_cpus: float = 1.0
    max_running_jobs: int = 2
    max_queued_jobs: int = 100
    max_dataset_bytes: int = 1 << 30
    standby_runners: int = 1  # runners kept booted for the next job (services/jobs/runner_pool.py)
    quotas: Quotas = field(default_factory=Quotas)

    def __post_init__(self) -> None:
        if not 0 < self.worker_cpus <= 1024:
            raise ValueError(f"worker_cpus must be in (0, 1024], got {self.worker_cpus}")
        if self.max_running_jobs < 1:
            raise ValueError(f"max_running_jobs must be >= 1, got {self.max_running_jobs}")
        if self.max_queued_jobs < 0:
            raise ValueError(f"max_queued_jobs must be >= 0, got {self.max_queued_jobs}")
        if self.max_dataset_bytes < 1:
            raise ValueError(f"max_dataset_bytes must be >= 1, got {self.max_dataset_bytes}")
        if not 0 <= self.standby_runners <= 8:
            raise ValueError(f"standby_runners must be in [0, 8], got {self.standby_runners}")

    @property
    def database(self) -> Path:
        return self.storage / "bptrain.db"

    @property
    def datasets_dir(self) -> Path:
        return self.storage / "datasets"

    def weights_path(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id / "weights.npz"

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id / "checkpoints"


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
        self.runners = RunnerPool(self.config.standby_runners)
        self._monitors: dict[str, RunnerMonitor] = {}  # started and not yet ended
        self._waiting: list[str] = []  # QUEUED job ids not yet started, oldest first
        self._owners: dict[str, str] = {}  # job id -> owner, of waiting and started jobs
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.ray_address = ray_address
        self._is_ray_ready = ray_address is None
        self._owners = self.store.owners_in_states((JobState.QUEUED,))
        self._waiting = list(self._owners)
        if self._is_ray_ready:
            self._recover()

    def ray_ready(self) -> None:
        """Ray answers now: start the jobs that waited for it."""
        log.info("Ray at %s is reachable", self.ray_address)
        self._is_ray_ready = True
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
                self._owners[record.job_id] = record.owner
                if record.state is JobState.RUNNING:
                    self._start_monitor(record.job_id)
            self._start_waiting()

    def dataset_lookup(self, principal: Principal) -> Callable[[str], DatasetInfo]:
        """Dataset id -> the dataset as `principal` sees it (NotFoundError, the same as for
        an unknown id, where it may not): what a spec's uploaded dataset resolves by."""
        return functools.partial(self.datasets.get, principal=principal)

    def submit(self, spec: JobSpec, *, principal: Principal, submission_id: str = "") -> JobRecord:
        """Queue a job owned by `principal`; the same `submission_id` (the principal's
        own: each principal has its own ids) and spec again return the first job.

        A dataset the principal may not see is NotFoundError, as an unknown one. Beyond
        `max_queued_jobs` waiting jobs, or the principal's queued_jobs quota, the job is
        refused with ResourceExhaustedError naming the limit.
        """
        if submission_id and not SUBMISSION_ID.fullmatch(submission_id):
            raise InvalidSpecError("submission_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -")
        if spec.dataset.dataset_id:
            self.datasets.get(spec.dataset.dataset_id, principal=principal)
        with self._lock:
            if submission_id:
                earlier = self.store.find_submission(submission_id, owner=principal.name)
                if earlier is not None:
                    if earlier.spec != spec:
                        raise AlreadyExistsError(
                            f"submission_id {submission_id!r} was used for job "
                            f"{earlier.job_id} with a different spec"
                        )
                    return self._with_queue_place(earlier)
            if len(self._waiting) >= self.config.max_queued_jobs:
                raise ResourceExhaustedError(
                    f"the queue is full: {len(self._waiting)} jobs wait "
                    f"(limit {self.config.max_queued_jobs}); try again later"
                )
            queued_quota = self.config.quotas.queued_jobs
            queued = self._waiting_of(principal.name)
            if queued_quota is not None and queued >= queued_quota:
                raise ResourceExhaustedError(
                    f"principal {principal.name} has {queued} queued jobs, its queued_jobs "
                    "quota; try again once one has started or ended"
                )
            record = JobRecord(
                job_id=f"job-{uuid.uuid4().hex[:12]}",
                owner=principal.name,
                spec=spec,
                created_at=time.time(),
                submission_id=submission_id,
            )
            self.store.create(record)
            self.metrics.job_submitted()
            self._waiting.append(record.job_id)
            self._owners[record.job_id] = record.owner
            self._start_waiting()
            log.info("job %s submitted (%s)", record.job_id, spec.name)
            return self._with_queue_place(record)

    def _start_waiting(self) -> None:
        """Start waiting jobs, oldest first, while running slots are free, passing over
        those whose owner runs its running_jobs quota already (lock held)."""
        for job_id in list(self._waiting):
            if not self._is_ray_ready or len(self._monitors) >= self.config.max_running_jobs:
                return
            if not self._is_at_running_quota(self._owners[job_id]):
                self._waiting.remove(job_id)
                self._start_monitor(job_id)

    def _running_of(self, owner: str) -> int:
        """How many of `owner`'s jobs hold a running slot (a snapshot: no lock needed)."""
        return sum(1 for job_id in tuple(self._monitors) if self._owners.get(job_id) == owner)

    def _waiting_of(self, owner: str) -> int:
        return sum(1 for job_id in tuple(self._waiting) if self._owners.get(job_id) == owner)

    def _is_at_running_quota(self, owner: str) -> bool:
        quota = self.config.quotas.running_jobs
        return quota is not None and self._running_of(owner) >= quota

    def _start_monitor(self, job_id: str) -> None:
        monitor = RunnerMonitor(
            job_id=job_id,
            spec=self.store.get(job_id).spec,
            store=self.store,
            weights_path=self.config.weights_path(job_id),
            checkpoint_dir=self.config.checkpoint_dir(job_id),
            worker_cpus=self.config.worker_cpus,
            datasets_dir=self.config.datasets_dir,
            on_change=self._notify,
            on_end=self._job_ended,
            metrics=self.metrics,
            pool=self.runners,
        )
        self._monitors[job_id] = monitor
        monitor.start()

    def _job_ended(self, job_id: str) -> None:
        with self._lock:
            self._monitors.pop(job_id, None)
            self._owners.pop(job_id, None)
            self._start_waiting()
        self._notify()

    def get(self, job_id: str, *, principal: Principal) -> JobRecord:
        return self._with_queue_place(self._visible_job(job_id, principal))

    def _visible_job(self, job_id: str, principal: Principal) -> JobRecord:
        """The stored job, or for another's job the same NotFoundError as an unknown id."""
        record = self.store.get(job_id)
        if not principal.can_see(record.owner):
            raise unknown_job(job_id)
        return record

    def _with_queue_place(self, record: JobRecord) -> JobRecord:
        if record.state is not JobState.QUEUED:
            return record
        waiting = list(self._waiting)
        if not self._is_ray_ready:
            return dataclasses.replace(
                record,
                queue_position=waiting.index(record.job_id) + 1 if record.job_id in waiting else 0,
                queue_reason=f"waiting for Ray at {self.ray_address} to answer",
            )
        if record.job_id in waiting:
            running = self.config.max_running_jobs
            if self._is_at_running_quota(record.owner):
                return dataclasses.replace(
                    record,
                    queue_position=waiting.index(record.job_id) + 1,
                    queue_reason=f"principal {record.owner} has "
                    f"{self._running_of(record.owner)} running jobs, its running_jobs quota",
                )
            return dataclasses.replace(
                record,
                queue_position=waiting.index(record.job_id) + 1,
                queue_reason=f"waiting for a free slot: {running} of {running} jobs are running",
            )
        return dataclasses.replace(
            record,
            queue_reason=f"starting: placing the parameter server and "
            f"{record.spec.workers} workers on Ray",
        )

    def list(
        self,
        *,
        principal: Principal,
        state: JobState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[JobRecord], str]:
        """The principal's jobs, newest first (an admin's list holds everyone's)."""
        if page_size < 0:
            raise InvalidSpecError("page_size", f"must be >= 0, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        owner = None if principal.is_admin else principal.name
        records, next_token = self.store.list(
            owner=owner, state=state, limit=size, page_token=page_token
        )
        return [self._with_queue_place(r) for r in records], next_token

    def cancel(self, job_id: str, *, principal: Principal) -> JobRecord:
        """Ends a queued or running job; returns it once it is recorded as ended."""
        record = self._visible_job(job_id, principal)
        if record.is_finished:
            return record
        with self._lock:
            monitor = self._monitors.get(job_id)
            if job_id in self._waiting:
                self._waiting.remove(job_id)
                self._owners.pop(job_id, None)
                self.store.update(
                    job_id,
                    state=JobState.CANCELLED,
                    reason="cancelled by request",
                    finished_at=time.time(),
                )
                self.metrics.job_finished(job_id, JobState.CANCELLED)
            if monitor is None and record.state is JobState.RUNNING:
                self._require_ray()
        if monitor is not None:
            monitor.cancel()
        self._notify()
        return self.store.get(job_id)

    def _require_ray(self) -> None:
        if not self._is_ray_ready:
            raise UnavailableError(f"Ray at {self.ray_address} does not answer; try again later")

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
        if latest and record.state in (JobState.FAILED, JobState.CANCELLED):
            checkpoint = CheckpointStore(self.config.checkpoint_dir(job_id)).latest()
            if checkpoint is None:
                raise FailedPreconditionError(f"job {job_id} ended before its first checkpoint")
            path = self.config.weights_path(job_id).with_name(f"checkpoint-{checkpoint.step}.npz")
            if not path.exists():
                write_weights(path, record.spec, checkpoint.theta)
            return exported(path, fmt)
        if latest and record.state is JobState.RUNNING:
            with self._lock:
                monitor = self._monitors.get(job_id)
            if monitor is None:
                self._require_ray()
                raise FailedPreconditionError(f"job {job_id} is no longer running")
            step, theta = monitor.snapshot()
            path = self.config.weights_path(job_id).with_name(f"step-{step}.npz")
            if not path.exists():
                write_weights(path, record.spec, theta)
            return exported(path, fmt)
        return exported(self.weights_path(job_id), fmt)

    def weights_path(self, job_id: str) -> Path:
        """The SUCCEEDED job's weights file, whoever owns it (weights_file checks first)."""
        record = self.store.get(job_id)
        if record.state is not JobState.SUCCEEDED or not record.weights_path:
            raise FailedPreconditionError(
                f"job {job_id} has no weights: it is {record.state.value}, "
                "weights exist once it SUCCEEDED"
            )
        path = Path(record.weights_path)
        if not path.is_file():
            raise FailedPreconditionError(f"the weights file of job {job_id} is missing")
        return path

    def delete_dataset(self, dataset_id: str, *, principal: Principal) -> DatasetInfo:
        """Delete the principal's uploaded dataset (an admin: everyone's entries for it)
        unless a queued or running job needs it: one of the principal's own, or, where
        no other owner's entry would keep the file, anyone's."""
        self.datasets.get(dataset_id, principal=principal)  # NotFoundError first
        with self._lock:
            others = set() if principal.is_admin else self.datasets.owners(dataset_id)
            others.discard(principal.name)
            for job_id in self.store.ids_in_states((JobState.QUEUED, JobState.RUNNING)):
                record = self.store.get(job_id)
                if record.spec.dataset.dataset_id != dataset_id:
                    continue
                if record.owner != principal.name and others:
                    continue  # its owner's (or another) entry keeps the file
                user = (
                    f"job {job_id}"
                    if principal.can_see(record.owner)
                    else "another principal's job"
                )
                raise FailedPreconditionError(
                    f"dataset {dataset_id} is in use by {user}; delete it once that job has ended"
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
