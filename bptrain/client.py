"""`bptrain.Client`: the Python SDK for a bptrain server."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bptrain.channel import (
    BearerToken,
    BptrainError,
    Resumable,
    call,
    follow,
    open_channel,
    raise_from,
)
from bptrain.handle import JobHandle
from bptrain.model import Model
from bptrain.specfile import load_spec_file, spec_from_dict
from bptrain.sweeps import SweepCalls
from bptrain.v1 import sweeps_pb2_grpc, training_pb2_grpc
from bptrain.v1 import training_pb2 as pb

DEFAULT_SERVER = "localhost:50051"
UPLOAD_CHUNK_BYTES = 1024 * 1024
TERMINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)


class Client(SweepCalls):
    """Talks to one bptrain server (jobs here, sweeps: bptrain.sweeps.SweepCalls).

    target: "host:port" (default $BPTRAIN_SERVER, then localhost:50051).
    token: bearer token (default $BPTRAIN_TOKEN). tls_ca: the CA that signed the
    server's certificate (PEM) to connect over TLS; tls_cert/tls_key: this client's
    certificate and key for mutual TLS (defaults $BPTRAIN_TLS_CA, _CERT, _KEY).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.target = target or os.environ.get("BPTRAIN_SERVER") or DEFAULT_SERVER
        self.timeout_s = timeout_s
        token = token if token is not None else os.environ.get("BPTRAIN_TOKEN", "")
        tls_ca = tls_ca or os.environ.get("BPTRAIN_TLS_CA") or None
        tls_cert = tls_cert or os.environ.get("BPTRAIN_TLS_CERT") or None
        tls_key = tls_key or os.environ.get("BPTRAIN_TLS_KEY") or None
        self._channel = open_channel(self.target, tls_ca, tls_cert, tls_key)
        if token:
            self._channel = grpc.intercept_channel(self._channel, BearerToken(token))
        self._stub = training_pb2_grpc.TrainingServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._sweeps = sweeps_pb2_grpc.SweepServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        """Block until the server's health check answers SERVING."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self._health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise BptrainError("UNAVAILABLE", f"no bptrain server at {self.target}")
            time.sleep(0.2)

    def submit(
        self,
        spec: pb.JobSpec | dict | str | Path,
        *,
        submission_id: str = "",
        validate_only: bool = False,
    ) -> JobHandle:
        """Submit a spec: a JobSpec message, a mapping, or a path to a YAML/JSON file.

        `submission_id` makes the call idempotent (a retry returns the same job);
        `validate_only` checks the spec and returns it with defaults, queueing nothing.
        """
        if isinstance(spec, (str, Path)):
            spec = load_spec_file(spec)
        elif isinstance(spec, dict):
            spec = spec_from_dict(spec)
        request = pb.SubmitJobRequest(
            spec=spec, submission_id=submission_id, validate_only=validate_only
        )
        return JobHandle(self, call(self._stub.SubmitJob, request, timeout=self.timeout_s))

    def check_gradients(self, spec: pb.JobSpec | dict | str | Path) -> pb.GradientCheckReport:
        """Check the spec's backprop against finite differences (float64) on the server."""
        if isinstance(spec, (str, Path)):
            spec = load_spec_file(spec)
        elif isinstance(spec, dict):
            spec = spec_from_dict(spec)
        return call(self._stub.CheckGradients, spec, timeout=max(self.timeout_s, 120.0))

    def get(self, job_id: str) -> pb.Job:
        return call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id), timeout=self.timeout_s)

    def list(self, *, state: str | None = None, page_size: int = 50) -> Iterator[pb.Job]:
        """Every job, newest first (fetched page by page); `state` e.g. "RUNNING"."""
        state_value = pb.JobState.Value(state.upper()) if state else pb.JOB_STATE_UNSPECIFIED
        token = ""
        while True:
            request = pb.ListJobsRequest(page_size=page_size, page_token=token, state=state_value)
            page = call(self._stub.ListJobs, request, timeout=self.timeout_s)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def cancel(self, job_id: str) -> pb.Job:
        request = pb.CancelJobRequest(job_id=job_id)
        return call(self._stub.CancelJob, request, timeout=self.timeout_s)

    def events(
        self,
        job_id: str,
        after_step: int = 0,
        *,
        reconnect_for_s: float | None = None,
        on_reconnect: Callable[[str, int], None] | None = None,
    ) -> Iterator[pb.StreamMetricsResponse]:
        """Metric points with step > after_step, then the final job.

        A dropped stream (the server restarting, the network) is resumed after the last
        point seen, with pauses growing from 0.2 s to 5 s, for as long as
        `reconnect_for_s` allows since the last event (None: until the job ends);
        `on_reconnect(status, last step)` is called before each attempt, so a caller
        can show that it is reconnecting. Errors that are not about reaching the
        server (NOT_FOUND, PERMISSION_DENIED, ...) end the stream at once.
        """
        source = Resumable(
            open_after=lambda step: self._stub.StreamMetrics(
                pb.StreamMetricsRequest(job_id=job_id, after_step=step, batched=True)
            ),
            position=_last_step,
            stream="metrics stream",
            unit="step",
            owner="job",
        )
        for event in follow(source, after_step, reconnect_for_s, on_reconnect):
            if event.HasField("final"):
                yield event
            else:  # a batch, or one point from a server without batching
                for point in points_of(event):
                    yield pb.StreamMetricsResponse(point=point)

    def metrics(
        self, job_id: str, after_step: int = 0, *, reconnect_for_s: float | None = None
    ) -> Iterator[pb.MetricPoint]:
        """Only the metric points of `events`."""
        for event in self.events(job_id, after_step, reconnect_for_s=reconnect_for_s):
            if event.HasField("point"):
                yield event.point

    def wait(
        self,
        job_id: str,
        *,
        on_point: Callable[[pb.MetricPoint], None] | None = None,
        on_reconnect: Callable[[str, int], None] | None = None,
        reconnect_for_s: float | None = None,
    ) -> pb.Job:
        """Follow a job to its end, calling `on_point` for each metric point (and
        `on_reconnect` while the server is out of reach; see `events`); returns the job."""
        events = self.events(job_id, reconnect_for_s=reconnect_for_s, on_reconnect=on_reconnect)
        for event in events:
            if event.HasField("point") and on_point is not None:
                on_point(event.point)
            if event.HasField("final"):
                return event.final
        raise AssertionError("unreachable: events() ends with the final job")

    def upload_dataset(self, path: str | Path, *, name: str | None = None) -> pb.Dataset:
        """Upload an .npz with X (N, D) and y (N,) labels or (N, K) targets; returns it.

        Use the returned dataset_id in a spec: ``dataset: {name: uploaded, dataset_id: ...}``.
        """
        path = Path(path)
        header = pb.DatasetHeader(name=name or path.stem, format=pb.DATASET_NPZ)

        def parts() -> Iterator[pb.UploadDatasetRequest]:
            yield pb.UploadDatasetRequest(header=header)
            digest = hashlib.sha256()
            with open(path, "rb") as file:
                while chunk := file.read(UPLOAD_CHUNK_BYTES):
                    digest.update(chunk)
                    yield pb.UploadDatasetRequest(chunk=chunk)
            yield pb.UploadDatasetRequest(sha256=digest.hexdigest())

        if not path.is_file():
            raise BptrainError("INVALID_ARGUMENT", f"{path} is not a file")
        return call(self._stub.UploadDataset, parts(), timeout=max(self.timeout_s, 600.0))

    def list_datasets(self) -> list[pb.Dataset]:
        request = pb.ListDatasetsRequest()
        return list(call(self._stub.ListDatasets, request, timeout=self.timeout_s).datasets)

    def delete_dataset(self, dataset_id: str) -> pb.Dataset:
        request = pb.DeleteDatasetRequest(dataset_id=dataset_id)
        return call(self._stub.DeleteDataset, request, timeout=self.timeout_s)

    def download_weights(
        self, job_id: str, path: str | Path, *, format: str = "npz", latest: bool = False
    ) -> str:
        """Write the job's weights to `path` after checking their sha256; returns it.

        format: "npz" (W1, b1, ... and the architecture), "safetensors" or "onnx".
        latest: for a running job, θ as of its latest step.
        """
        data = self._weights_bytes(job_id, format, latest)
        path = Path(path)
        if path.exists() and not path.is_file():  # a device or pipe (/dev/stdout): write into it
            path.write_bytes(data)
        else:  # a regular file appears whole or not at all
            temporary = path.with_name(path.name + ".part")
            temporary.write_bytes(data)
            os.replace(temporary, path)
        return hashlib.sha256(data).hexdigest()

    def weights(self, job_id: str, *, latest: bool = False) -> dict[str, np.ndarray]:
        """The job's weights: {"W1": (in, out), "b1": (out,), ...} plus "architecture" (JSON).

        latest: for a running job, θ as of its latest step.
        """
        data = self._weights_bytes(job_id, latest=latest)
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    def model(self, job_id: str) -> Model:
        """The trained model, rebuilt here from its weights: ``client.model(id).predict(X)``."""
        return Model.load(self._weights_bytes(job_id))

    def _weights_bytes(self, job_id: str, format: str = "npz", latest: bool = False) -> bytes:
        if format.upper() not in ("NPZ", "SAFETENSORS", "ONNX"):
            raise BptrainError("INVALID_ARGUMENT", "format must be npz, safetensors or onnx")
        request = pb.GetWeightsRequest(
            job_id=job_id, format=pb.WeightsFormat.Value(format.upper()), latest=latest
        )
        digest, parts = hashlib.sha256(), []
        try:
            for chunk in self._stub.GetWeights(request, timeout=max(self.timeout_s, 300.0)):
                if chunk.HasField("data"):
                    digest.update(chunk.data)
                    parts.append(chunk.data)
                elif chunk.trailer.sha256 != digest.hexdigest():
                    raise BptrainError("DATA_LOSS", "weights arrived corrupted (sha256 differs)")
                else:
                    return b"".join(parts)
        except grpc.RpcError as error:
            raise raise_from(error) from None
        raise BptrainError("DATA_LOSS", "the weights stream ended without its sha256")


def points_of(event: pb.StreamMetricsResponse) -> Sequence[pb.MetricPoint]:
    """The metric points a StreamMetrics message carries: a batch's, its one point's, or
    none (the final job)."""
    if event.HasField("points"):
        return event.points.points
    return [event.point] if event.HasField("point") else []


def _last_step(event: pb.StreamMetricsResponse) -> int | None:
    """The metrics stream's cursor after `event`: its last point's step."""
    points = points_of(event)
    return points[-1].step if points else None
