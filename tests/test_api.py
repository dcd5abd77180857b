"""End to end over a real port and a real embedded Ray: submit, stream, cancel, weights, errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

import grpc
import numpy as np
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from ray.exceptions import RayActorError

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from bptrain.v1 import training_pb2_grpc
from services.cluster import NAMESPACE
from services.datasets import load_dataset
from services.jobs.monitor import runner_actor_name
from tests.conftest import digits_spec
from tests.processes import is_alive

pytestmark = pytest.mark.slow


def numpy_accuracy(weights: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy from the downloaded arrays alone: no code from worker/ is used."""
    architecture = json.loads(str(weights["architecture"]))
    a = X.astype(np.float64)
    for index, name in enumerate(architecture["activations"], start=1):
        z = a @ weights[f"W{index}"] + weights[f"b{index}"]
        a = np.maximum(z, 0.0) if name == "relu" else z
    return float(np.mean(a.argmax(axis=1) == y))


def wait_for_step(client: Client, job_id: str, step: int, timeout_s: float = 60.0) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.step >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not reach step {step}")


def job_processes(job: pb.Job, manager) -> list[int]:
    """The live processes working for a job: its workers (by the ids `GetJob` gives: a
    worker kept from an earlier job has that job's actor name) and its runner (a
    standby's, or one named for the job), unless that runner is back in the pool, idle."""
    pids = [worker.pid for worker in job.workers]
    runner = runner_actor_name(manager.store.get(job.job_id))
    if runner not in manager.runners.idle_names():
        with contextlib.suppress(ValueError, RayActorError):  # gone: no process
            actor = ray.get_actor(runner, namespace=NAMESPACE)
            pids += ray.get(actor.process_ids.remote(), timeout=10)["runner"]
    return [pid for pid in pids if is_alive(pid)]


def test_job_streams_every_step_once_then_gives_accurate_weights(client: Client) -> None:
    layers = [{"units": 128, "activation": "relu"}, {"units": 10, "activation": "identity"}]
    job = client.submit(digits_spec(layers=layers, epochs=25))
    assert job.state == pb.QUEUED
    steps, final = [], None
    for event in client.events(job.job_id):
        if event.HasField("point"):
            steps.append(event.point.step)
        else:
            final = event.final
    assert final is not None and final.state == pb.SUCCEEDED, final
    assert steps == list(range(1, final.total_steps + 1))
    assert final.step == final.total_steps > 0
    assert final.latest.HasField("validation_accuracy")
    assert len(final.latest.gradient_norms) == 2
    assert [w.index for w in final.workers] == [0, 1]
    assert all(w.node_id and w.pid > 0 for w in final.workers)

    digits = load_dataset("digits")
    weights = client.weights(job.job_id)
    assert weights["W1"].shape == (64, 128) and weights["b2"].shape == (10,)
    assert numpy_accuracy(weights, digits.X_test, digits.y_test) >= 0.95


def test_loss_falls_and_validation_is_reported_once_per_epoch(client: Client) -> None:
    job = client.submit(digits_spec(epochs=4))
    final = client.wait(job.job_id)
    points = list(client.metrics(job.job_id))
    assert final.state == pb.SUCCEEDED
    steps_per_epoch = final.total_steps // 4
    validated = [p.step for p in points if p.HasField("validation_loss")]
    assert validated == [steps_per_epoch * e for e in range(1, 5)]
    assert np.mean([p.loss for p in points[-5:]]) < 0.5 * np.mean([p.loss for p in points[:5]])


def test_an_ssp_jobs_stream_says_how_far_its_workers_ran_apart(client: Client) -> None:
    job = client.submit(digits_spec(consistency="ssp", staleness=1, epochs=4))
    points = list(client.metrics(job.job_id))
    assert client.get(job.job_id).state == pb.SUCCEEDED
    assert len(points) == client.get(job.job_id).total_steps
    leads = [p.clock_lead_max for p in points]
    assert max(leads) <= 1  # the bound
    assert max(leads) == 1  # two workers on their own pace: one reads a clock ahead


