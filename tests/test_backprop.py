"""Backprop checked against the math: finite differences, closed forms, naive re-computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worker.activations import ACTIVATIONS, get_activation
from worker.gradcheck import gradcheck, numerical_gradient, random_targets, rel_error
from worker.losses import (
    LOSSES,
    accuracy,
    get_loss,
    mean_squared_error,
    softmax_cross_entropy,
)
from worker.model import MLP

ACTIVATION_NAMES = sorted(ACTIVATIONS)
LOSS_NAMES = sorted(LOSSES)
KINK = 1e-3  # central differences with h = 1e-5 never cross relu's kink when every |z| > this


def _targets(loss: str, rng: np.random.Generator, N: int, C: int) -> np.ndarray:
    return random_targets(loss, rng, N, C)


def _kink_free_problem(model: MLP, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A float64 (θ, x, y) with nonzero biases and every |z| > KINK (first such seed)."""
    D, C = model.sizes[0], model.sizes[-1]
    for seed in range(100):
        rng = np.random.default_rng(seed)
        theta = model.layout.init_theta(model.activation_names, seed, dtype=np.float64)
        theta += 0.1 * rng.standard_normal(theta.shape)  # biases off zero too
        x = rng.standard_normal((N, D))
        if all(np.abs(z).min() > KINK for z, _ in model.layer_outputs(theta, x, keep_z=True)):
            return theta, x, _targets(model.loss_name, rng, N, C)
    raise AssertionError("no kink-free seed in 100 tries")


# ---------------------------------------------------------------- activations


def test_registry_has_no_standalone_softmax() -> None:
    assert ACTIVATION_NAMES == [
        "elu",
        "gelu",
        "identity",
        "leaky_relu",
        "relu",
        "sigmoid",
        "softplus",
        "tanh",
    ]
    with pytest.raises(ValueError, match=r"unknown activation 'softmax'; expected one of"):
        get_activation("softmax")


def test_activation_values_match_their_definitions() -> None:
    z = np.linspace(-6.0, 6.0, 49)
    np.testing.assert_array_equal(get_activation("relu").forward(z), np.where(z > 0, z, 0.0))
    np.testing.assert_allclose(get_activation("tanh").forward(z), np.tanh(z), rtol=1e-15)
    np.testing.assert_allclose(
        get_activation("sigmoid").forward(z), 1.0 / (1.0 + np.exp(-z)), rtol=1e-14
    )
    np.testing.assert_array_equal(get_activation("identity").forward(z), z)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_grad_matches_finite_differences(name: str) -> None:
    activation = get_activation(name)
    z = np.linspace(-3.0, 3.0, 40) + 0.01  # never exactly at relu's kink
    h = 1e-6
    numeric = (activation.forward(z + h) - activation.forward(z - h)) / (2 * h)
    analytic = activation.grad(z, activation.forward(z))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_keeps_dtype_and_writes_out(name: str) -> None:
    activation = get_activation(name)
    z = np.linspace(-2.0, 2.0, 12, dtype=np.float32).reshape(3, 4)
    a = activation.forward(z)
    assert a.dtype == np.float32 and a.shape == z.shape
    assert activation.grad(z, a).dtype == np.float32
    out = np.empty_like(z)
    assert activation.forward(z, out=out) is out
    np.testing.assert_array_equal(out, a)


def test_sigmoid_is_stable_for_large_inputs() -> None:
    z = np.array([-1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        a = get_activation("sigmoid").forward(z)
    assert np.all(np.isfinite(a))
    assert a[0] == 0.0 and a[-1] == 1.0 and a[3] == 0.5
    assert 0.0 < a[2] < 1e-17  # e^{−40}: kept, not rounded away by 1 − σ(40)


# ---------------------------------------------------------------- losses


def _naive_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """−mean log softmax, one sample at a time with the math module: the independent way."""
    total = 0.0
    for row, label in zip(logits.tolist(), y.tolist(), strict=True):
        total -= math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))
    return total / len(y)


def test_softmax_cross_entropy_matches_naive_computation() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5)) * 3
    y = rng.integers(0, 5, size=7)
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(_naive_cross_entropy(logits, y), rel=1e-12)

    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # (N, C)
    onehot = np.eye(5)[y]  # (N, C)
    np.testing.assert_allclose(dlogits, (p - onehot) / 7, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-15)


