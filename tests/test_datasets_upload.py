"""UploadDataset: train on an upload; bad uploads are refused and leave nothing behind."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from services.api.server import ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig

pytestmark = pytest.mark.slow

MAX_BYTES = 200_000


@pytest.fixture(scope="module")
def served(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    storage = tmp_path_factory.mktemp("uploads")
    manager = JobManager(JobsConfig(storage=storage, max_dataset_bytes=MAX_BYTES))
    running = create_server(ServerConfig(port=0), manager)
    with Client(f"127.0.0.1:{running.port}") as client:
        yield client, storage / "datasets"
    running.stop(0)
    manager.shutdown()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def lying_npz(X: np.ndarray, *, declared_rows: int, y: np.ndarray) -> bytes:
    """An .npz whose X.npy header declares `declared_rows` rows over X's real data."""
    member = io.BytesIO()
    header = {"descr": X.dtype.str, "fortran_order": False, "shape": (declared_rows, X.shape[1])}
    np.lib.format.write_array_header_1_0(member, header)
    member.write(np.ascontiguousarray(X).tobytes())
    labels = io.BytesIO()
    np.save(labels, y)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("X.npy", member.getvalue())
        zipped.writestr("y.npy", labels.getvalue())
    return archive.getvalue()


def blobs(rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=rows)
    X = rng.normal(size=(rows, 4)) + 4.0 * np.eye(3, 4)[y]  # three separable clusters
    return X.astype(np.float32), y


def raw_upload(client: Client, data: bytes, *, sha256: str | None = None, send_digest=True):
    """Send header, chunks and (optionally) a digest by hand, through the raw stub."""

    def parts():
        yield pb.UploadDatasetRequest(header=pb.DatasetHeader(name="raw"))
        for start in range(0, len(data), 4096):
            yield pb.UploadDatasetRequest(chunk=data[start : start + 4096])
        if send_digest:
            yield pb.UploadDatasetRequest(sha256=sha256 or hashlib.sha256(data).hexdigest())

    return client._stub.UploadDataset(parts())


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".upload-"))


def test_upload_then_train_on_it_then_fetch_weights(served: tuple, tmp_path: Path) -> None:
    client, _ = served
    X, y = blobs()
    path = tmp_path / "blobs.npz"
    np.savez(path, X=X, y=y)
    dataset = client.upload_dataset(path)
    assert (dataset.rows, dataset.features, dataset.outputs) == (300, 4, 3)
    assert dataset.task == "classification"
    assert dataset.dataset_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert client.upload_dataset(path).dataset_id == dataset.dataset_id  # stored once
    assert [d.dataset_id for d in client.list_datasets()] == [dataset.dataset_id]

    spec = {
        "dataset": {"name": "uploaded", "dataset_id": dataset.dataset_id},
        "layers": [{"units": 16, "activation": "tanh"}, {"units": 3, "activation": "identity"}],
        "optimizer": {"kind": "adam", "learning_rate": 0.01},
        "batch_size": 32,
        "epochs": 10,
    }
    job = client.submit(spec)
    with pytest.raises(BptrainError) as in_use:
        client.delete_dataset(dataset.dataset_id)
    assert in_use.value.code == "FAILED_PRECONDITION"
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert final.latest.validation_accuracy >= 0.9
    weights = client.weights(job.job_id)
    assert weights["W1"].shape == (4, 16)
    client.delete_dataset(dataset.dataset_id)
    assert client.list_datasets() == []


