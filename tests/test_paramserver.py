"""GradientWorker and ParameterServer as plain classes: who reads which rows, how g is averaged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.paramserver.optimizers import OptimizerConfig
from services.paramserver.server import ParameterServer
from tests.engine import gradient_worker, parameter_server
from worker.gradient_worker import GradientResult, GradientWorker
from worker.model import MLP
from worker.sampling import epoch_order

SIZES = [3, 4, 2]  # D = 3, H = 4, C = 2
ACTIVATIONS = ["tanh", "identity"]
P = 3 * 4 + 4 + 4 * 2 + 2  # 26 parameters: W1 (3, 4), b1 (4,), W2 (4, 2), b2 (2,)
N = 20  # rows in the worker's shard


def shard(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, SIZES[0])).astype(np.float32)  # (N, D)
    y = rng.integers(0, SIZES[-1], size=N)  # (N,)
    return X, y


def make_worker(X: np.ndarray, y: np.ndarray, local_batch: int = 4, **changes) -> GradientWorker:
    fields = {
        "sizes": SIZES,
        "activations": ACTIVATIONS,
        "loss": "softmax_cross_entropy",
        "local_batch": local_batch,
        "seed": 7,
        "worker_index": 1,
    }
    return gradient_worker(X, y, **{**fields, **changes})


def make_server(learning_rate: float = 0.1, workers: int = 2) -> ParameterServer:
    return parameter_server(
        sizes=SIZES,
        activations=ACTIVATIONS,
        optimizer=OptimizerConfig(kind="sgd", learning_rate=learning_rate),
        workers=workers,
        seed=0,
    )


@pytest.fixture
def theta() -> np.ndarray:
    return make_server().export()[1]


# --- GradientWorker ------------------------------------------------------------------------


@pytest.mark.parametrize(("epoch", "index"), [(0, 0), (0, 3), (2, 1)])
def test_worker_gradient_is_the_model_gradient_on_the_rows_epoch_order_picks(
    theta: np.ndarray, epoch: int, index: int
) -> None:
    X, y = shard()
    worker = make_worker(X, y, local_batch=4)
    rows = epoch_order(N, seed=7, epoch=epoch, worker_index=1)[index * 4 : (index + 1) * 4]

    result = worker.compute_gradients(theta, epoch, index)
    loss, grad = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy").loss_and_gradient(
        theta, X[rows], y[rows]
    )

    assert result.samples == 4
    assert result.gradient.shape == (P,)
    assert result.gradient.dtype == np.float32
    np.testing.assert_allclose(result.gradient, grad, rtol=1e-6, atol=1e-7)
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert isinstance(result.loss, float)


def test_worker_batches_of_one_epoch_are_different_rows(theta: np.ndarray) -> None:
    X, y = shard()
    worker = make_worker(X, y, local_batch=4)
    model = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy")

    first = worker.compute_gradients(theta, 0, 0)
    second = worker.compute_gradients(theta, 0, 1)
    _, unshuffled = model.loss_and_gradient(theta, X[:4], y[:4])

    assert not np.allclose(first.gradient, second.gradient)
    # The batch is drawn from the epoch's shuffle, not the shard's first rows.
    assert not np.allclose(first.gradient, unshuffled)


def test_worker_follows_a_new_epoch_and_can_return_to_an_old_one(theta: np.ndarray) -> None:
    X, y = shard()
    worker = make_worker(X, y, local_batch=5)

    before = worker.compute_gradients(theta, 0, 2)
    worker.compute_gradients(theta, 1, 2)
    after = worker.compute_gradients(theta, 0, 2)

    np.testing.assert_array_equal(before.gradient, after.gradient)
    assert before.loss == after.loss


def test_worker_never_changes_theta(theta: np.ndarray) -> None:
    X, y = shard()
    before = theta.copy()

    make_worker(X, y).compute_gradients(theta, 0, 0)

    np.testing.assert_array_equal(theta, before)


def test_worker_reads_what_is_left_at_an_epochs_last_batch_and_no_further(
    theta: np.ndarray,
) -> None:
    X, y = shard()
    worker = make_worker(X, y, local_batch=6)  # 20 rows: batches 0..2 are full, 3 has 2

    assert worker.compute_gradients(theta, 0, 2).samples == 6
    assert worker.compute_gradients(theta, 0, 3).samples == 2
    with pytest.raises(ValueError, match="batch 4 of epoch 0 runs past the shard's end"):
        worker.compute_gradients(theta, 0, 4)


def test_worker_with_no_rows_left_at_the_epochs_end_sends_a_zero_gradient(
    theta: np.ndarray,
) -> None:
    X, y = shard()
    worker = make_worker(X, y, local_batch=5, steps_per_epoch=5)  # 20 rows: 4 steps + 1 empty

    result = worker.compute_gradients(theta, 0, 4)

    assert result.samples == 0
    assert result.loss == 0.0
    assert not result.gradient.any()


def test_worker_rejects_x_and_y_of_different_lengths() -> None:
    X, y = shard()

    with pytest.raises(ValueError, match=f"X has {N} rows but y has {N - 1}"):
        make_worker(X, y[:-1])


@pytest.mark.parametrize("local_batch", [0, -1, N + 1])
def test_worker_rejects_a_local_batch_outside_its_shard(local_batch: int) -> None:
    X, y = shard()

    with pytest.raises(ValueError, match=rf"local_batch must be in \[1, {N}\], got {local_batch}"):
        make_worker(X, y, local_batch=local_batch)


def test_worker_with_the_whole_shard_as_its_batch_uses_every_row(theta: np.ndarray) -> None:
    X, y = shard()
    worker = make_worker(X, y, local_batch=N)

    result = worker.compute_gradients(theta, 0, 0)
    loss, grad = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy").loss_and_gradient(theta, X, y)

    # The mean over a permutation of all rows is the mean over the rows in order.
    np.testing.assert_allclose(result.gradient, grad, rtol=1e-5, atol=1e-6)
    assert result.loss == pytest.approx(loss, rel=1e-5)


def test_worker_with_a_regression_loss_reads_target_rows(theta: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((N, 3)).astype(np.float32)
    Y = rng.standard_normal((N, 2)).astype(np.float32)  # (N, K)
    worker = make_worker(X, Y, loss="mse", local_batch=5)
    rows = epoch_order(N, seed=7, epoch=0, worker_index=1)[5:10]

    result = worker.compute_gradients(theta, 0, 1)
    loss, grad = MLP(SIZES, ACTIVATIONS, "mse").loss_and_gradient(theta, X[rows], Y[rows])

    np.testing.assert_allclose(result.gradient, grad, rtol=1e-6, atol=1e-7)
    assert result.loss == pytest.approx(loss, rel=1e-6)


# --- ParameterServer -----------------------------------------------------------------------


def two_gradients() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    g1 = rng.standard_normal(P).astype(np.float32)
    g2 = rng.standard_normal(P).astype(np.float32)
    return g1, g2


def test_server_starts_at_version_zero_with_the_seeded_theta() -> None:
    server = make_server()
    expected = server.layout.init_theta(ACTIVATIONS, 0)

    assert server.version == 0
    assert server.export()[1].shape == (P,)
    assert server.export()[1].dtype == np.float32
    np.testing.assert_array_equal(server.export()[1], expected)


def test_apply_gradients_averages_by_sample_count_then_takes_one_sgd_step() -> None:
    server = make_server(learning_rate=0.1)
    theta0 = server.export()[1].astype(np.float64)
    g1, g2 = two_gradients()

    stats, theta = server.apply_gradients(
        GradientResult(gradient=g1, samples=1, loss=2.0),
        GradientResult(gradient=g2, samples=3, loss=4.0),
    )

    g = (1 * g1.astype(np.float64) + 3 * g2.astype(np.float64)) / 4
    expected = theta0 - 0.1 * g
    np.testing.assert_allclose(theta, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(server.export()[1], expected, rtol=1e-6, atol=1e-6)
    # An unweighted mean would land elsewhere: the weighting is what is being checked.
    assert not np.allclose(theta, theta0 - 0.1 * (g1 + g2) / 2, atol=1e-3)
    assert theta.dtype == np.float32
    assert stats.samples == 4
    assert stats.learning_rate == 0.1


def test_reported_loss_is_the_sample_weighted_mean() -> None:
    server = make_server()
    g1, g2 = two_gradients()

    stats, _ = server.apply_gradients(
        GradientResult(gradient=g1, samples=1, loss=2.0),
        GradientResult(gradient=g2, samples=3, loss=4.0),
    )

    assert stats.loss == pytest.approx((1 * 2.0 + 3 * 4.0) / 4)  # 3.5, not the plain mean 3.0


def test_version_goes_up_by_one_per_call() -> None:
    server = make_server()
    g1, g2 = two_gradients()
    results = (
        GradientResult(gradient=g1, samples=2, loss=1.0),
        GradientResult(gradient=g2, samples=2, loss=1.0),
    )

    versions = [server.apply_gradients(*results)[0].version for _ in range(3)]

    assert versions == [1, 2, 3]
    assert server.version == 3


def test_each_step_averages_only_its_own_gradients() -> None:
    server = make_server(learning_rate=0.5)
    theta0 = server.export()[1].astype(np.float64)
    g1, g2 = two_gradients()

    server.apply_gradients(
        GradientResult(gradient=g1, samples=1, loss=0.0),
        GradientResult(gradient=g1, samples=1, loss=0.0),
    )
    _, theta = server.apply_gradients(
        GradientResult(gradient=g2, samples=1, loss=0.0),
        GradientResult(gradient=g2, samples=1, loss=0.0),
    )

    expected = theta0 - 0.5 * g1.astype(np.float64) - 0.5 * g2.astype(np.float64)
    np.testing.assert_allclose(theta, expected, rtol=1e-6, atol=1e-6)


def test_apply_gradients_never_changes_the_workers_gradients() -> None:
    server = make_server()
    g1, g2 = two_gradients()
    before = (g1.copy(), g2.copy())

    server.apply_gradients(
        GradientResult(gradient=g1, samples=1, loss=0.0),
        GradientResult(gradient=g2, samples=3, loss=0.0),
    )

    np.testing.assert_array_equal(g1, before[0])
    np.testing.assert_array_equal(g2, before[1])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_call_with_the_wrong_number_of_results_is_rejected_and_changes_nothing(
    count: int,
) -> None:
    server = make_server(workers=2)
    theta0 = server.export()[1]
    g1, _ = two_gradients()
    results = [GradientResult(gradient=g1, samples=1, loss=1.0)] * count

    with pytest.raises(ValueError, match=f"bsp needs 2 gradients per step, got {count}"):
        server.apply_gradients(*results)

    assert server.version == 0
    np.testing.assert_array_equal(server.export()[1], theta0)


def test_export_returns_the_step_with_a_copy_of_theta() -> None:
    server = make_server()
    step, exported = server.export()
    expected = exported.copy()

    exported += 100.0

    assert step == 0

    np.testing.assert_array_equal(server.export()[1], expected)


def test_theta_returned_by_apply_gradients_is_a_copy() -> None:
    server = make_server()
    g1, g2 = two_gradients()
    _, theta = server.apply_gradients(
        GradientResult(gradient=g1, samples=1, loss=0.0),
        GradientResult(gradient=g2, samples=1, loss=0.0),
    )
    expected = theta.copy()

    theta[:] = 0.0

    np.testing.assert_array_equal(server.export()[1], expected)


def test_gradient_norms_are_the_frobenius_norms_of_each_averaged_w() -> None:
    server = make_server()
    g1, g2 = two_gradients()

    stats, _ = server.apply_gradients(
        GradientResult(gradient=g1, samples=1, loss=0.0),
        GradientResult(gradient=g2, samples=3, loss=0.0),
    )

    g = (1 * g1.astype(np.float64) + 3 * g2.astype(np.float64)) / 4
    dW1 = g[0:12]  # W1 (3, 4); b1 is g[12:16]
    dW2 = g[16:24]  # W2 (4, 2); b2 is g[24:26]
    expected = [math.sqrt(float(np.sum(dW1**2))), math.sqrt(float(np.sum(dW2**2)))]
    assert len(stats.gradient_norms) == 2  # one per layer
    assert all(isinstance(norm, float) for norm in stats.gradient_norms)
    assert list(stats.gradient_norms) == pytest.approx(expected, rel=1e-5)


def test_a_worker_and_the_server_together_take_a_step_that_lowers_the_loss() -> None:
    X, y = shard()
    server = make_server(learning_rate=0.5, workers=1)
    worker = make_worker(X, y, local_batch=N)
    model = MLP(SIZES, ACTIVATIONS, "softmax_cross_entropy")
    theta0 = server.export()[1]

    stats, theta = server.apply_gradients(worker.compute_gradients(theta0, 0, 0))

    assert stats.loss == pytest.approx(model.compute_loss(theta0, X, y), rel=1e-5)
    assert model.compute_loss(theta, X, y) < stats.loss