def test_softmax_cross_entropy_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 2])
    _, dlogits = softmax_cross_entropy(logits, y)
    numeric = numerical_gradient(lambda t: softmax_cross_entropy(t, y)[0], logits)
    assert rel_error(dlogits, numeric) < 1e-8


def test_softmax_cross_entropy_is_stable_for_huge_logits() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, size=6)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        loss_base, grad_base = softmax_cross_entropy(base, y)
        loss_shifted, grad_shifted = softmax_cross_entropy(base + 1e4, y)
        wide = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4]], dtype=np.float32)
        loss_wide, grad_wide = softmax_cross_entropy(wide, np.array([0, 1]))
    assert loss_shifted == pytest.approx(loss_base, rel=1e-9)
    np.testing.assert_allclose(grad_shifted, grad_base, atol=1e-12)
    assert loss_wide == pytest.approx((0.0 + 1e4) / 2)  # −log p = 0 for row 0, 1e4 for row 1
    assert grad_wide.dtype == np.float32 and np.all(np.isfinite(grad_wide))
    np.testing.assert_allclose(grad_wide.sum(axis=1), 0.0, atol=1e-7)


def test_softmax_cross_entropy_rejects_bad_labels() -> None:
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"expected labels in \[0, 4\)"):
        softmax_cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"expected labels in \[0, 4\)"):
        softmax_cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="integer class labels"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        softmax_cross_entropy(logits, np.array([0, 1]))


def test_mean_squared_error_matches_hand_computation() -> None:
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.array([[0.0, 2.0], [1.0, 1.0]])
    # residuals [[1, 0], [2, 3]]: ½ (1 + 0 + 4 + 9) / N=2 = 3.5
    loss, dpred = mean_squared_error(pred, y)
    assert loss == 3.5
    np.testing.assert_array_equal(dpred, [[0.5, 0.0], [1.0, 1.5]])


def test_mean_squared_error_accepts_flat_targets_for_one_output() -> None:
    pred = np.array([[1.0], [2.0], [4.0]], dtype=np.float32)
    loss, dpred = mean_squared_error(pred, np.array([0.0, 2.0, 2.0]))  # float64 targets
    assert loss == pytest.approx(0.5 * (1 + 0 + 4) / 3)
    assert dpred.shape == (3, 1) and dpred.dtype == np.float32
    with pytest.raises(ValueError, match=r"y must have shape \(3, 1\)"):
        mean_squared_error(pred, np.zeros((3, 2)))


def test_accuracy() -> None:
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert accuracy(logits, np.array([0, 1, 1, 1])) == 0.75


def test_unknown_loss_lists_the_known_ones() -> None:
    assert get_loss("mse").name == "mse"
    with pytest.raises(
        ValueError,
        match=r"unknown loss 'hinge'; expected one of binary_cross_entropy, huber, mse, softmax",
    ):
        get_loss("hinge")


# ---------------------------------------------------------------- the network


# The finite-difference checks of every activation × loss × regulariser, and the
# property tests over random networks, are in tests/test_engine_gradcheck.py.


def test_backward_matches_finite_differences_on_a_small_network() -> None:
    model = MLP([4, 5, 6, 3], ["tanh", "relu", "identity"], "softmax_cross_entropy")
    theta, x, y = _kink_free_problem(model, N=5)
    errors = gradcheck(model, theta, x, y)
    assert list(errors) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert max(errors.values()) <= 1e-7, errors