def test_a_spec_naming_an_unknown_upload_is_not_found(served: tuple) -> None:
    client, _ = served
    spec = {
        "dataset": {"name": "uploaded", "dataset_id": "0" * 64},
        "layers": [{"units": 3, "activation": "identity"}],
    }
    with pytest.raises(BptrainError) as caught:
        client.submit(spec)
    assert caught.value.code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("pickled object array", grpc.StatusCode.INVALID_ARGUMENT, "plain-data"),
        ("truncated stream", grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        ("wrong checksum", grpc.StatusCode.INVALID_ARGUMENT, "sha256 does not match"),
        ("NaN values", grpc.StatusCode.INVALID_ARGUMENT, "X must hold only finite values"),
        ("over quota", grpc.StatusCode.RESOURCE_EXHAUSTED, "200000-byte dataset limit"),
        ("missing y", grpc.StatusCode.INVALID_ARGUMENT, "missing y"),
        ("not an npz", grpc.StatusCode.INVALID_ARGUMENT, "not a readable .npz"),
        ("float labels in 1-D", grpc.StatusCode.INVALID_ARGUMENT, "y must be (N,) integer labels"),
        ("0-d y", grpc.StatusCode.INVALID_ARGUMENT, "y must be 1-D or 2-D, got 0-D"),
        ("3-d y", grpc.StatusCode.INVALID_ARGUMENT, "y must be 1-D or 2-D, got 3-D"),
        ("3-d X", grpc.StatusCode.INVALID_ARGUMENT, "X must be 2-D, got 3-D"),
        ("header declares 2**40 rows", grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset limit"),
        ("header declares fewer rows", grpc.StatusCode.INVALID_ARGUMENT, "more data than"),
        ("header declares more rows", grpc.StatusCode.INVALID_ARGUMENT, "holds only"),
        ("inflates past the quota", grpc.StatusCode.RESOURCE_EXHAUSTED, "200000-byte dataset"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    served: tuple, case: str, code: grpc.StatusCode, words: str
) -> None:
    client, directory = served
    X, y = blobs(rows=50)
    data = npz_bytes(X=X, y=y)
    kwargs: dict = {}
    if case == "pickled object array":
        data = npz_bytes(X=np.array([{"a": 1}] * 50, dtype=object), y=y)
    elif case == "truncated stream":
        kwargs = {"send_digest": False}
    elif case == "wrong checksum":
        kwargs = {"sha256": "0" * 64}
    elif case == "NaN values":
        X[3, 1] = np.nan
        data = npz_bytes(X=X, y=y)
    elif case == "over quota":
        data = npz_bytes(X=np.zeros((10_000, 8), np.float32), y=np.zeros(10_000, np.int64))
    elif case == "missing y":
        data = npz_bytes(X=X)
    elif case == "not an npz":
        data = b"definitely not a zip file" * 10
    elif case == "float labels in 1-D":
        data = npz_bytes(X=X, y=y.astype(np.float32))
    elif case == "0-d y":
        data = npz_bytes(X=X, y=np.array(3))
    elif case == "3-d y":
        data = npz_bytes(X=X, y=y.reshape(50, 1, 1))
    elif case == "3-d X":
        data = npz_bytes(X=X.reshape(50, 2, 2), y=y)
    elif case == "header declares 2**40 rows":
        data = lying_npz(X, declared_rows=2**40, y=y)
    elif case == "header declares fewer rows":
        data = lying_npz(X, declared_rows=40, y=y)
    elif case == "header declares more rows":
        data = lying_npz(X, declared_rows=60, y=y)
    elif case == "inflates past the quota":  # ~10 KB on the wire, 4 MB once decompressed
        buffer = io.BytesIO()
        np.savez_compressed(buffer, X=np.zeros((250_000, 4)), y=np.zeros(250_000, np.int64))
        data = buffer.getvalue()
        assert len(data) < MAX_BYTES // 4
    before = [d.dataset_id for d in client.list_datasets()]
    with pytest.raises(grpc.RpcError) as caught:
        raw_upload(client, data, **kwargs)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert [d.dataset_id for d in client.list_datasets()] == before
    assert leftovers(directory) == []


def test_an_upload_must_start_with_its_header(served: tuple) -> None:
    client, _ = served
    with pytest.raises(grpc.RpcError) as caught:
        client._stub.UploadDataset(iter([pb.UploadDatasetRequest(chunk=b"abc")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("header")
