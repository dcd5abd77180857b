"""GetJob's answer is built once per stored record: a polled job between two writes."""

from __future__ import annotations

import asyncio
import dataclasses

from bptrain.v1 import training_pb2 as pb
from services.api import convert
from services.api.servicer import MESSAGES_KEPT, TrainingServicer
from services.jobs.records import JobRecord, JobState
from tests.test_store import SPEC


class OneJob:
    """The one JobManager call GetJob makes, answering the record it holds now."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record

    def get(self, job_id: str, *, principal: object) -> JobRecord:
        assert job_id == self.record.job_id
        return self.record


def get_job(servicer: TrainingServicer, job_id: str) -> pb.Job:
    return asyncio.run(servicer.GetJob(pb.GetJobRequest(job_id=job_id), None))


def test_the_same_record_gets_the_same_message_and_a_new_record_a_new_one() -> None:
    record = JobRecord(job_id="job-a", spec=SPEC, created_at=100.0)
    manager = OneJob(record)
    servicer = TrainingServicer(manager, followers=None)
    first = get_job(servicer, "job-a")
    assert first == convert.job_to_proto(record)
    assert get_job(servicer, "job-a") is first  # built once for this record

    manager.record = dataclasses.replace(record, state=JobState.RUNNING)  # the store changed
    second = get_job(servicer, "job-a")
    assert second.state == pb.RUNNING and first.state == pb.QUEUED
    manager.record = dataclasses.replace(record)  # equal, but read again: built again
    assert get_job(servicer, "job-a") is not first


def test_the_kept_messages_are_bounded() -> None:
    servicer = TrainingServicer(OneJob(JobRecord(job_id="x", spec=SPEC, created_at=1.0)), None)
    for i in range(MESSAGES_KEPT + 10):
        servicer.manager = OneJob(JobRecord(job_id=f"job-{i}", spec=SPEC, created_at=1.0))
        get_job(servicer, f"job-{i}")
    assert len(servicer._messages) <= MESSAGES_KEPT
