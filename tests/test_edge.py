"""Hostile input at the edge, over a real port and every RPC of TrainingService and
SweepService: strings of
1 KB, 100 KB and 10 MB in each string field, bodies that are not protobuf, strings that
are not UTF-8, out-of-range numbers. Each answer is a documented code (never INTERNAL or
UNKNOWN), its message at most 1000 bytes, and it is counted in the RPC metrics. Beyond
the stream limit a new stream is refused at once and health still answers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bptrain import Client
from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb
from bptrain.v1 import training_pb2_grpc
from services.api.edge import MAX_MESSAGE_BYTES, MAX_REPEATED, MAX_STRING_CHARS, check_bounds
from services.api.server import ServerConfig, create_server
from services.errors import InvalidSpecError
from services.jobs.manager import JobManager, JobsConfig
from services.sweeps.manager import SweepManager
from tests.conftest import digits_spec

SERVICE = pb.DESCRIPTOR.services_by_name["TrainingService"]
SERVICES = (SERVICE, spb.DESCRIPTOR.services_by_name["SweepService"])
METHODS = tuple(method for service in SERVICES for method in service.methods)
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
LENGTHS = (1_000, 100_000, 10_000_000)
NOT_UTF8 = b"\x0a\x02\xff\xfe"  # field 1, length 2, bytes that are no UTF-8


@pytest.fixture(scope="module")
def served(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    manager = JobManager(JobsConfig(storage=tmp_path_factory.mktemp("edge")))
    sweeps = SweepManager(manager)
    running = create_server(ServerConfig(port=0), manager, sweeps)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{running.port}",
        options=[("grpc.max_send_message_length", 32 * 1024 * 1024)],
    )
    yield running, manager, channel
    channel.close()
    running.stop(grace_s=1.0)
    sweeps.shutdown()
    manager.shutdown()


def _raw_call(channel: grpc.Channel, method, body: bytes) -> tuple[grpc.StatusCode, str]:
    """Send `body` as the request of `method`; its status code and message."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_stream = method.client_streaming
    response_stream = method.server_streaming
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(request_stream, response_stream)]
    call = kind(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    request = iter([body]) if request_stream else body
    try:
        result = call(request, timeout=30)
        if response_stream:
            for _ in result:
                pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _string_paths(descriptor, prefix: tuple = ()) -> Iterator[tuple]:
    """Paths (field names; "[]" for one item of a repeated message) to every string field."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (*prefix, field.name, "[]") if field.is_repeated else (*prefix, field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and len(prefix) < 4:
            step = (field.name, "[]") if field.is_repeated else (field.name,)
            yield from _string_paths(field.message_type, (*prefix, *step))


def _node(message: Message, path: tuple) -> Message:
    """The message at `path` (made on the way; "[]" adds one item of a repeated field)."""
    node = message
    i = 0
    while i < len(path):
        name = path[i]
        if i + 1 < len(path) and path[i + 1] == "[]":
            node = getattr(node, name).add()
            i += 2
        else:
            node = getattr(node, name)
            i += 1
    return node


def _with_string(message: Message, path: tuple, value: str) -> Message:
    if path[-1] == "[]":  # one item of a repeated string field
        getattr(_node(message, path[:-2]), path[-2]).append(value)
    else:
        setattr(_node(message, path[:-1]), path[-1], value)
    return message


def _cases() -> Iterator[tuple]:
    for method in METHODS:
        request_type = method.input_type
        if method.client_streaming:  # UploadDataset: the header's fields, then sha256
            yield method, ("header", "name")
            yield method, ("sha256",)
            continue
        for path in _string_paths(request_type):
            yield method, path


def _counted(manager: JobManager, method, code: grpc.StatusCode, least: float = 1) -> float:
    """bptrain_rpc_handled_total{method, code}, once it is at least `least` (or after 5 s:
    the server counts a call as its handler unwinds, just after the client has the answer)."""
    labels = {"method": f"{method.containing_service.full_name}/{method.name}", "code": code.name}
    deadline = time.monotonic() + 5
    while True:
        count = manager.metrics.registry.get_sample_value("bptrain_rpc_handled_total", labels)
        if (count or 0) >= least or time.monotonic() > deadline:
            return count or 0
        time.sleep(0.01)


def _body(method, path: tuple, value: str) -> bytes:
    from google.protobuf import message_factory

    if method.client_streaming:
        header = pb.UploadDatasetRequest()
        if path == ("header", "name"):
            header.header.name = value
            return header.SerializeToString()
        header.sha256 = value
        return header.SerializeToString()
    cls = message_factory.GetMessageClass(method.input_type)
    return _with_string(cls(), path, value).SerializeToString()


@pytest.mark.slow
@pytest.mark.parametrize("length", LENGTHS)
def test_long_strings_in_every_field_of_every_rpc_get_a_short_documented_answer(
    served: tuple, length: int
) -> None:
    _, manager, channel = served
    slowest = 0.0
    for method, path in _cases():
        body = _body(method, path, "x" * length)
        began = time.perf_counter()
        code, details = _raw_call(channel, method, body)
        slowest = max(slowest, time.perf_counter() - began)
        where = f"{method.name} {'.'.join(path)} ({length} chars)"
        assert code in DOCUMENTED, f"{where}: {code} {details[:200]}"
        assert len(details.encode()) <= MAX_MESSAGE_BYTES, where
        if length > MAX_STRING_CHARS and not method.client_streaming:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {code}"
            field = path[-2] if path[-1] == "[]" else path[-1]
            assert field in details and "at most" in details, details
        assert _counted(manager, method, code) >= 1, where
    print(f"slowest answer with {length}-character strings: {slowest * 1e3:.1f} ms")


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff\xff", b"\x0a\x05ab", NOT_UTF8, bytes(range(256))],
    ids=["bad tag", "truncated", "not utf-8", "random"],
)
def test_bodies_that_are_not_protobuf_are_invalid_argument_naming_the_type(
    served: tuple, body: bytes
) -> None:
    _, manager, channel = served
    for method in METHODS:
        sent = body
        if body == NOT_UTF8:  # into the request's first string field, where there is one
            fields = method.input_type.fields
            strings = [f for f in fields if f.type == FieldDescriptor.TYPE_STRING]
            if not strings:
                continue
            sent = bytes([strings[0].number << 3 | 2]) + NOT_UTF8[1:]
        before = _counted(manager, method, grpc.StatusCode.INVALID_ARGUMENT, least=0)
        code, details = _raw_call(channel, method, sent)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{method.name}: {code} {details}"
        assert method.input_type.name in details and "not valid protobuf" in details
        assert _counted(manager, method, code, least=before + 1) == before + 1


def test_a_malformed_health_check_is_invalid_argument_too(served: tuple) -> None:
    _, _, channel = served
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as caught:
        check(b"\x0a\x02\xff\xfe", timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_", "call"),
    [
        (pb.ListJobsRequest(page_token="9" * 30), "ListJobs"),
        (pb.ListJobsRequest(page_token=str(2**63)), "ListJobs"),
        (pb.ListJobsRequest(page_token="-5"), "ListJobs"),
        (pb.ListJobsRequest(page_token="١٢"), "ListJobs"),  # Arabic-Indic digits
        (pb.ListJobsRequest(page_size=2**31 - 1), "ListJobs"),
        (pb.ListJobsRequest(page_size=-(2**31)), "ListJobs"),
        (pb.StreamMetricsRequest(job_id="nope", after_step=2**63 - 1), "StreamMetrics"),
        (pb.StreamMetricsRequest(job_id="nope", after_step=-(2**63)), "StreamMetrics"),
        (pb.GetWeightsRequest(job_id="nope", format=12345), "GetWeights"),
        (pb.ListJobsRequest(state=777), "ListJobs"),
        (spb.ListSweepsRequest(page_token="9" * 30), "ListSweeps"),
        (spb.ListSweepsRequest(page_token="-5"), "ListSweeps"),
        (spb.ListSweepsRequest(page_size=-(2**31), state=777), "ListSweeps"),
        (spb.StreamSweepRequest(sweep_id="nope", after_seq=2**63 - 1), "StreamSweep"),
        (spb.StreamSweepRequest(sweep_id="nope", after_seq=-(2**63)), "StreamSweep"),
        (
            spb.SubmitSweepRequest(
                spec=spb.SweepSpec(max_trials=-(2**31), parallel_trials=2**31 - 1, seed=-1)
            ),
            "SubmitSweep",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_out_of_range_numbers_get_documented_codes(
    served: tuple, request_: Message, call: str
) -> None:
    _, _, channel = served
    method = next(m for m in METHODS if m.name == call)
    code, details = _raw_call(channel, method, request_.SerializeToString())
    assert code in DOCUMENTED, f"{code}: {details}"


def test_bounds_are_checked_before_items_and_name_the_field() -> None:
    spec = pb.JobSpec()
    for _ in range(MAX_REPEATED + 1):
        spec.layers.add(units=1, activation="relu")
    with pytest.raises(InvalidSpecError, match=rf"^layers has {MAX_REPEATED + 1} items"):
        check_bounds(pb.SubmitJobRequest(spec=spec).spec)
    spec = pb.JobSpec()
    spec.layers.add(activation="r" * (MAX_STRING_CHARS + 1))
    with pytest.raises(InvalidSpecError, match=r"^spec\.layers\[0\]\.activation is 257"):
        check_bounds(pb.SubmitJobRequest(spec=spec))
    check_bounds(pb.SubmitJobRequest(spec=pb.JobSpec(name="n" * MAX_STRING_CHARS)))  # at the bound


@pytest.mark.slow
def test_beyond_the_stream_limit_new_streams_are_refused_at_once_and_health_answers(
    ray_session: None, tmp_path
) -> None:
    manager = JobManager(JobsConfig(storage=tmp_path))
    running = create_server(ServerConfig(port=0, max_streams=3), manager)
    target = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(target)
    try:
        with Client(target) as client:
            job = client.submit(digits_spec(epochs=5000))
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            held = [
                stub.StreamMetrics(pb.StreamMetricsRequest(job_id=job.job_id)) for _ in range(3)
            ]
            for call in held:
                next(call)  # each of the 3 streams is open and holds a slot
            began = time.perf_counter()
            with pytest.raises(grpc.RpcError) as caught:
                next(stub.StreamMetrics(pb.StreamMetricsRequest(job_id=job.job_id), timeout=5))
            refused_after = time.perf_counter() - began
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 streams" in caught.value.details()
            health = health_pb2_grpc.HealthStub(channel)
            began = time.perf_counter()
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            health_after = time.perf_counter() - began
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert client.get(job.job_id).job_id == job.job_id  # unary RPCs are served
            print(f"refused in {refused_after * 1e3:.1f} ms; health in {health_after * 1e3:.1f} ms")
            for call in held:
                call.cancel()
            deadline = time.monotonic() + 10  # the slots come back once the streams end
            while True:
                try:
                    next(stub.StreamMetrics(pb.StreamMetricsRequest(job_id=job.job_id)))
                    break
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "stream slots were never released"
                    time.sleep(0.1)
            client.cancel(job.job_id)
    finally:
        channel.close()
        running.stop(0)
        manager.shutdown()


def test_messages_quote_a_short_prefix_and_stay_under_1000_bytes() -> None:
    from services.api.edge import bounded_message
    from services.errors import quoted

    assert quoted("relu") == "'relu'"
    long = quoted("é" * 10_000)
    assert long.startswith("'" + "é" * 48 + "'") and "(10000 characters)" in long
    cut = bounded_message("é" * 5_000)
    assert len(cut.encode()) <= MAX_MESSAGE_BYTES and cut.endswith("…")
    assert bounded_message("short") == "short"


def test_an_unknown_id_within_the_bound_is_not_found_quoting_a_prefix(served: tuple) -> None:
    _, _, channel = served
    stub = training_pb2_grpc.TrainingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetJob(pb.GetJobRequest(job_id="j" * MAX_STRING_CHARS), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert f"({MAX_STRING_CHARS} characters)" in caught.value.details()
    assert len(caught.value.details()) < 120