def test_reconnect_with_after_step_continues_at_the_next_step(client: Client) -> None:
    job = client.submit(digits_spec(epochs=10))
    seen = []
    for point in client.metrics(job.job_id):  # drop the stream mid-job
        seen.append(point.step)
        if len(seen) == 7:
            break
    resumed = [p.step for p in client.metrics(job.job_id, after_step=seen[-1])]
    assert seen == list(range(1, 8))
    assert resumed[0] == 8
    assert seen + resumed == list(range(1, client.get(job.job_id).total_steps + 1))


def test_a_finished_jobs_stream_replays_from_the_cursor_and_ends_with_its_state(
    client: Client,
) -> None:
    job = client.submit(digits_spec(epochs=1))
    client.wait(job.job_id)
    events = list(client.events(job.job_id, after_step=5))
    assert [e.point.step for e in events[:-1]] == list(range(6, events[-1].final.total_steps + 1))
    assert events[-1].final.state == pb.SUCCEEDED


def test_a_batched_stream_carries_the_same_points_in_fewer_messages(
    client: Client, server: tuple
) -> None:
    job = client.submit(digits_spec(epochs=1))
    final = client.wait(job.job_id)
    running, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        one_each, batched = (
            list(stub.StreamMetrics(pb.StreamMetricsRequest(**fields), timeout=30))
            for fields in (
                {"job_id": job.job_id, "after_step": 3},
                {"job_id": job.job_id, "after_step": 3, "batched": True},
            )
        )
    assert all(m.WhichOneof("event") == "point" for m in one_each[:-1])
    assert all(m.WhichOneof("event") == "points" for m in batched[:-1])
    points = [p for m in batched[:-1] for p in m.points.points]
    assert points == [m.point for m in one_each[:-1]]
    assert [p.step for p in points] == list(range(4, final.total_steps + 1))
    assert len(batched) < len(one_each)
    assert one_each[-1].final.state == batched[-1].final.state == pb.SUCCEEDED
    # The SDK asks for batches and hands out one event per point, as before.
    assert [e.point for e in client.events(job.job_id, after_step=3)][:-1] == points


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"optimizer": {"kind": "sgd", "learning_rate": -1}}, "optimizer.learning_rate"),
        ({"layers": []}, "layers"),
        (
            {
                "layers": [
                    {"units": 8, "activation": "relux"},
                    {"units": 10, "activation": "identity"},
                ]
            },
            "layers[0].activation",
        ),
        ({"dataset": {"name": "imagenet"}}, "dataset.name"),
        ({"batch_size": 0}, "batch_size"),
        ({"workers": 0}, "workers"),
        ({"layers": [{"units": 7, "activation": "identity"}]}, "layers[0].units"),
        ({"consistency": "bulk"}, "consistency"),
    ],
)
def test_bad_specs_answer_invalid_argument_naming_the_field(
    client: Client, server: tuple, changes: dict, field: str
) -> None:
    with pytest.raises(BptrainError) as caught:
        client.submit(digits_spec(**changes))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.details.startswith(field + " ")
    channel = grpc.insecure_channel(f"127.0.0.1:{server[0].port}")
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_negative_learning_rate_message_reads_as_documented(client: Client) -> None:
    with pytest.raises(BptrainError, match=r"optimizer.learning_rate must be > 0, got -1"):
        client.submit(digits_spec(optimizer={"kind": "adam", "learning_rate": -1}))


def test_cancel_ends_a_running_job_and_removes_its_actors(client: Client, server: tuple) -> None:
    manager = server[1]
    job = client.submit(digits_spec(epochs=5000))
    running = wait_for_step(client, job.job_id, 3)
    assert len(job_processes(running, manager)) == 3  # runner, 2 workers with a θ shard
    started = time.monotonic()
    cancelled = client.cancel(job.job_id)
    while job_processes(running, manager) and time.monotonic() - started < 10:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    assert cancelled.state == pb.CANCELLED
    assert cancelled.reason == "cancelled by request"
    assert job_processes(running, manager) == [], f"processes left {elapsed:.2f} s after cancel"
    final = list(client.events(job.job_id))[-1].final
    assert final.state == pb.CANCELLED
    with pytest.raises(BptrainError) as caught:
        client.weights(job.job_id)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert client.cancel(job.job_id).state == pb.CANCELLED  # cancelling again is harmless


