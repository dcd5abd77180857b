"""The job queue (FIFO under a running limit), idempotent submission, validate-only."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bptrain import BptrainError, Client
from bptrain.specfile import spec_from_dict
from bptrain.v1 import training_pb2 as pb
from services.api.convert import spec_from_proto
from services.api.server import ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from services.jobs.records import JobState
from services.tenancy import LOCAL
from tests.conftest import digits_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_slot(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A server that runs one job at a time and lets two more wait."""
    config = JobsConfig(
        storage=tmp_path_factory.mktemp("queue"), max_running_jobs=1, max_queued_jobs=2
    )
    manager = JobManager(config)
    running = create_server(ServerConfig(port=0), manager)
    with Client(f"127.0.0.1:{running.port}") as client:
        yield client
    running.stop(0)
    manager.shutdown()


def test_three_jobs_run_one_at_a_time_in_submission_order(one_slot: Client) -> None:
    jobs = [one_slot.submit(digits_spec(epochs=2, name=f"fifo-{i}")) for i in range(3)]
    second = one_slot.get(jobs[1].job_id)
    third = one_slot.get(jobs[2].job_id)
    assert (second.state, second.queue_position) == (pb.QUEUED, 1)
    assert (third.state, third.queue_position) == (pb.QUEUED, 2)
    assert second.queue_reason == "waiting for a free slot: 1 of 1 jobs are running"
    finals = [job.wait() for job in jobs]
    assert [f.state for f in finals] == [pb.SUCCEEDED] * 3
    windows = [(f.started_at.ToNanoseconds(), f.finished_at.ToNanoseconds()) for f in finals]
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start  # each started after the previous one finished


def test_a_full_queue_refuses_with_resource_exhausted(one_slot: Client) -> None:
    jobs = [one_slot.submit(digits_spec(epochs=5000, name=f"full-{i}")) for i in range(3)]
    try:
        with pytest.raises(BptrainError) as caught:
            one_slot.submit(digits_spec(epochs=1))
        assert caught.value.code == "RESOURCE_EXHAUSTED"
        assert "queue is full" in caught.value.details
        # cancelling a waiting job frees its place and leaves the others in order
        cancelled = one_slot.cancel(jobs[1].job_id)
        assert cancelled.state == pb.CANCELLED
        assert one_slot.get(jobs[2].job_id).queue_position == 1
    finally:
        for job in jobs:
            one_slot.cancel(job.job_id)


def test_the_same_submission_id_returns_the_same_job(one_slot: Client) -> None:
    spec = digits_spec(epochs=1, name="idempotent")
    first = one_slot.submit(spec, submission_id="retry-me.1")
    again = one_slot.submit(spec, submission_id="retry-me.1")
    assert again.job_id == first.job_id
    assert again.submission_id == "retry-me.1"
    with pytest.raises(BptrainError) as caught:
        one_slot.submit(digits_spec(epochs=2), submission_id="retry-me.1")
    assert caught.value.code == "ALREADY_EXISTS"
    with pytest.raises(BptrainError) as bad:
        one_slot.submit(spec, submission_id="has spaces")
    assert bad.value.code == "INVALID_ARGUMENT" and bad.value.details.startswith("submission_id")
    assert first.wait().state == pb.SUCCEEDED


def test_validate_only_returns_defaults_and_queues_nothing(one_slot: Client) -> None:
    before = len(list(one_slot.list()))
    checked = one_slot.submit(
        {"dataset": {"name": "digits"}, "layers": [{"units": 10, "activation": "identity"}]},
        validate_only=True,
    )
    assert checked.job_id == ""
    assert checked.spec.batch_size == 64 and checked.spec.workers == 2
    assert len(list(one_slot.list())) == before
    with pytest.raises(BptrainError) as caught:
        one_slot.submit(digits_spec(workers=0), validate_only=True)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_running_and_queued_jobs_survive_a_server_restart(
    ray_session: None, tmp_path: Path
) -> None:
    config = JobsConfig(storage=tmp_path, max_running_jobs=1)
    manager = JobManager(config)
    spec = spec_from_proto(spec_from_dict(digits_spec(epochs=5000)))
    running = manager.submit(spec, principal=LOCAL)
    waiting = manager.submit(spec, principal=LOCAL)
    deadline = time.monotonic() + 60
    while manager.get(running.job_id, principal=LOCAL).state is not JobState.RUNNING:
        assert time.monotonic() < deadline, "the first job never started"
        time.sleep(0.1)
    step_before = manager.get(running.job_id, principal=LOCAL).step
    manager.shutdown()
    restarted = JobManager(config)  # reattaches to the detached runner, which kept training
    try:
        deadline = time.monotonic() + 60
        while restarted.get(running.job_id, principal=LOCAL).step <= step_before + 5:
            assert time.monotonic() < deadline, "the reattached job made no progress"
            time.sleep(0.1)
        assert restarted.get(running.job_id, principal=LOCAL).state is JobState.RUNNING
        steps = [p.step for p in restarted.store.metrics_after(running.job_id, 0, limit=10**6)]
        assert steps == list(range(1, len(steps) + 1))  # no gap across the restart
        assert restarted.get(waiting.job_id, principal=LOCAL).state is JobState.QUEUED
    finally:
        restarted.cancel(running.job_id, principal=LOCAL)
        restarted.cancel(waiting.job_id, principal=LOCAL)
        restarted.shutdown()
