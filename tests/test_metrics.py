"""services.metrics without Ray: the derived training metrics, per-job series, the RPC
interceptor over a real gRPC server, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.api.errors import ErrorMappingInterceptor
from services.api.rpc_metrics import RpcMetricsInterceptor
from services.errors import InvalidSpecError, NotFoundError
from services.jobs.records import JobState, MetricPoint
from services.metrics import (
    MetricsConfig,
    MetricsExporter,
    ServiceMetrics,
    build_registry,
)


def point(step: int, elapsed: float, **changes: object) -> MetricPoint:
    """A point `elapsed` seconds into its job, with loss 2/step."""
    fields = {
        "step": step,
        "epoch": 0,
        "loss": 2.0 / step,
        "samples_per_second": 0.0,
        "learning_rate": 0.01,
        "elapsed_seconds": elapsed,
    }
    return MetricPoint(**{**fields, **changes})


def with_rate(points: list[MetricPoint], samples: int) -> list[MetricPoint]:
    """Sets samples_per_second as the runner does: samples over the step's own duration."""
    out, last = [], 0.0
    for p in points:
        duration = p.elapsed_seconds - last
        out.append(dataclasses.replace(p, samples_per_second=samples / duration))
        last = p.elapsed_seconds
    return out


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics(CollectorRegistry())


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_steps_samples_and_step_durations_derive_from_the_points(metrics: ServiceMetrics) -> None:
    points = with_rate([point(1, 0.5), point(2, 0.75), point(3, 1.75)], samples=64)
    metrics.points_recorded("job-a", points[:2])
    metrics.points_recorded("job-a", points[2:])
    assert value(metrics, "bptrain_training_steps_total") == 3
    assert value(metrics, "bptrain_ps_updates_total") == 3
    assert value(metrics, "bptrain_training_samples_total") == 3 * 64
    assert value(metrics, "bptrain_training_step_duration_seconds_count") == 3
    assert value(metrics, "bptrain_training_step_duration_seconds_sum") == pytest.approx(1.75)
    # Durations 0.5, 0.25 and 1.0 s: two of them fall at or below the 0.5 s bucket.
    assert value(metrics, "bptrain_training_step_duration_seconds_bucket", le="0.5") == 2
    assert value(metrics, "bptrain_training_step_duration_seconds_bucket", le="0.25") == 1


def test_points_seen_again_are_not_counted_twice(metrics: ServiceMetrics) -> None:
    points = with_rate([point(1, 0.5), point(2, 1.0)], samples=32)
    metrics.points_recorded("job-a", points)
    metrics.points_recorded("job-a", points[1:])
    assert value(metrics, "bptrain_training_steps_total") == 2
    assert value(metrics, "bptrain_training_samples_total") == 64


def test_a_gap_in_versions_counts_every_parameter_server_update(metrics: ServiceMetrics) -> None:
    metrics.points_recorded("job-a", with_rate([point(1, 0.5), point(4, 1.0)], samples=8))
    assert value(metrics, "bptrain_training_steps_total") == 2
    assert value(metrics, "bptrain_ps_updates_total") == 4


def test_a_job_picked_up_mid_way_counts_only_the_steps_seen_here(metrics: ServiceMetrics) -> None:
    # After an API restart the monitor reattaches at step 40, 20 s into the job.
    points = with_rate([point(40, 20.0), point(41, 20.5), point(42, 21.0)], samples=64)
    metrics.points_recorded("job-a", points)
    assert value(metrics, "bptrain_training_steps_total") == 2
    assert value(metrics, "bptrain_ps_updates_total") == 2
    assert value(metrics, "bptrain_training_samples_total") == 2 * 64
    assert value(metrics, "bptrain_training_step_duration_seconds_sum") == pytest.approx(1.0)
    assert value(metrics, "bptrain_job_loss", job_id="job-a") == pytest.approx(2.0 / 42)


