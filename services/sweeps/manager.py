"""SweepManager: the sweeps service the API calls: submit, look up, list, cancel, events.

Sweeps belong to the principal that submitted them, as jobs do (another's id answers
as an unknown one; an admin sees everything); their trials are that principal's jobs.
One thread drives every running sweep (services/sweeps/driver.py), woken by any change
of the job store and at least once a second; a restarted server's manager picks up
the running sweeps where the last one left them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.errors import AlreadyExistsError
from services.jobs.manager import JobManager
from services.jobs.records import JobState
from services.jobs.store import page_limit
from services.jobs.submissions import check_submission_id
from services.metrics.sweeps import SweepMetrics
from services.sweeps.driver import SweepDriver
from services.sweeps.records import SweepEvent, SweepRecord
from services.sweeps.search import Search, open_storage
from services.sweeps.spec import SweepSpec
from services.sweeps.store import SweepStore, unknown_sweep
from services.tenancy import Principal

log = logging.getLogger(__name__)

TICK_S = 1.0  # the longest a running sweep waits for its next pass
MIN_PASS_INTERVAL_S = 0.05  # passes at most this often, however often the store changes
CANCEL_WAIT_S = 30.0


class SweepManager:
    """Owns the sweep store, Optuna's storage and the driving thread."""

    def __init__(
        self,
        jobs: JobManager,
        *,
        optuna_path: Path | None = None,
        metrics: SweepMetrics | None = None,
    ) -> None:
        database = jobs.config.database
        self.jobs = jobs
        self.store = SweepStore(database)
        self.storage = open_storage(optuna_path or database.with_name("sweeps-optuna.db"))
        self.metrics = metrics or SweepMetrics(jobs.metrics.registry)
        self.metrics.track_sweep_states(self.store.count_by_state)
        self._searches: dict[str, Search] = {}  # by sweep id, while it runs
        self._cancels = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sweep-cancel")
        self.driver = SweepDriver(
            jobs=jobs,
            store=self.store,
            search_for=self._search,
            cancels=self._cancels,
            on_trial_end=self.metrics.trial_ended,
        )
        self._lock = threading.Lock()  # one pass at a time, and submissions against it
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        jobs.add_listener(self._wake.set)
        self._thread = threading.Thread(target=self._drive, name="sweeps", daemon=True)
        self._thread.start()

    def _search(self, record: SweepRecord) -> Search:
        search = self._searches.get(record.sweep_id)
        if search is None:
            search = self._searches[record.sweep_id] = Search(
                self.storage, record.sweep_id, record.spec
            )
        return search

    # --- the API's calls ----------------------------------------------------------------

    def submit(
        self, spec: SweepSpec, *, principal: Principal, submission_id: str = ""
    ) -> SweepRecord:
        """Start a sweep owned by `principal`; the same `submission_id` and spec again
        return the first sweep (another spec: AlreadyExistsError)."""
        check_submission_id(submission_id)
        with self._lock:
            if submission_id:
                earlier = self.store.find_submission(submission_id, owner=principal.name)
                if earlier is not None:
                    if earlier.spec != spec:
                        raise AlreadyExistsError(
                            f"submission_id {submission_id!r} was used for another sweep spec"
                        )
                    return earlier
            record = SweepRecord(
                sweep_id=f"sweep-{uuid.uuid4().hex[:12]}",
                spec=spec,
                owner=principal.name,
                owner_is_admin=principal.is_admin,
                created_at=time.time(),
                submission_id=submission_id,
            )
            self._search(record).create()
            self.store.create(record)
        log.info("sweep %s submitted (%s, %d trials)", record.sweep_id, spec.name, spec.max_trials)
        self._wake.set()
        return record

    def get(self, sweep_id: str, *, principal: Principal) -> SweepRecord:
        record = self.store.get(sweep_id)
        if not principal.can_see(record.owner):
            raise unknown_sweep(sweep_id)
        return record

    def list(
        self,
        *,
        principal: Principal,
        state: JobState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[SweepRecord], str]:
        """The principal's sweeps, newest first (an admin's list holds everyone's)."""
        return self.store.list(
            owner=None if principal.is_admin else principal.name,
            state=state,
            limit=page_limit(page_size),
            page_token=page_token,
        )

    def cancel(self, sweep_id: str, *, principal: Principal) -> SweepRecord:
        """Stop starting trials, cancel the running ones; returns once the sweep is
        recorded CANCELLED (or after CANCEL_WAIT_S, still RUNNING with its cancel
        requested: the driver finishes it)."""
        record = self.get(sweep_id, principal=principal)
        if record.is_finished:
            return record
        self.store.request_cancel(sweep_id)
        self._wake.set()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while not (record := self.store.get(sweep_id)).is_finished:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return record

    def events_after(self, sweep_id: str, after_seq: int, limit: int = 1000) -> list[SweepEvent]:
        return self.store.events_after(sweep_id, after_seq, limit)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` after each pass that may have changed a sweep (from the driving
        thread); it must return at once."""
        self._listeners.append(listener)

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._cancels.shutdown(wait=True, cancel_futures=False)
        self.store.close()

    # --- the driving thread -------------------------------------------------------------

    def _drive(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            for sweep_id in self.store.ids_running():
                if self._stopping.is_set():
                    return
                try:
                    with self._lock:
                        if self.driver.advance(sweep_id).is_finished:
                            self._searches.pop(sweep_id, None)
                except Exception:  # one sweep's trouble must not stop the others
                    log.exception("sweep %s: a pass failed; the next one tries again", sweep_id)
            for listener in self._listeners:
                listener()
            self._stopping.wait(MIN_PASS_INTERVAL_S)
