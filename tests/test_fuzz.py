"""Property-based fuzzing of SubmitJob and SubmitSweep specs and UploadDataset streams over
a real port.

Every answer must be OK or a documented status code; never UNKNOWN or INTERNAL, and
the server keeps answering SERVING.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import sweeps_pb2_grpc, training_pb2_grpc
from bptrain.v1 import training_pb2 as pb
from services.api.server import ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from services.sweeps.manager import SweepManager

pytestmark = pytest.mark.slow

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
INT32 = st.integers(-(2**31), 2**31 - 1)
SMALL = st.one_of(st.integers(-3, 300), INT32)
REAL = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 2.0), st.just(0.0))
WORDS = st.one_of(
    st.sampled_from(["", "relu", "tanh", "sigmoid", "identity", "x" * 300]), st.text(max_size=12)
)


def maybe(strategy):
    return st.one_of(st.none(), strategy)


@st.composite
def job_specs(draw) -> pb.JobSpec:
    spec = pb.JobSpec(name=draw(st.text(max_size=250)))
    for _ in range(draw(st.integers(0, 4))):
        spec.layers.add(units=draw(SMALL), activation=draw(WORDS))
    spec.loss = draw(st.sampled_from(["", "softmax_cross_entropy", "mse", "hinge"]))
    spec.optimizer.kind = draw(st.sampled_from(["", "sgd", "momentum", "adam", "lion"]))
    for name in ("learning_rate", "momentum", "beta1", "beta2", "epsilon", "weight_decay"):
        value = draw(maybe(REAL))
        if value is not None:
            setattr(spec.optimizer, name, value)
    spec.dataset.name = draw(
        st.sampled_from(
            [
                "",
                "digits",
                "synthetic/blobs",
                "synthetic/spirals",
                "synthetic/regression",
                "uploaded",
                "mnist",
            ]
        )
    )
    if draw(st.booleans()):
        spec.dataset.dataset_id = draw(st.text(max_size=70))
    for name, strategy in (("samples", SMALL), ("features", SMALL), ("classes", SMALL)):
        value = draw(maybe(strategy))
        if value is not None:
            setattr(spec.dataset, name, value)
    for name in ("validation_fraction", "noise"):
        value = draw(maybe(REAL))
        if value is not None:
            setattr(spec.dataset, name, value)
    for name in ("batch_size", "epochs", "workers", "eval_every", "staleness", "ps_shards"):
        value = draw(maybe(SMALL))
        if value is not None:
            setattr(spec, name, value)
    for name in ("steps", "seed"):
        value = draw(maybe(st.integers(-(2**63), 2**63 - 1)))
        if value is not None:
            setattr(spec, name, value)
    spec.consistency = draw(st.sampled_from(["", "bsp", "ssp", "asp", "BSP"]))
    spec.compression = draw(st.sampled_from(["", "none", "fp16", "topk", "gzip"]))
    value = draw(maybe(REAL))
    if value is not None:
        spec.topk_fraction = value
    if draw(st.booleans()):
        spec.staleness_aware_lr = draw(st.booleans())
    return spec


def valid_spec() -> pb.JobSpec:
    spec = pb.JobSpec(name="base", loss="softmax_cross_entropy", batch_size=32, epochs=1)
    spec.layers.add(units=16, activation="relu")
    spec.layers.add(units=10, activation="identity")
    spec.dataset.name = "digits"
    spec.optimizer.kind = "adam"
    spec.optimizer.learning_rate = 0.01
    return spec


@st.composite
def near_valid_specs(draw) -> pb.JobSpec:
    """A valid spec with one field changed: reaches the checks behind the first one."""
    spec = valid_spec()
    field = draw(
        st.sampled_from(["batch_size", "epochs", "workers", "steps", "seed", "eval_every"])
    )
    value = draw(
        st.integers(-5, 2**31 - 1) if field not in ("steps", "seed") else st.integers(-5, 2**62)
    )
    setattr(spec, field, value)
    if draw(st.booleans()):
        spec.layers[0].units = draw(st.integers(-2, 70_000))
    if draw(st.booleans()):
        spec.optimizer.learning_rate = draw(REAL)
    return spec


@pytest.fixture(scope="module")
def channel(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    config = JobsConfig(storage=tmp_path_factory.mktemp("fuzz"), max_dataset_bytes=64_000)
    manager = JobManager(config)
    sweeps = SweepManager(manager)
    running = create_server(ServerConfig(port=0), manager, sweeps)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    running.stop(0)
    sweeps.shutdown()
    manager.shutdown()


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=st.one_of(job_specs(), near_valid_specs()))
def test_fuzzed_specs_get_ok_or_a_documented_code(channel: grpc.Channel, spec: pb.JobSpec) -> None:
    stub = training_pb2_grpc.TrainingServiceStub(channel)
    try:
        answer = stub.SubmitJob(pb.SubmitJobRequest(spec=spec, validate_only=True), timeout=10)
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, (error.code(), error.details())
        assert "Traceback" not in (error.details() or "")
    else:
        assert answer.job_id == "" and answer.spec.layers  # valid: defaults filled, not queued


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.bool_, np.uint16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40),
    elements=None,
)


@st.composite
def uploads(draw) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(["arrays", "bytes", "truncated", "bad-digest"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=2000))
    else:
        names = draw(st.sets(st.sampled_from(["X", "y", "z"]), max_size=3))
        data = npz({name: draw(ARRAYS) for name in names})
    digest = hashlib.sha256(data).hexdigest()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "bad-digest":
        digest = draw(st.sampled_from(["", "0" * 64, digest[::-1]]))
    return data, (None if draw(st.booleans()) and kind == "truncated" else digest)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(upload=uploads(), name=st.text(max_size=220))
def test_fuzzed_uploads_get_ok_or_a_documented_code(
    channel: grpc.Channel, upload: tuple[bytes, str | None], name: str
) -> None:
    data, digest = upload

    def parts():
        yield pb.UploadDatasetRequest(header=pb.DatasetHeader(name=name))
        for start in range(0, len(data), 700):
            yield pb.UploadDatasetRequest(chunk=data[start : start + 700])
        if digest is not None:
            yield pb.UploadDatasetRequest(sha256=digest)

    stub = training_pb2_grpc.TrainingServiceStub(channel)
    try:
        stub.UploadDataset(parts(), timeout=10)
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, (error.code(), error.details())


PATHS = st.one_of(
    st.sampled_from(
        [
            "optimizer.learning_rate",
            "layers[0].units",
            "layers[1].units",
            "layers[0].dropout",
            "layers[7].dropout",
            "layers[0].activation",
            "batch_size",
            "optimizer.kind",
            "staleness_aware_lr",
            "dataset.noise",
            "dataset.name",
            "name",
            "layers.units",
            "",
        ]
    ),
    st.text(max_size=30),
)
NUMBERS = st.lists(REAL, max_size=5)


@st.composite
def sweep_parameters(draw) -> spb.SweepParameter:
    parameter = spb.SweepParameter(path=draw(PATHS))
    domain = draw(st.sampled_from(["grid", "choice", "uniform", "log_uniform", "integer", None]))
    if domain in ("grid", "choice"):
        values = getattr(parameter, domain)
        values.numbers.extend(draw(NUMBERS))
        values.texts.extend(draw(st.lists(WORDS, max_size=3)))
    elif domain == "integer":
        parameter.integer.low, parameter.integer.high = draw(INT32), draw(INT32)
        if draw(st.booleans()):
            parameter.integer.step = draw(st.integers(-(2**63), 2**63 - 1))
    elif domain is not None:
        getattr(parameter, domain).low, getattr(parameter, domain).high = draw(REAL), draw(REAL)
    return parameter


@st.composite
def sweep_specs(draw) -> spb.SweepSpec:
    spec = spb.SweepSpec(name=draw(st.text(max_size=250)))
    if draw(st.booleans()):
        spec.base.CopyFrom(draw(st.one_of(st.just(valid_spec()), near_valid_specs(), job_specs())))
    spec.parameters.extend(draw(st.lists(sweep_parameters(), max_size=4)))
    spec.metric = draw(
        st.sampled_from(["", "validation_accuracy", "validation_loss", "loss", "f1"])
    )
    spec.direction = draw(st.sampled_from(["", "maximize", "minimize", "up"]))
    spec.sampler = draw(st.sampled_from(["", "random", "tpe", "grid", "bayes"]))
    spec.scheduler.kind = draw(st.sampled_from(["", "none", "asha", "hyperband"]))
    for name, strategy in (("max_trials", SMALL), ("parallel_trials", SMALL)):
        value = draw(maybe(strategy))
        if value is not None:
            setattr(spec, name, value)
    for name in ("grace_period", "reduction_factor"):
        value = draw(maybe(SMALL))
        if value is not None:
            setattr(spec.scheduler, name, value)
    if draw(st.booleans()):
        spec.seed = draw(st.integers(-(2**63), 2**63 - 1))
    return spec


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=sweep_specs())
def test_fuzzed_sweep_specs_get_ok_or_a_documented_code(
    channel: grpc.Channel, spec: spb.SweepSpec
) -> None:
    stub = sweeps_pb2_grpc.SweepServiceStub(channel)
    try:
        answer = stub.SubmitSweep(spb.SubmitSweepRequest(spec=spec, validate_only=True), timeout=10)
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, (error.code(), error.details())
        assert "Traceback" not in (error.details() or "")
    else:
        assert answer.sweep_id == "" and answer.spec.parameters  # valid: defaults filled