def test_per_job_gauges_follow_the_latest_point_and_go_when_the_job_ends(
    metrics: ServiceMetrics,
) -> None:
    first = point(1, 0.5, samples_per_second=100.0, validation_loss=0.9, validation_accuracy=0.6)
    metrics.points_recorded("job-a", [first, point(2, 1.0, samples_per_second=128.0)])
    metrics.points_recorded("job-b", [point(1, 0.5, loss=7.0)])
    assert value(metrics, "bptrain_job_loss", job_id="job-a") == 1.0
    assert value(metrics, "bptrain_job_samples_per_second", job_id="job-a") == 128.0
    # Validation is kept from the last point that had one.
    assert value(metrics, "bptrain_job_validation_loss", job_id="job-a") == 0.9
    assert value(metrics, "bptrain_job_validation_accuracy_ratio", job_id="job-a") == 0.6
    assert value(metrics, "bptrain_job_validation_accuracy_ratio", job_id="job-b") is None

    metrics.job_finished("job-a", JobState.SUCCEEDED)
    metrics.job_finished("job-b", JobState.CANCELLED)
    metrics.job_finished("job-never-ran", JobState.FAILED)
    text = exposition(metrics.registry)
    assert "job_id=" not in text
    assert value(metrics, "bptrain_jobs_finished_total", state="SUCCEEDED") == 1
    assert value(metrics, "bptrain_jobs_finished_total", state="CANCELLED") == 1
    assert value(metrics, "bptrain_jobs_finished_total", state="FAILED") == 1


def test_finished_counters_exist_at_zero_for_every_terminal_state(metrics: ServiceMetrics) -> None:
    for state in ("SUCCEEDED", "FAILED", "CANCELLED"):
        assert value(metrics, "bptrain_jobs_finished_total", state=state) == 0
    assert value(metrics, "bptrain_jobs_finished_total", state="RUNNING") is None
    assert value(metrics, "bptrain_jobs_submitted_total") == 0


# --- the RPC interceptor, over a real server -----------------------------------------------

SERVICE = "test.Probe"


async def _ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError("unknown thing")


