"""Server limits: streams whose client left free their thread; too many RPCs are refused;
shutdown reports NOT_SERVING first."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from bptrain.v1 import training_pb2_grpc
from services.api.server import ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from tests.conftest import digits_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def manager(ray_session: None, tmp_path) -> JobManager:
    manager = JobManager(JobsConfig(storage=tmp_path))
    yield manager
    manager.shutdown()


def test_streams_whose_clients_left_free_their_slots(manager: JobManager) -> None:
    running = create_server(ServerConfig(port=0, max_streams=3), manager)
    target = f"127.0.0.1:{running.port}"
    try:
        with Client(target) as client:
            job = client.submit(digits_spec(epochs=5000))
            channel = grpc.insecure_channel(target)
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            request = pb.StreamMetricsRequest(job_id=job.job_id)
            calls = [stub.StreamMetrics(request) for _ in range(3)]
            for call in calls:
                next(call)  # each stream now holds one of the 3 slots
                call.cancel()
            deadline = time.monotonic() + 10
            while True:  # the slots come back once the server sees the cancellations
                try:
                    again = [stub.StreamMetrics(request) for _ in range(3)]
                    for call in again:
                        next(call)
                        call.cancel()
                    break
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "stream slots were never released"
                    time.sleep(0.1)
            client.cancel(job.job_id)
            channel.close()
    finally:
        running.stop(0)


def test_rpcs_beyond_the_concurrency_limit_are_resource_exhausted(manager: JobManager) -> None:
    running = create_server(ServerConfig(port=0, max_concurrent_rpcs=2, max_streams=2), manager)
    target = f"127.0.0.1:{running.port}"
    try:
        with Client(target) as client:
            job = client.submit(digits_spec(epochs=5000))
            channel = grpc.insecure_channel(target)
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            held = [
                stub.StreamMetrics(pb.StreamMetricsRequest(job_id=job.job_id)) for _ in range(2)
            ]
            for call in held:
                next(call)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in held:
                call.cancel()
            channel.close()
            deadline = time.monotonic() + 10
            while True:  # the slots come back once the handlers notice
                try:
                    client.cancel(job.job_id)
                    break
                except BptrainError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
    finally:
        running.stop(0)


def test_shutdown_turns_health_not_serving_before_stopping(manager: JobManager) -> None:
    running = create_server(ServerConfig(port=0), manager)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    seen: list[int] = []

    def read() -> None:
        try:
            for answer in watch:
                seen.append(answer.status)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    running.stop(grace_s=1.0)
    reader.join(timeout=10)
    channel.close()
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
