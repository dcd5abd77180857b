"""The engine's pieces against their definitions: activations, losses, dropout, L2, FLOPs,
workspaces (no batch-sized allocation per step), and no per-sample Python loop."""

from __future__ import annotations

import gc
import math
import sys
import tracemalloc

import numpy as np
import pytest

from worker import reference
from worker.activations import ACTIVATIONS, get_activation
from worker.dropout import draw_masks, dropout_rates, step_rng
from worker.losses import (
    binary_cross_entropy_with_logits,
    get_loss,
    huber,
    softmax_cross_entropy,
)
from worker.model import MLP, gemm_flops

ACTIVATION_NAMES = sorted(ACTIVATIONS)


def _problem(model: MLP, N: int, seed: int = 0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    theta = model.layout.init_theta(model.activation_names, seed, dtype=dtype)
    theta += (0.1 * rng.standard_normal(theta.shape)).astype(dtype)
    x = rng.standard_normal((N, model.sizes[0])).astype(dtype)
    return theta, x, rng


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_matches_its_definition(name: str) -> None:
    z = np.concatenate([np.linspace(-30.0, 30.0, 121), [-700.0, 700.0, -1e-8, 1e-8]])
    with np.errstate(over="ignore"):
        expected = reference.activation(name, z)
    np.testing.assert_allclose(get_activation(name).forward(z), expected, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_in_place_equals_out_of_place(name: str) -> None:
    activation = get_activation(name)
    z = np.random.default_rng(1).standard_normal((7, 9)).astype(np.float32) * 3
    fresh = activation.forward(z)
    buffer = z.copy()
    assert activation.forward(buffer, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, fresh)
    upstream = np.random.default_rng(2).standard_normal(z.shape).astype(np.float32)
    expected = upstream * activation.grad(z, fresh)
    work = [
        np.empty(z.shape, bool if kind == "bool" else z.dtype) for kind in activation.work_dtypes
    ]
    returned = activation.backward(upstream, z, fresh, work)
    np.testing.assert_allclose(returned, expected, rtol=1e-6)
    np.testing.assert_allclose(upstream, expected, rtol=1e-6)  # in place


def test_derivatives_read_from_the_output_where_the_math_allows() -> None:
    z = np.linspace(-4.0, 4.0, 33) + 0.01
    for name in ACTIVATION_NAMES:
        activation = get_activation(name)
        a = activation.forward(z)
        if not activation.needs_z:  # backward must not look at z at all
            np.testing.assert_array_equal(
                activation.backward(np.ones_like(z), None, a), activation.grad(z, a)
            )
    assert [n for n in ACTIVATION_NAMES if get_activation(n).needs_z] == ["elu", "gelu", "tanh"]


def _derivative_by_definition(name: str, z: np.ndarray) -> np.ndarray:
    """σ'(z) in float64 from closed forms written for z ≪ 0 (no cancelling sums)."""

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return np.exp(-np.logaddexp(0, -x))

    if name == "identity":
        return np.ones_like(z)
    if name in ("relu", "leaky_relu"):
        return np.where(z > 0, 1.0, 0.0 if name == "relu" else 0.01)
    if name == "elu":
        return np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))
    if name == "tanh":  # sech² z = 4 e^{−2|z|} / (1 + e^{−2|z|})²
        t = np.exp(-2 * np.abs(z))
        return 4 * t / (1 + t) ** 2
    if name == "sigmoid":
        return sigmoid(z) * sigmoid(-z)
    if name == "softplus":  # softplus' = sigmoid
        return sigmoid(z)
    if name == "gelu":  # d/dz ½ z (1 + tanh u) = s + z u' · 2 s (1 − s), s = sigmoid(2u)
        c, k = math.sqrt(2 / math.pi), 0.044715
        u, du = c * (z + k * z**3), c * (1 + 3 * k * z**2)
        s = sigmoid(2 * u)
        return s + z * du * 2 * s * sigmoid(-2 * u)
    raise ValueError(name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_every_derivative_keeps_its_digits_at_strongly_negative_z(name: str, dtype) -> None:
    # ELU once took σ' = a + 1 from its output: 0.8 % off at z = −12.5 in float32 and
    # exactly 0 below −17; tanh's 1 − a² was 0 past |z| ≈ 9. Both now read z.
    z = np.array([[-40.0, -20.0, -17.5, -12.5, -5.0, -1.0, -1e-3]], dtype=dtype)
    activation = get_activation(name)
    a = activation.forward(z.copy())
    got = activation.grad(z, a)
    assert got.dtype == dtype
    smallest = np.finfo(dtype).tiny
    expected = _derivative_by_definition(name, z.astype(np.float64))
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=smallest)


