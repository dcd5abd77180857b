"""The engine inside the service: worker options, norms, dropout per step, dtypes, devices,
and the parameter server's schedule and clipping."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from services.paramserver.optimizers import LRSchedule, OptimizerConfig, learning_rate_at
from services.paramserver.server import ParameterServer
from tests.engine import gradient_worker, parameter_server
from worker.dropout import step_rng
from worker.gradient_worker import GradientResult, GradientWorker
from worker.model import MLP
from worker.sampling import epoch_order

SIZES = [5, 8, 6, 3]
ACTIVATIONS = ["relu", "tanh", "identity"]
N = 24


def shard(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, SIZES[0])).astype(np.float32), rng.integers(0, 3, size=N)


def make_worker(**changes) -> GradientWorker:
    X, y = shard()
    fields = {
        "sizes": SIZES,
        "activations": ACTIVATIONS,
        "loss": "softmax_cross_entropy",
        "local_batch": 6,
        "seed": 11,
        "worker_index": 2,
    }
    return gradient_worker(X, y, **{**fields, **changes})


def make_server(**changes) -> ParameterServer:
    fields = {
        "sizes": SIZES,
        "activations": ACTIVATIONS,
        "optimizer": OptimizerConfig(kind="sgd", learning_rate=0.1),
        "workers": 1,
        "seed": 0,
    }
    return parameter_server(**{**fields, **changes})


def test_result_carries_the_per_layer_gradient_norms() -> None:
    theta = make_server().export()[1]
    result = make_worker().compute_gradients(theta, 0, 1)
    tensors = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy").layout.to_dict(result.gradient)
    expected = [float(np.linalg.norm(tensors[f"W{layer}"])) for layer in (1, 2, 3)]
    assert len(result.gradient_norms) == 3
    assert all(isinstance(norm, float) for norm in result.gradient_norms)
    assert list(result.gradient_norms) == pytest.approx(expected, rel=1e-5)


def test_result_defaults_keep_old_constructors_working() -> None:
    result = GradientResult(gradient=np.zeros(3), samples=1, loss=0.0)
    assert result.gradient_norms == ()


def test_model_options_reach_the_workers_model() -> None:
    theta = make_server().export()[1]
    X, y = shard()
    options = {"l2": 0.3, "label_smoothing": 0.2}
    result = make_worker(**options).compute_gradients(theta, 0, 0)
    rows = epoch_order(N, seed=11, epoch=0, worker_index=2)[:6]
    model = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy", **options)
    loss, grad = model.loss_and_gradient(theta, X[rows], y[rows])
    np.testing.assert_allclose(result.gradient, grad, rtol=1e-6, atol=1e-7)
    assert result.loss == pytest.approx(loss, rel=1e-6)


def test_dropout_masks_repeat_per_step_and_differ_between_steps() -> None:
    theta = make_server().export()[1]
    worker = make_worker(dropout=0.5)
    first = worker.compute_gradients(theta, 1, 2)
    worker.compute_gradients(theta, 0, 0)
    again = worker.compute_gradients(theta, 1, 2)
    np.testing.assert_array_equal(first.gradient, again.gradient)
    # The masks are the ones `step_rng(seed, worker, epoch, index)` draws.
    X, y = shard()
    rows = epoch_order(N, seed=11, epoch=1, worker_index=2)[12:18]
    model = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy", dropout=0.5)
    _, grad = model.loss_and_gradient(theta, X[rows], y[rows], rng=step_rng(11, 2, 1, 2))
    np.testing.assert_allclose(first.gradient, grad, rtol=1e-6, atol=1e-7)
    _, no_dropout = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy").loss_and_gradient(
        theta, X[rows], y[rows]
    )
    assert not np.allclose(first.gradient, no_dropout)


def test_a_float64_theta_gives_a_float64_gradient() -> None:
    server = make_server(dtype="float64")
    theta = server.export()[1]
    assert theta.dtype == np.float64
    result = make_worker().compute_gradients(theta, 0, 0)
    assert result.gradient.dtype == np.float64
    stats, after = server.apply_gradients(result)
    assert after.dtype == np.float64 and stats.version == 1


def test_cpu_workers_need_no_extra_ray_resources_and_gpu_workers_one_gpu() -> None:
    assert GradientWorker.actor_options("cpu") == {}
    assert GradientWorker.actor_options("gpu") == {"num_gpus": 1}
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        GradientWorker.actor_options("tpu")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_a_gpu_worker_without_cupy_names_the_package() -> None:
    with pytest.raises(RuntimeError, match="pip install cupy-cuda12x"):
        make_worker(device="gpu")


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        make_worker(device="tpu")


# ---------------------------------------------------------------- parameter server


def test_server_applies_the_schedules_rate_and_reports_it() -> None:
    schedule = LRSchedule(kind="step", warmup_steps=2, step_size=1, gamma=0.5)
    server = make_server(schedule=schedule)
    grad = np.ones_like(server.export()[1])
    rates = []
    for _ in range(4):
        before = server.export()[1]
        stats, after = server.apply_gradients(GradientResult(gradient=grad, samples=1, loss=0.0))
        np.testing.assert_allclose(before - after, stats.learning_rate, rtol=1e-5)
        rates.append(stats.learning_rate)
    assert rates == pytest.approx([learning_rate_at(t, 0.1, schedule) for t in (1, 2, 3, 4)])
    assert rates == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_server_clips_by_global_norm_and_reports_the_norm_before_clipping() -> None:
    server = make_server(optimizer=OptimizerConfig(kind="sgd", learning_rate=1.0, clip_norm=0.5))
    theta0 = server.export()[1].astype(np.float64)
    grad = np.zeros_like(server.export()[1])
    grad[:2] = [3.0, 4.0]
    stats, theta = server.apply_gradients(GradientResult(gradient=grad, samples=1, loss=0.0))
    assert stats.gradient_norm == pytest.approx(5.0)
    np.testing.assert_allclose(theta0 - theta, 0.1 * grad, atol=1e-6)  # g · 0.5 / 5


def test_server_with_he_init_everywhere() -> None:
    server = make_server(init="he", sizes=[400, 300, 3], activations=["tanh", "identity"])
    (W1, _), _ = server.layout.views(server.export()[1])
    assert W1.std() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        make_server(dtype="float16")
