"""GetWeights in NPZ, SAFETENSORS and ONNX: the same model three ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from safetensors.numpy import load_file

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from services.datasets import load_dataset
from tests.conftest import digits_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(server: tuple) -> str:
    with Client(f"127.0.0.1:{server[0].port}") as client:
        layers = [
            {"units": 32, "activation": "tanh"},
            {"units": 16, "activation": "sigmoid"},
            {"units": 10, "activation": "identity"},
        ]
        job = client.submit(digits_spec(layers=layers, epochs=2))
        assert job.wait().state == pb.SUCCEEDED
        return job.job_id


def numpy_forward(arrays: dict[str, np.ndarray], activations: list[str], X: np.ndarray):
    act = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "identity": lambda z: z}
    a = X.astype(np.float64)
    for index, name in enumerate(activations, start=1):
        a = act[name](a @ arrays[f"W{index}"] + arrays[f"b{index}"])
    return a


def test_safetensors_holds_the_same_tensors_and_the_architecture(
    client: Client, trained: str, tmp_path: Path
) -> None:
    npz = client.weights(trained)
    path = tmp_path / "model.safetensors"
    client.download_weights(trained, path, format="safetensors")
    tensors = load_file(path)
    assert sorted(tensors) == ["W1", "W2", "W3", "b1", "b2", "b3"]
    for name, array in tensors.items():
        np.testing.assert_array_equal(array, npz[name])
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as file:
        metadata = json.loads(file.metadata()["architecture"])
    assert metadata["activations"] == ["tanh", "sigmoid", "identity"]
    assert metadata["sizes"] == [64, 32, 16, 10]


def test_onnx_passes_the_checker_and_matches_numpy(
    client: Client, trained: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    client.download_weights(trained, path, format="onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # variable batch size
    evaluator = ReferenceEvaluator(model)
    npz = client.weights(trained)
    X = load_dataset("digits").X_test
    for rows in (X[:1], X):
        (onnx_out,) = evaluator.run(None, {"x": rows})
        expected = numpy_forward(npz, ["tanh", "sigmoid", "identity"], rows)
        assert onnx_out.shape == expected.shape
        assert np.max(np.abs(onnx_out - expected)) <= 1e-5


def test_an_unknown_format_is_invalid_argument(
    client: Client, trained: str, tmp_path: Path
) -> None:
    with pytest.raises(BptrainError) as caught:
        client.download_weights(trained, tmp_path / "model.pkl", format="pickle")
    assert caught.value.code == "INVALID_ARGUMENT"


def test_the_sdk_rebuilds_the_model_and_predicts_like_numpy(client: Client, trained: str) -> None:
    model = client.model(trained)
    X = load_dataset("digits").X_test
    expected = numpy_forward(client.weights(trained), ["tanh", "sigmoid", "identity"], X)
    assert np.max(np.abs(model.predict(X) - expected)) <= 1e-5
    assert model.predict_classes(X).shape == (len(X),)
    with pytest.raises(ValueError, match=r"X must be \(N, 64\)"):
        model.predict(np.zeros((2, 3)))


def test_downloading_to_a_device_writes_into_it_and_leaves_it_a_device(
    client: Client, trained: str
) -> None:
    import os
    import stat

    client.download_weights(trained, os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