def test_softplus_and_elu_keep_precision_far_out() -> None:
    z = np.array([-40.0, -20.0, 30.0])
    softplus, elu = get_activation("softplus"), get_activation("elu")
    a = softplus.forward(z)
    np.testing.assert_allclose(
        a, [math.exp(-40), math.log1p(math.exp(-20)), 30 + math.exp(-30)], rtol=1e-14
    )
    np.testing.assert_allclose(softplus.grad(z, a), 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose(elu.forward(np.array([-1e-10])), [-1e-10], rtol=1e-9)


# ---------------------------------------------------------------- losses


def test_label_smoothing_by_hand() -> None:
    # One row, logits 0: p = (½, ½); ε = 0.2 gives q = (0.9, 0.1) for label 0.
    loss, grad = softmax_cross_entropy(np.zeros((1, 2)), np.array([0]), label_smoothing=0.2)
    assert loss == pytest.approx(math.log(2))
    np.testing.assert_allclose(grad, [[0.5 - 0.9, 0.5 - 0.1]])


def test_label_smoothing_matches_the_definition() -> None:
    rng = np.random.default_rng(3)
    logits, y = rng.standard_normal((6, 4)) * 4, rng.integers(0, 4, size=6)
    loss, grad = softmax_cross_entropy(logits, y, label_smoothing=0.15)
    assert loss == pytest.approx(
        float(reference.loss("softmax_cross_entropy", logits, y, label_smoothing=0.15)), rel=1e-13
    )
    q = np.full((6, 4), 0.15 / 4)
    q[np.arange(6), y] += 0.85
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grad, (p - q) / 6, atol=1e-15)


def test_binary_cross_entropy_by_hand_and_stable() -> None:
    # z = 0: σ = ½, loss per entry log 2, gradient (½ − y)/N.
    loss, grad = binary_cross_entropy_with_logits(
        np.zeros((2, 2)), np.array([[1.0, 0.0], [0.0, 0.0]])
    )
    assert loss == pytest.approx(2 * math.log(2))  # 4 entries · log 2 / N = 2
    np.testing.assert_allclose(grad, [[-0.25, 0.25], [0.25, 0.25]])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, grad = binary_cross_entropy_with_logits(
            np.array([[1e4], [-1e4]], np.float32), np.array([0.0, 0.0])
        )
    assert loss == pytest.approx(1e4 / 2)  # −log(1 − σ(1e4)) = 1e4 for row 0, ~0 for row 1
    np.testing.assert_allclose(grad, [[0.5], [0.0]], atol=1e-7)


def test_huber_by_hand() -> None:
    pred = np.array([[0.5, 3.0], [-2.0, 0.0]])
    y = np.zeros((2, 2))
    # δ = 1: ½·0.25, 1·(3 − ½), 1·(2 − ½), 0 → (0.125 + 2.5 + 1.5) / N=2
    loss, grad = huber(pred, y, huber_delta=1.0)
    assert loss == pytest.approx(4.125 / 2)
    np.testing.assert_allclose(grad, [[0.25, 0.5], [-0.5, 0.0]])


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "binary_cross_entropy", "mse", "huber"])
def test_every_loss_matches_its_definition_and_keeps_float32(name: str) -> None:
    rng = np.random.default_rng(4)
    out = (rng.standard_normal((5, 3)) * 2).astype(np.float32)
    if name == "softmax_cross_entropy":
        y = rng.integers(0, 3, size=5)
    elif name == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(5, 3)).astype(np.float32)
    else:
        y = rng.standard_normal((5, 3)).astype(np.float32)
    loss_fn = get_loss(name)
    loss, grad = loss_fn(out, y)
    assert isinstance(loss, float) and grad.dtype == np.float32
    expected = float(reference.loss(name, out.astype(np.float64), y))
    assert loss == pytest.approx(expected, rel=1e-5)
    buffer = np.empty_like(out)
    _, filled = loss_fn(out, y, dout=buffer)
    assert filled is buffer
    np.testing.assert_array_equal(filled, grad)


