"""services/jobs/queue.py without Ray: FIFO order, the running limit and quotas, refusals,
and the prose a waiting job shows."""

from __future__ import annotations

from typing import Any

import pytest

from services.errors import ResourceExhaustedError
from services.jobs.config import JobsConfig
from services.jobs.queue import JobQueue
from services.jobs.records import JobRecord, JobState
from services.jobs.spec import DatasetSpec, JobSpec, LayerSpec
from services.tenancy import Quotas

SPEC = JobSpec(
    name="queue",
    layers=(LayerSpec(units=4, activation="relu"), LayerSpec(units=10, activation="identity")),
    dataset=DatasetSpec(name="digits"),
    workers=3,
)


def queue(**limits: Any) -> JobQueue:
    return JobQueue(JobsConfig(**limits))


def record(job_id: str, owner: str = "alice", state: JobState = JobState.QUEUED) -> JobRecord:
    return JobRecord(job_id=job_id, owner=owner, spec=SPEC, state=state, created_at=1.0)


def start_all(jobs: JobQueue) -> list[str]:
    """What the manager does: start the next job while one may start."""
    started = []
    while (job_id := jobs.next_to_start()) is not None:
        jobs.remove_waiting(job_id)
        jobs.hold_slot(job_id, "alice" if job_id.startswith("a") else "bob")
        started.append(job_id)
    return started


def test_jobs_start_oldest_first_up_to_the_running_limit() -> None:
    jobs = queue(max_running_jobs=2)
    for job_id in ("a1", "a2", "a3"):
        jobs.add(job_id, "alice")
    assert start_all(jobs) == ["a1", "a2"]
    jobs.release("a1")
    assert start_all(jobs) == ["a3"]


def test_stored_waiting_jobs_keep_their_order() -> None:
    jobs = JobQueue(JobsConfig(max_running_jobs=1), {"b1": "bob", "a1": "alice"})
    assert start_all(jobs) == ["b1"]


def test_a_job_whose_owner_is_at_its_running_quota_is_passed_over() -> None:
    jobs = queue(max_running_jobs=3, quotas=Quotas(running_jobs=1))
    for job_id, owner in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        jobs.add(job_id, owner)
    assert start_all(jobs) == ["a1", "b1"]
    assert jobs.running_of("alice") == 1
    assert jobs.waiting_of("alice") == 1


def test_nothing_starts_while_paused() -> None:
    jobs = queue()
    jobs.add("a1", "alice")
    jobs.pause("waiting for Ray at ray://head:10001 to answer")
    assert jobs.is_paused
    assert start_all(jobs) == []
    placed = jobs.place(record("a1"))
    assert (placed.queue_position, placed.queue_reason) == (
        1,
        "waiting for Ray at ray://head:10001 to answer",
    )
    jobs.resume()
    assert start_all(jobs) == ["a1"]


def test_a_full_queue_and_a_queued_quota_refuse_more() -> None:
    jobs = queue(max_queued_jobs=2, quotas=Quotas(queued_jobs=1))
    jobs.add("a1", "alice")
    with pytest.raises(ResourceExhaustedError, match="alice has 1 queued jobs"):
        jobs.check_room("alice")
    jobs.check_room("bob")
    jobs.add("b1", "bob")
    with pytest.raises(ResourceExhaustedError, match="the queue is full: 2 jobs wait"):
        jobs.check_room("carol")


def test_withdraw_takes_only_a_waiting_job() -> None:
    jobs = queue(max_running_jobs=1)
    jobs.add("a1", "alice")
    jobs.add("a2", "alice")
    start_all(jobs)
    assert not jobs.withdraw("a1")  # running: the monitor cancels it
    assert jobs.withdraw("a2")
    assert jobs.waiting_of("alice") == 0


def test_a_waiting_job_says_why_it_waits() -> None:
    jobs = queue(max_running_jobs=1, quotas=Quotas(running_jobs=1))
    for job_id, owner in (("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("b2", "bob")):
        jobs.add(job_id, owner)
    start_all(jobs)  # a1 runs
    placed = jobs.place(record("a2"))
    assert placed.queue_position == 1
    assert placed.queue_reason == "principal alice has 1 running jobs, its running_jobs quota"
    placed = jobs.place(record("b2", owner="bob"))
    assert placed.queue_position == 3
    assert placed.queue_reason == "waiting for a free slot: 1 of 1 jobs are running"


def test_a_started_job_not_yet_running_is_placing_its_workers() -> None:
    jobs = queue()
    jobs.add("a1", "alice")
    start_all(jobs)
    placed = jobs.place(record("a1"))
    assert placed.queue_position == 0
    assert placed.queue_reason == "starting: placing the parameter server and 3 workers on Ray"


def test_records_not_queued_are_left_alone() -> None:
    running = record("a1", state=JobState.RUNNING)
    assert queue().place(running) is running
