"""The SDK's metrics stream: it asks for batched messages, hands out one event per point,
resumes after the last point of a batch, and still reads a server that sends one
point per message (a server from before batching ignores the request's field)."""

from __future__ import annotations

from collections.abc import Iterator

from bptrain import Client
from bptrain.v1 import training_pb2 as pb

FINAL = pb.StreamMetricsResponse(final=pb.Job(job_id="job-1", step=3, state=pb.SUCCEEDED))


def batch(*steps: int) -> pb.StreamMetricsResponse:
    return pb.StreamMetricsResponse(
        points=pb.MetricPoints(points=[pb.MetricPoint(step=s) for s in steps])
    )


class ScriptedStub:
    """StreamMetrics answers each call with the next scripted list of messages."""

    def __init__(self, *calls: list[pb.StreamMetricsResponse]) -> None:
        self.calls = list(calls)
        self.requests: list[pb.StreamMetricsRequest] = []

    def StreamMetrics(self, request: pb.StreamMetricsRequest) -> Iterator:  # noqa: N802 (gRPC)
        self.requests.append(request)
        return iter(self.calls.pop(0))


def events_from(stub: ScriptedStub) -> list[pb.StreamMetricsResponse]:
    with Client("127.0.0.1:1") as client:  # never dialled: the stub answers
        client._stub = stub
        return list(client.events("job-1", reconnect_for_s=5))


def test_batches_become_one_event_per_point_and_a_resume_starts_after_the_batch() -> None:
    stub = ScriptedStub([batch(1, 2)], [batch(3), FINAL])  # the first stream drops
    events = events_from(stub)
    assert [e.WhichOneof("event") for e in events] == ["point"] * 3 + ["final"]
    assert [e.point.step for e in events[:-1]] == [1, 2, 3]
    assert [r.batched for r in stub.requests] == [True, True]
    assert [r.after_step for r in stub.requests] == [0, 2]


def test_a_server_that_sends_single_points_is_read_as_before() -> None:
    single = [pb.StreamMetricsResponse(point=pb.MetricPoint(step=s)) for s in (1, 2, 3)]
    stub = ScriptedStub(single[:2], [single[2], FINAL])
    events = events_from(stub)
    assert [e.point.step for e in events[:-1]] == [1, 2, 3]
    assert events[-1].final.state == pb.SUCCEEDED
    assert [r.after_step for r in stub.requests] == [0, 2]
