"""The API server and the Ray cluster fail under a running job; nothing is lost.

1. The API server is killed mid-job on a live cluster: the job keeps running in its
   detached runner, a new server reattaches, and the resumed stream has every step once.
2. The API server and the whole Ray cluster are killed: the new server answers at once,
   RPCs that need Ray answer UNAVAILABLE, and when a cluster answers again the job
   resumes from its last checkpoint and succeeds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec, ray_cluster
from tests.processes import (
    start_api,
    start_head,
    stop_head,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict]:
    """One cluster for both tests (starting one costs some CPU seconds): each runs its own
    API server on its own storage; the second kills the head and starts it again."""
    with ray_cluster() as state:
        yield state


def follow_until(client: Client, job_id: str, step: int) -> list[int]:
    seen = []
    for point in client.metrics(job_id):
        seen.append(point.step)
        if point.step == step:
            return seen
    raise AssertionError(f"the stream of {job_id} ended before step {step}")


def test_a_killed_api_server_comes_back_and_the_stream_resumes_without_gaps(
    cluster: dict, tmp_path: Path
) -> None:
    api, port = start_api(tmp_path, cluster["address"], cluster["env"])
    with Client(f"127.0.0.1:{port}") as client:
        job = client.submit(digits_spec(epochs=15, checkpoint_every=20))
        seen = follow_until(client, job.job_id, 25)
    api.send_signal(signal.SIGKILL)  # a crash: no graceful shutdown
    api.wait()
    killed_at = time.monotonic()
    api, port = start_api(tmp_path, cluster["address"], cluster["env"])
    try:
        with Client(f"127.0.0.1:{port}") as client:
            resumed = [point.step for point in client.metrics(job.job_id, after_step=seen[-1])]
            print(f"API back and streaming {time.monotonic() - killed_at:.2f} s after the crash")
            final = client.get(job.job_id)
            assert final.state == pb.SUCCEEDED, final.reason
            assert seen + resumed == list(range(1, final.total_steps + 1))
            assert client.weights(job.job_id)["W1"].shape == (64, 64)
    finally:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0


def test_with_ray_gone_rpcs_that_need_it_are_unavailable_until_it_is_back(
    cluster: dict, tmp_path: Path
) -> None:
    api, port = start_api(tmp_path, cluster["address"], cluster["env"])
    with Client(f"127.0.0.1:{port}") as client:
        job = client.submit(digits_spec(epochs=15, checkpoint_every=10))
        seen = follow_until(client, job.job_id, 25)
    api.send_signal(signal.SIGKILL)
    api.wait()
    stop_head(cluster["head"], cluster["port"], cluster["temp_dir"])  # the whole cluster dies

    api, port = start_api(tmp_path, cluster["address"], cluster["env"])  # answers without Ray
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert client.get(job.job_id).state == pb.RUNNING
            for call in (lambda: client.weights(job.job_id, latest=True),
                         lambda: client.cancel(job.job_id)):  # fmt: skip
                with pytest.raises(BptrainError) as caught:
                    call()
                assert caught.value.code == "UNAVAILABLE"
                assert "does not answer" in caught.value.details
            queued = client.submit(digits_spec(epochs=1))
            assert client.get(queued.job_id).queue_reason.startswith("waiting for Ray at")

            cluster["head"] = start_head(cluster["port"], cluster["temp_dir"], cluster["env"])
            back_at = time.monotonic()
            resumed = [point.step for point in client.metrics(job.job_id, after_step=seen[-1])]
            print(f"job running again and finished {time.monotonic() - back_at:.2f} s after Ray")
            final = client.get(job.job_id)
            assert final.state == pb.SUCCEEDED, final.reason
            assert seen + resumed == list(range(1, final.total_steps + 1))
            assert queued.wait().state == pb.SUCCEEDED
    finally:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0
