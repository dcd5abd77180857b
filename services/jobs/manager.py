"""JobManager: the jobs service the API calls: submit, look up, list, cancel, follow, weights."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from services.errors import FailedPreconditionError, InvalidSpecError
from services.jobs.monitor import RunnerMonitor
from services.jobs.records import JobRecord, JobState, MetricPoint
from services.jobs.spec import JobSpec
from services.jobs.store import JobStore

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
FOLLOW_WAIT_S = 1.0


@dataclass(frozen=True, kw_only=True)
class JobsConfig:
    """Where jobs keep their state, and what each worker asks Ray for."""

    storage: Path = Path(".bptrain")
    worker_cpus: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.worker_cpus <= 1024:
            raise ValueError(f"worker_cpus must be in (0, 1024], got {self.worker_cpus}")

    @property
    def database(self) -> Path:
        return self.storage / "bptrain.db"

    def weights_path(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id / "weights.npz"


class JobManager:
    """Owns the store and one RunnerMonitor per live job. Needs Ray to be initialised."""

    def __init__(self, config: JobsConfig | None = None) -> None:
        self.config = config or JobsConfig()
        self.store = JobStore(self.config.database)
        self._monitors: dict[str, RunnerMonitor] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._version = 0
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        # Jobs a previous server left unfinished have no runner any more: say so.
        for job_id in self.store.ids_in_states((JobState.QUEUED, JobState.RUNNING)):
            self.store.update(
                job_id,
                state=JobState.FAILED,
                reason="the API server stopped while the job was unfinished",
                finished_at=time.time(),
            )

    def submit(self, spec: JobSpec) -> JobRecord:
        record = JobRecord(job_id=f"job-{uuid.uuid4().hex[:12]}", spec=spec, created_at=time.time())
        self.store.create(record)
        monitor = RunnerMonitor(
            job_id=record.job_id,
            spec=spec,
            store=self.store,
            weights_path=self.config.weights_path(record.job_id),
            worker_cpus=self.config.worker_cpus,
            on_change=self._notify,
        )
        with self._lock:
            self._monitors = {i: m for i, m in self._monitors.items() if m.is_alive}
            self._monitors[record.job_id] = monitor
        monitor.start()
        log.info("job %s submitted (%s)", record.job_id, spec.name)
        return record

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def list(
        self, *, state: JobState | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[JobRecord], str]:
        if page_size < 0:
            raise InvalidSpecError("page_size", f"must be >= 0, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        return self.store.list(state=state, limit=size, page_token=page_token)

    def cancel(self, job_id: str) -> JobRecord:
        """Ends a queued or running job; returns it once it is recorded as ended."""
        record = self.store.get(job_id)
        if record.is_finished:
            return record
        with self._lock:
            monitor = self._monitors.get(job_id)
        if monitor is not None:
            monitor.cancel()
        return self.store.get(job_id)

    def follow(
        self, job_id: str, after_step: int, is_active: Callable[[], bool]
    ) -> Iterator[MetricPoint | JobRecord]:
        """Stored points with step > after_step, then live ones; ends with the finished job.

        Stops early (without the final record) when `is_active()` turns false.
        """
        if after_step < 0:
            raise InvalidSpecError("after_step", f"must be >= 0, got {after_step}")
        self.store.get(job_id)  # NotFoundError before the first message
        cursor = after_step
        while is_active():
            with self._changed:
                seen = self._version
            record = self.store.get(job_id)  # state first: its points are stored before it ends
            points = self.store.metrics_after(job_id, cursor)
            for point in points:
                yield point
                cursor = point.step
            if points:
                continue
            if record.is_finished:
                yield record
                return
            self._wait_for_change(seen)

    def weights_path(self, job_id: str) -> Path:
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

    def shutdown(self) -> None:
        """Stops following jobs; they are marked FAILED when the next server starts."""
        with self._lock:
            monitors = list(self._monitors.values())
        for monitor in monitors:
            monitor.stop()
        self.store.close()

    def _wait_for_change(self, seen: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen, timeout=FOLLOW_WAIT_S)

    def _notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()