def test_softmax_regression_gradient_has_its_closed_form() -> None:
    # One layer: ∂loss/∂W = xᵀ (p − Y) / N and ∂loss/∂b = Σ_rows (p − Y) / N.
    rng = np.random.default_rng(3)
    model = MLP([4, 3], ["identity"], "softmax_cross_entropy")
    theta = rng.standard_normal(model.layout.size)
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, size=6)
    _, grad = model.loss_and_gradient(theta, x, y)
    tensors = model.layout.to_dict(theta)
    logits = x @ tensors["W1"] + tensors["b1"]  # (N, C)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    residual = (p - np.eye(3)[y]) / 6  # (N, C)
    expected = model.layout.from_dict(
        {"W1": x.T @ residual, "b1": residual.sum(axis=0)}, dtype=np.float64
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


def test_batch_gradient_is_the_mean_of_per_sample_gradients() -> None:
    model = MLP([3, 4, 2], ["tanh", "identity"], "mse")
    rng = np.random.default_rng(4)
    theta = model.layout.init_theta(model.activation_names, 4, dtype=np.float64)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    batch_loss, batch_grad = model.loss_and_gradient(theta, x, y)
    per_sample = [model.loss_and_gradient(theta, x[n : n + 1], y[n : n + 1]) for n in range(5)]
    assert batch_loss == pytest.approx(np.mean([loss for loss, _ in per_sample]))
    np.testing.assert_allclose(batch_grad, np.mean([g for _, g in per_sample], axis=0))


def test_float32_stays_float32() -> None:
    model = MLP([4, 8, 3], ["relu", "identity"], "softmax_cross_entropy")
    theta = model.layout.init_theta(model.activation_names, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out, workspace = model.forward(theta, x)
    assert out.dtype == np.float32
    for buffers in workspace.layers:
        for array in (buffers.out, buffers.a, buffers.z, buffers.delta):
            assert array.dtype == np.float32
    loss, grad = model.loss_and_gradient(theta, x, np.array([0, 1, 2, 0, 1]))
    assert isinstance(loss, float)
    assert grad.dtype == np.float32 and grad.shape == theta.shape


def test_backward_reads_theta_and_fills_a_given_buffer() -> None:
    model = MLP([4, 6, 2], ["sigmoid", "identity"], "mse")
    theta = model.layout.init_theta(model.activation_names, seed=1, dtype=np.float64)
    before = theta.copy()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    _, fresh = model.loss_and_gradient(theta, x, y)
    buffer = np.full_like(theta, np.nan)
    _, filled = model.loss_and_gradient(theta, x, y, grad=buffer)
    assert filled is buffer
    np.testing.assert_array_equal(filled, fresh)
    np.testing.assert_array_equal(theta, before)
    with pytest.raises(ValueError, match="grad must match theta"):
        model.loss_and_gradient(theta, x, y, grad=np.zeros(theta.shape, dtype=np.float32))


def test_predict_evaluate_and_compute_loss_agree_with_forward() -> None:
    model = MLP([3, 5, 4], ["tanh", "identity"], "softmax_cross_entropy")
    theta = model.layout.init_theta(model.activation_names, seed=5, dtype=np.float64)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 3)), rng.integers(0, 4, size=8)
    out, _ = model.forward(theta, x)
    np.testing.assert_array_equal(model.predict(theta, x), out)
    loss, _ = model.loss_and_gradient(theta, x, y)
    metrics = model.evaluate(theta, x, y)
    assert metrics == {"loss": pytest.approx(loss), "accuracy": accuracy(out, y)}
    assert model.compute_loss(theta, x, y) == pytest.approx(loss)

    regression = MLP([3, 2], ["identity"], "mse")
    theta = regression.layout.init_theta(regression.activation_names, seed=5)
    assert set(regression.evaluate(theta, x, rng.standard_normal((8, 2)))) == {"loss"}


def test_layer_gradient_norms_are_frobenius_norms_of_each_weight_gradient() -> None:
    model = MLP([3, 5, 4, 2], ["relu", "tanh", "identity"], "softmax_cross_entropy")
    grad = np.random.default_rng(6).standard_normal(model.layout.size)
    tensors = model.layout.to_dict(grad)
    expected = [np.linalg.norm(tensors[f"W{layer}"]) for layer in (1, 2, 3)]
    assert model.layer_gradient_norms(grad) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("sizes", "activations", "loss", "message"),
    [
        ([3, 2], ["softmax"], "mse", "unknown activation 'softmax'"),
        ([3, 2], ["identity"], "hinge", "unknown loss 'hinge'"),
        ([3, 4, 2], ["relu"], "mse", "expected 2 activations"),
        ([3, 4, 2], ["relu", "relu", "relu"], "mse", "expected 2 activations"),
        ([3], [], "mse", "at least 2 entries"),
        ([3, 0, 2], ["relu", "identity"], "mse", r"sizes\[1\]"),
        ([3, 1], ["identity"], "softmax_cross_entropy", "at least 2 output classes"),
    ],
)
def test_bad_constructor_arguments_are_named(
    sizes: list[int], activations: list[str], loss: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MLP(sizes, activations, loss)


def test_input_of_the_wrong_width_is_rejected() -> None:
    model = MLP([3, 2], ["identity"], "mse")
    theta = model.layout.init_theta(model.activation_names, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        model.forward(theta, np.zeros((4, 5), dtype=np.float32))