async def _bug(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a bug")


async def _abort(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")


async def _three(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for answer in (b"1", b"2", b"3"):
        yield answer


async def _fails_midway(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"1"
    raise InvalidSpecError("after_step", "must be >= 0")


async def _endless(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    while True:
        yield b"tick"
        await asyncio.sleep(0.01)


async def _sum(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(sum([len(r) async for r in requests])).encode()


async def _start_probe(metrics: ServiceMetrics) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        interceptors=[RpcMetricsInterceptor(metrics), ErrorMappingInterceptor()],
    )
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(_ok),
        "NotFound": grpc.unary_unary_rpc_method_handler(_not_found),
        "Bug": grpc.unary_unary_rpc_method_handler(_bug),
        "Abort": grpc.unary_unary_rpc_method_handler(_abort),
        "Three": grpc.unary_stream_rpc_method_handler(_three),
        "FailsMidway": grpc.unary_stream_rpc_method_handler(_fails_midway),
        "Endless": grpc.unary_stream_rpc_method_handler(_endless),
        "Sum": grpc.stream_unary_rpc_method_handler(_sum),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
def probe_server(metrics: ServiceMetrics) -> Iterator[grpc.Channel]:
    """The interceptors over an asyncio server of probe handlers, as the API serves."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server, port = asyncio.run_coroutine_threadsafe(_start_probe(metrics), loop).result()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def handled(metrics: ServiceMetrics, method: str, code: str) -> float:
    return value(metrics, "bptrain_rpc_handled_total", method=f"{SERVICE}/{method}", code=code) or 0


def wait_for_handled(metrics: ServiceMetrics, method: str, code: str, least: int = 1) -> float:
    # A call's status is recorded as its handler unwinds, just after the client has it.
    deadline = time.monotonic() + 10
    while handled(metrics, method, code) < least and time.monotonic() < deadline:
        time.sleep(0.01)
    return handled(metrics, method, code)


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("Ok", "OK"),
        ("NotFound", "NOT_FOUND"),
        ("Bug", "INTERNAL"),
        ("Abort", "PERMISSION_DENIED"),
    ],
)
def test_unary_rpcs_are_counted_with_their_final_code(
    probe_server: grpc.Channel, metrics: ServiceMetrics, method: str, code: str
) -> None:
    call = probe_server.unary_unary(f"/{SERVICE}/{method}")
    for _ in range(2):
        try:
            call(b"x", timeout=10)
        except grpc.RpcError as error:
            assert error.code().name == code
    assert wait_for_handled(metrics, method, code, least=2) == 2
    labels = {"method": f"{SERVICE}/{method}"}
    assert metrics.registry.get_sample_value("bptrain_rpc_duration_seconds_count", labels) == 2


def test_a_stream_is_counted_once_it_ends(
    probe_server: grpc.Channel, metrics: ServiceMetrics
) -> None:
    assert list(probe_server.unary_stream(f"/{SERVICE}/Three")(b"", timeout=10)) == [
        b"1",
        b"2",
        b"3",
    ]
    assert wait_for_handled(metrics, "Three", "OK") == 1


def test_a_stream_that_fails_midway_is_counted_with_the_mapped_code(
    probe_server: grpc.Channel, metrics: ServiceMetrics
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(probe_server.unary_stream(f"/{SERVICE}/FailsMidway")(b"", timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wait_for_handled(metrics, "FailsMidway", "INVALID_ARGUMENT") == 1
    assert handled(metrics, "FailsMidway", "OK") == 0


def test_a_stream_the_client_cancels_is_counted_as_cancelled(
    probe_server: grpc.Channel, metrics: ServiceMetrics
) -> None:
    stream = probe_server.unary_stream(f"/{SERVICE}/Endless")(b"", timeout=30)
    assert next(stream) == b"tick"
    stream.cancel()
    assert wait_for_handled(metrics, "Endless", "CANCELLED") == 1
    assert handled(metrics, "Endless", "OK") == 0


def test_a_client_stream_is_counted(probe_server: grpc.Channel, metrics: ServiceMetrics) -> None:
    answer = probe_server.stream_unary(f"/{SERVICE}/Sum")(iter([b"ab", b"cde"]), timeout=10)
    assert answer == b"5"
    assert wait_for_handled(metrics, "Sum", "OK") == 1


def test_unknown_methods_add_no_series(probe_server: grpc.Channel, metrics: ServiceMetrics) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        probe_server.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchMethod" not in exposition(metrics.registry)


# --- the endpoint -----------------------------------------------------------------------------


def exposition(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_the_exporter_serves_the_registry_on_a_free_port() -> None:
    metrics = ServiceMetrics(build_registry())
    metrics.job_submitted()
    exporter = MetricsExporter.start(MetricsConfig(host="127.0.0.1", port=0), metrics.registry)
    try:
        assert exporter.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10) as r:
            body = r.read().decode()
    finally:
        exporter.stop()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["bptrain_jobs_submitted"].samples[0].value == 1
    assert "process_cpu_seconds" in families  # the process's own metrics come along
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=2)


def test_a_taken_port_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    first = MetricsExporter.start(MetricsConfig(port=0), registry)
    try:
        with pytest.raises(OSError, match=rf"could not serve metrics on 127.0.0.1:{first.port}"):
            MetricsExporter.start(MetricsConfig(port=first.port), registry)
    finally:
        first.stop()


@pytest.mark.parametrize("port", [-1, 65536])
def test_metrics_port_is_validated(port: int) -> None:
    with pytest.raises(ValueError, match="metrics port"):
        MetricsConfig(port=port)


def test_staleness_gauges_and_pushed_bytes_follow_the_points(metrics: ServiceMetrics) -> None:
    points = [
        point(1, 0.5, staleness_mean=1.5, staleness_max=3, bytes_pushed=1000),
        point(2, 1.0, staleness_mean=0.5, staleness_max=1, bytes_pushed=400),
    ]
    metrics.points_recorded("job-a", points)

    assert value(metrics, "bptrain_job_staleness", job_id="job-a") == 0.5
    assert value(metrics, "bptrain_job_staleness_max", job_id="job-a") == 1
    assert value(metrics, "bptrain_pushed_gradient_bytes_total") == 1400
    metrics.job_finished("job-a", JobState.SUCCEEDED)
    assert value(metrics, "bptrain_job_staleness", job_id="job-a") is None