def test_weights_of_an_unfinished_job_are_a_failed_precondition(client: Client) -> None:
    job = client.submit(digits_spec(epochs=5000))
    try:
        with pytest.raises(BptrainError) as caught:
            client.weights(job.job_id)
        assert caught.value.code == "FAILED_PRECONDITION"
        assert "SUCCEEDED" in caught.value.details
    finally:
        client.cancel(job.job_id)


@pytest.mark.parametrize(
    "kind",
    [{}, {"ps_shards": 2}, {"consistency": "asp"}, {"consistency": "ssp", "ps_shards": 2}],
    ids=["colocated-bsp", "ps-bsp", "colocated-asp", "ps-ssp"],
)
def test_a_running_job_gives_its_latest_weights_on_request(
    client: Client, tmp_path, kind: dict
) -> None:
    job = client.submit(digits_spec(epochs=5000, **kind))
    try:
        wait_for_step(client, job.job_id, 5)
        weights = client.weights(job.job_id, latest=True)
        assert weights["W1"].shape == (64, 64) and weights["b2"].shape == (10,)
        assert np.abs(weights["b1"]).sum() > 0  # trained: biases start at zero
        path = tmp_path / "live.onnx"
        digest = client.download_weights(job.job_id, path, format="onnx", latest=True)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    finally:
        client.cancel(job.job_id)


@pytest.mark.parametrize("call", ["get", "cancel", "metrics", "weights"])
def test_unknown_job_is_not_found(client: Client, call: str) -> None:
    with pytest.raises(BptrainError) as caught:
        result = getattr(client, call)("job-does-not-exist")
        list(result) if call == "metrics" else result
    assert caught.value.code == "NOT_FOUND"
    assert "job-does-not-exist" in caught.value.details


def test_a_job_that_cannot_run_fails_with_a_reason(client: Client) -> None:
    spec = digits_spec(batch_size=5000)  # more than the 1294 training rows
    final = client.wait(client.submit(spec).job_id)
    assert final.state == pb.FAILED
    assert "batch_size 5000 is larger than the 1294 training rows" in final.reason


def test_list_pages_newest_first_and_filters_by_state(client: Client) -> None:
    ids = [client.submit(digits_spec(epochs=1, name=f"list-{i}")).job_id for i in range(3)]
    for job_id in ids:
        client.wait(job_id)
    listed = [job.job_id for job in client.list(page_size=2)]
    assert listed[:3] == ids[::-1]
    assert len(listed) == len(set(listed))
    succeeded = list(client.list(state="SUCCEEDED"))
    assert set(ids) <= {job.job_id for job in succeeded}
    assert all(job.state == pb.SUCCEEDED for job in succeeded)
    with pytest.raises(grpc.RpcError) as caught:
        client._stub.ListJobs(pb.ListJobsRequest(page_token="garbage"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("page_token")


def test_the_returned_spec_has_defaults_filled_in(client: Client) -> None:
    spec = {
        "dataset": {"name": "synthetic/blobs", "classes": 3},
        "layers": [{"units": 3, "activation": "identity"}],
        "steps": 3,
    }
    job = client.submit(spec)
    assert job.spec.workers == 2 and job.spec.batch_size == 64
    assert job.spec.optimizer.kind == "sgd" and job.spec.optimizer.learning_rate == 0.01
    assert job.spec.dataset.validation_fraction == pytest.approx(0.1)
    assert client.wait(job.job_id).state == pb.SUCCEEDED


def test_reflection_lists_the_training_service(server: tuple) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server[0].port}")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in answer.list_services_response.service}
    channel.close()
    assert "bptrain.v1.TrainingService" in names
    assert "grpc.health.v1.Health" in names
