"""JobQueue: the FIFO line of QUEUED jobs, the running slots they wait for, and the prose
that tells a client why its job still waits.

At most `max_running_jobs` jobs hold a slot; a job whose owner already runs its
running_jobs quota is passed over for later ones, and a submission beyond
`max_queued_jobs` waiting jobs (or its owner's queued_jobs quota) is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from services.errors import ResourceExhaustedError
from services.jobs.config import JobsConfig
from services.jobs.records import JobRecord, JobState


class JobQueue:
    """Job ids waiting for a slot, oldest first, and those holding one, with their owners.

    Not locked itself: the manager changes it under its own lock. The answers that only
    read (`place`, `running_of`, `waiting_of`) work on snapshots and need no lock.
    """

    def __init__(self, config: JobsConfig, waiting: Mapping[str, str] | None = None) -> None:
        """`waiting`: {job id: owner} of QUEUED jobs already stored, oldest first."""
        self.config = config
        self._owners: dict[str, str] = dict(waiting or {})  # of waiting and running jobs
        self._waiting: list[str] = list(self._owners)
        self._running: set[str] = set()
        self._paused_reason = ""

    # --- what may start --------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        """Nothing starts until `resume()`; waiting jobs say `reason`."""
        self._paused_reason = reason

    def resume(self) -> None:
        self._paused_reason = ""

    @property
    def is_paused(self) -> bool:
        return bool(self._paused_reason)

    def next_to_start(self) -> str | None:
        """The oldest waiting job that may take a free slot now, passing over those whose
        owner runs its running_jobs quota already; None while paused or all slots are held."""
        if self.is_paused or len(self._running) >= self.config.max_running_jobs:
            return None
        for job_id in self._waiting:
            if not self.is_at_running_quota(self._owners[job_id]):
                return job_id
        return None

    # --- changes (under the manager's lock) ------------------------------------------------

    def check_room(self, owner: str) -> None:
        """ResourceExhaustedError, naming the limit, where `owner` may not queue one more."""
        if len(self._waiting) >= self.config.max_queued_jobs:
            raise ResourceExhaustedError(
                f"the queue is full: {len(self._waiting)} jobs wait "
                f"(limit {self.config.max_queued_jobs}); try again later"
            )
        quota = self.config.quotas.queued_jobs
        queued = self.waiting_of(owner)
        if quota is not None and queued >= quota:
            raise ResourceExhaustedError(
                f"principal {owner} has {queued} queued jobs, its queued_jobs "
                "quota; try again once one has started or ended"
            )

    def add(self, job_id: str, owner: str) -> None:
        """`job_id` waits at the back of the line."""
        self._waiting.append(job_id)
        self._owners[job_id] = owner

    def remove_waiting(self, job_id: str) -> None:
        """`job_id` leaves the line to start (it keeps its owner until released)."""
        self._waiting.remove(job_id)

    def withdraw(self, job_id: str) -> bool:
        """Takes a waiting job out of the queue altogether; False if it was not waiting."""
        if job_id not in self._waiting:
            return False
        self._waiting.remove(job_id)
        self._owners.pop(job_id, None)
        return True

    def hold_slot(self, job_id: str, owner: str) -> None:
        """`job_id` runs: it holds a slot, even beyond the limit (a recovered job)."""
        self._running.add(job_id)
        self._owners[job_id] = owner

    def release(self, job_id: str) -> None:
        """`job_id` ended: its slot is free."""
        self._running.discard(job_id)
        self._owners.pop(job_id, None)

    # --- answers ---------------------------------------------------------------------------

    def running_of(self, owner: str) -> int:
        """How many of `owner`'s jobs hold a running slot."""
        return sum(1 for job_id in tuple(self._running) if self._owners.get(job_id) == owner)

    def waiting_of(self, owner: str) -> int:
        return sum(1 for job_id in tuple(self._waiting) if self._owners.get(job_id) == owner)

    def is_at_running_quota(self, owner: str) -> bool:
        quota = self.config.quotas.running_jobs
        return quota is not None and self.running_of(owner) >= quota

    def place(self, record: JobRecord) -> JobRecord:
        """`record` with its queue position (1-based; 0 once it left the line) and the
        reason it waits, where it is QUEUED; other records as they are."""
        if record.state is not JobState.QUEUED:
            return record
        waiting = list(self._waiting)
        position = waiting.index(record.job_id) + 1 if record.job_id in waiting else 0
        if self._paused_reason:
            reason = self._paused_reason
        elif not position:
            reason = (
                f"starting: placing the parameter server and {record.spec.workers} workers on Ray"
            )
        elif self.is_at_running_quota(record.owner):
            reason = (
                f"principal {record.owner} has {self.running_of(record.owner)} running jobs, "
                "its running_jobs quota"
            )
        else:
            running = self.config.max_running_jobs
            reason = f"waiting for a free slot: {running} of {running} jobs are running"
        return dataclasses.replace(record, queue_position=position, queue_reason=reason)