def test_loss_options_are_checked() -> None:
    assert get_loss("softmax_cross_entropy", label_smoothing=0.1).label_smoothing == 0.1
    assert get_loss("huber", huber_delta=2.0).huber_delta == 2.0
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        get_loss("softmax_cross_entropy", label_smoothing=1.0)
    with pytest.raises(ValueError, match="huber_delta must be a finite number > 0"):
        get_loss("huber", huber_delta=0.0)
    with pytest.raises(ValueError, match="huber_delta applies only to huber, not to mse"):
        get_loss("mse", huber_delta=2.0)


def test_binary_cross_entropy_evaluates_accuracy() -> None:
    model = MLP([2, 1], ["identity"], "binary_cross_entropy")
    theta = np.array([1.0, 0.0, 0.0])  # z = x₁
    metrics = model.evaluate(
        theta, np.array([[2.0, 0.0], [-1.0, 0.0], [3.0, 0.0]]), np.array([1.0, 1.0, 1.0])
    )
    assert metrics["accuracy"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("hidden", ACTIVATION_NAMES)
@pytest.mark.parametrize("with_dropout", [False, True])
def test_forward_matches_the_reference_network(hidden: str, with_dropout: bool) -> None:
    model = MLP([5, 7, 6, 3], [hidden, hidden, "identity"], "mse", dropout=0.4, l2=0.3)
    theta, x, rng = _problem(model, N=4)
    y = rng.standard_normal((4, 3))
    masks = model.draw_dropout_masks(rng, 4, np.float64) if with_dropout else None
    out, _ = model.forward(theta, x, dropout_masks=masks)
    a = x
    for layer, (W, b) in enumerate(model.layout.views(theta)):
        a = reference.activation(model.activation_names[layer], a @ W + b)
        if masks is not None and layer < 2:
            a = a * masks[layer]
    np.testing.assert_allclose(out, a, rtol=1e-13, atol=1e-15)
    expected_loss = float(reference.loss_value(model, theta, x, y, masks))
    assert model.compute_loss(theta, x, y, dropout_masks=masks) == pytest.approx(
        expected_loss, rel=1e-13
    )
    if not with_dropout:
        np.testing.assert_allclose(model.predict(theta, x), out, rtol=1e-13)


def test_l2_adds_half_lambda_w_squared_and_lambda_w_to_the_weights_only() -> None:
    plain = MLP([3, 4, 2], ["tanh", "identity"], "mse")
    decayed = MLP([3, 4, 2], ["tanh", "identity"], "mse", l2=0.5)
    theta, x, rng = _problem(plain, N=5)
    y = rng.standard_normal((5, 2))
    loss, grad = plain.loss_and_gradient(theta, x, y)
    grad = grad.copy()
    loss_l2, grad_l2 = decayed.loss_and_gradient(theta, x, y)
    weights = plain.layout.to_dict(theta)
    assert loss_l2 - loss == pytest.approx(
        0.25 * sum(float(np.sum(weights[k] ** 2)) for k in ("W1", "W2"))
    )
    difference = plain.layout.to_dict(grad_l2 - grad)
    np.testing.assert_allclose(difference["W1"], 0.5 * weights["W1"], rtol=1e-12)
    np.testing.assert_allclose(difference["W2"], 0.5 * weights["W2"], rtol=1e-12)
    assert not difference["b1"].any() and not difference["b2"].any()
    assert decayed.evaluate(theta, x, y)["loss"] == pytest.approx(loss)  # data term only


def test_gemm_flops_of_the_benchmark_model() -> None:
    # Forward and ∂W for 784·256 + 256·256 + 256·10 each, δWᵀ for the last two only.
    per_sample = 2 * (2 * (784 * 256 + 256 * 256 + 256 * 10) + (256 * 256 + 256 * 10))
    assert gemm_flops([784, 256, 256, 10], 1) == per_sample == 1_211_392
    assert (
        MLP([784, 256, 256, 10], ["relu", "relu", "identity"], "mse").gemm_flops(256)
        == 256 * per_sample
    )


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        MLP([3, 2], ["identity"], "mse", l2=-1.0)
    with pytest.raises(ValueError, match=r"dropout rates must be in \[0, 1\)"):
        MLP([3, 4, 2], ["relu", "identity"], "mse", dropout=1.0)
    with pytest.raises(ValueError, match=r"one per hidden layer \(2\)"):
        MLP([3, 4, 4, 2], ["relu", "relu", "identity"], "mse", dropout=[0.1])


# ---------------------------------------------------------------- dropout


def test_dropout_masks_are_scaled_bernoulli_and_repeat_per_step() -> None:
    masks = draw_masks(step_rng(7, 1, 2, 3), (0.25, 0.0), 400, (50, 8), np.float32)
    mask, off = masks
    assert off is None and mask.shape == (400, 50) and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert (mask == 0).mean() == pytest.approx(0.25, abs=0.01)
    again = draw_masks(step_rng(7, 1, 2, 3), (0.25, 0.0), 400, (50, 8))[0]
    np.testing.assert_array_equal(mask, again)
    for other in (
        step_rng(8, 1, 2, 3),
        step_rng(7, 0, 2, 3),
        step_rng(7, 1, 3, 3),
        step_rng(7, 1, 2, 4),
    ):
        assert not np.array_equal(mask, draw_masks(other, (0.25,), 400, (50,))[0])


def test_dropout_applies_only_with_an_rng_or_masks() -> None:
    model = MLP([4, 16, 2], ["relu", "identity"], "mse", dropout=0.5)
    theta, x, rng = _problem(model, N=8)
    y = rng.standard_normal((8, 2))
    without = model.loss_and_gradient(theta, x, y)[0]
    assert without == pytest.approx(
        MLP([4, 16, 2], ["relu", "identity"], "mse").compute_loss(theta, x, y)
    )
    first = model.loss_and_gradient(theta, x, y, rng=np.random.default_rng(5))[0]
    again = model.loss_and_gradient(theta, x, y, rng=np.random.default_rng(5))[0]
    assert first == again != without


def test_dropout_rates_validation() -> None:
    assert dropout_rates(0.2, 3) == (0.2, 0.2, 0.2)
    assert dropout_rates([0.0, 0.5], 2) == (0.0, 0.5)
    with pytest.raises(ValueError, match="dropout rates"):
        dropout_rates(True, 1)


# ---------------------------------------------------------------- speed structure


def _step(model: MLP, N: int):
    theta, x, rng = _problem(model, N, dtype=np.float32)
    y = rng.integers(0, model.sizes[-1], size=N)
    grad = np.empty_like(theta)
    dropout = {"rng": np.random.default_rng(0)} if model.has_dropout else {}
    return lambda: model.loss_and_gradient(theta, x, y, grad=grad, **dropout)


def test_a_step_allocates_nothing_batch_sized() -> None:
    model = MLP([784, 256, 256, 10], ["relu", "relu", "identity"], "softmax_cross_entropy")
    N = 512
    step = _step(model, N)
    step()  # the first step of a shape builds its workspace
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_hidden_buffer = N * 256 * 4
    assert peak < one_hidden_buffer / 8, peak  # O(N) label bookkeeping only


def test_workspaces_are_kept_per_batch_shape() -> None:
    model = MLP([6, 5, 2], ["tanh", "identity"], "softmax_cross_entropy")
    theta = model.layout.init_theta(model.activation_names, 0)
    first = model.workspace(theta, 8)
    assert model.workspace(theta, 8) is first
    assert model.workspace(theta, 4) is not first
    assert model.workspace(theta.astype(np.float64), 8) is not first
    for batch in range(10, 20):
        model.workspace(theta, batch)
    assert model.workspace(theta, 8) is not first  # evicted: only a few shapes are kept


def test_no_per_sample_python_loop_in_forward_or_backward() -> None:
    """Python-level calls per step do not grow with the batch size."""
    model = MLP(
        [12, 16, 16, 4], ["gelu", "relu", "identity"], "softmax_cross_entropy", dropout=0.2, l2=0.1
    )
    counts = {}
    for N in (1, 16, 1024):
        step = _step(model, N)
        step()
        calls = 0

        def count(frame, event, arg):
            nonlocal calls
            calls += event in ("call", "c_call")

        gc.disable()  # a collection would count the calls of gc.callbacks (Ray has some)
        sys.setprofile(count)
        try:
            step()
        finally:
            sys.setprofile(None)
            gc.enable()
        counts[N] = calls
    assert counts[1] == counts[16] == counts[1024], counts
