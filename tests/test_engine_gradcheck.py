"""Backward against finite differences in float64: every activation × loss × regulariser.

The numerical side differentiates the textbook loss (`worker.reference`) in extended
precision with a seven-point stencil, so a relative error ≤ 1e-7 measures backward, not
the reference's rounding, which is ~1e-16·|loss| absolute: the problems keep the loss
≤ MAX_LOSS so that every entry ≥ 1e-8 is resolved to 1e-7 relative. Kinks (relu-like
σ' at z = 0, Huber's at |r| = δ) are kept out of the stencil's reach: a difference
across a kink measures the jump, not the derivative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.activations import ACTIVATIONS
from worker.configs import ModelConfig
from worker.gradcheck import (
    STENCIL_STEP,
    GradcheckReport,
    check_architecture,
    gradcheck,
    numerical_gradient,
    random_targets,
    rel_error,
)
from worker.losses import LOSSES
from worker.model import MLP

ACTIVATION_NAMES = sorted(ACTIVATIONS)
LOSS_NAMES = sorted(LOSSES)
TOLERANCE = 1e-7
# The stencil moves one θ entry by up to 3h = 3e-3, so z moves by 3e-3·|a| < this.
KINK = 0.02
MAX_LOSS = 8.0
# The activations whose σ' (relu, leaky_relu) or σ'' (elu) jumps at z = 0; the smooth
# ones (identity, tanh, sigmoid, gelu, softplus) need no distance from it.
KINKED = frozenset({"relu", "leaky_relu", "elu"})
LOGIT_LOSSES = ("softmax_cross_entropy", "binary_cross_entropy")
REGULARISERS = {"plain": {}, "dropout": {"dropout": 0.3}, "l2": {"l2": 0.1}}
REGULARISERS["dropout+l2"] = {**REGULARISERS["dropout"], **REGULARISERS["l2"]}


def _loss_options(loss: str) -> dict:
    if loss == "softmax_cross_entropy":
        return {"label_smoothing": 0.1}
    if loss == "huber":
        return {"huber_delta": 0.5}
    return {}


def _output(model: MLP, theta: np.ndarray, x: np.ndarray, masks) -> np.ndarray:
    out, _ = model.forward(theta, x, dropout_masks=masks)
    return out.copy()


def pre_activations(model: MLP, theta: np.ndarray, x: np.ndarray, masks) -> list[np.ndarray]:
    """The z^l of the layers with a KINKED σ, from the network's allocating forward with
    the dropout masks (a width-1 layer under dropout gives the next layer z = b for the
    dropped samples, so requiring |z| > KINK of every layer made such networks unusable)."""
    outputs = model.layer_outputs(theta, x, dropout_masks=masks, keep_z=True)
    return [
        z for (z, _), name in zip(outputs, model.activation_names, strict=True) if name in KINKED
    ]


def _kink_coordinates(model: MLP, theta, x, y, masks) -> list[np.ndarray]:
    """Every quantity whose sign change crosses a kink: the kinked layers' z and, for
    Huber, |r| − δ of each residual r."""
    coordinates = pre_activations(model, theta, x, masks)
    delta = getattr(model.loss_fn, "huber_delta", None)
    if delta is not None:
        residual = _output(model, theta, x, masks) - y.reshape(x.shape[0], -1)
        coordinates.append(np.abs(residual) - delta)
    return coordinates


def _stencil_crosses_a_kink(model: MLP, theta, x, y, masks, coordinates) -> bool:
    """Whether moving any one entry of θ by the stencil's widest step (±3h) flips the sign
    of some kink coordinate: a distance > KINK is not enough where a layer's input is
    large (an ELU's σ'' jumps at 0, which a seven-point stencil reads as a kink too; a
    dropout-scaled a^{L-1} moves a Huber residual by more than KINK)."""
    reach = 3 * STENCIL_STEP
    signs = [np.sign(c) for c in coordinates]
    for j in range(theta.size):
        for step in (-reach, reach):
            moved = theta.copy()
            moved[j] += step
            moved_coordinates = _kink_coordinates(model, moved, x, y, masks)
            if any((np.sign(c) != s).any() for c, s in zip(moved_coordinates, signs, strict=True)):
                return True
    return False


def _kink_free_problem(model: MLP, N: int, seed: int = 0, tries: int = 500):
    """A float64 (θ, x, y, masks) with every kink coordinate (kinked layers' z, Huber's
    |r| − δ) farther than KINK and out of the stencil's reach, and a loss ≤ MAX_LOSS
    (seeds tried in turn from `seed`)."""
    D, C = model.sizes[0], model.sizes[-1]
    for attempt in range(tries):
        rng = np.random.default_rng([seed, attempt])
        theta = model.layout.init_theta(model.activation_names, attempt, dtype=np.float64)
        theta += 0.1 * rng.standard_normal(theta.shape)  # biases off zero too
        x = rng.standard_normal((N, D))
        y = random_targets(model.loss_name, rng, N, C)
        masks = model.draw_dropout_masks(rng, N, np.float64) if model.has_dropout else None
        coordinates = _kink_coordinates(model, theta, x, y, masks)
        if any(np.abs(c).min() <= KINK for c in coordinates):
            continue
        if model.compute_loss(theta, x, y, dropout_masks=masks) > MAX_LOSS:
            continue
        if _stencil_crosses_a_kink(model, theta, x, y, masks, coordinates):
            continue
        return theta, x, y, masks
    raise AssertionError(f"no kink-free problem in {tries} tries")


# One parametrised case per (hidden σ, output σ, loss, regulariser); the logit losses
# take the identity output layer they are meant for.
CASES = [
    (hidden, output, loss, regulariser)
    for hidden, output, loss, regulariser in itertools.product(
        ACTIVATION_NAMES, ACTIVATION_NAMES, LOSS_NAMES, REGULARISERS
    )
    if loss not in LOGIT_LOSSES or output == "identity"
]


@pytest.mark.parametrize(("hidden", "output", "loss", "regulariser"), CASES)
def test_backward_matches_finite_differences(
    hidden: str, output: str, loss: str, regulariser: str
) -> None:
    options = {**REGULARISERS[regulariser], **_loss_options(loss)}
    model = MLP([4, 5, 6, 3], [hidden, hidden, output], loss, **options)
    theta, x, y, masks = _kink_free_problem(model, N=5)
    errors = gradcheck(model, theta, x, y, dropout_masks=masks)
    assert list(errors) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert max(errors.values()) <= TOLERANCE, errors


def test_every_activation_and_loss_is_covered() -> None:
    assert KINKED.issubset(ACTIVATION_NAMES)
    covered = {(hidden, loss, regulariser) for hidden, _, loss, regulariser in CASES}
    assert covered == set(itertools.product(ACTIVATION_NAMES, LOSS_NAMES, REGULARISERS))


def test_dropout_masks_change_the_gradient_and_are_checked_as_given() -> None:
    model = MLP([4, 6, 3], ["tanh", "identity"], "mse", dropout=0.5)
    theta, x, y, masks = _kink_free_problem(model, N=4)
    _, with_masks = model.loss_and_gradient(theta, x, y, dropout_masks=masks)
    with_masks = with_masks.copy()
    _, without = model.loss_and_gradient(theta, x, y)
    assert not np.allclose(with_masks, without)
    # Masks that disagree with the ones backward used make the check fail.
    other = [1.0 / 0.5 - m for m in masks]  # the complementary units
    errors = gradcheck(model, theta, x, y, dropout_masks=masks)
    assert max(errors.values()) <= TOLERANCE
    _, analytic = model.loss_and_gradient(theta, x, y, dropout_masks=other)
    assert not np.allclose(analytic, with_masks)


# ---------------------------------------------------------------- random networks


@st.composite
def _networks(draw: st.DrawFn) -> tuple[MLP, int, int]:
    loss = draw(st.sampled_from(LOSS_NAMES))
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 8), min_size=depth + 1, max_size=depth + 1))
    if loss == "softmax_cross_entropy":
        widths[-1] = max(widths[-1], 2)
    activations = draw(st.lists(st.sampled_from(ACTIVATION_NAMES), min_size=depth, max_size=depth))
    options = _loss_options(loss)
    if depth > 1 and draw(st.booleans()):
        options["dropout"] = draw(st.sampled_from([0.1, 0.5]))
    if draw(st.booleans()):
        options["l2"] = draw(st.sampled_from([0.01, 0.1]))
    model = MLP(widths, activations, loss, **options)
    return model, draw(st.integers(1, 6)), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None)
@given(_networks())
def test_backward_matches_finite_differences_for_random_networks(
    network: tuple[MLP, int, int],
) -> None:
    model, N, seed = network
    theta, x, y, masks = _kink_free_problem(model, N, seed)
    errors = gradcheck(model, theta, x, y, dropout_masks=masks)
    assert max(errors.values()) <= TOLERANCE, errors


# ---------------------------------------------------------------- the tools themselves


def test_numerical_gradient_of_a_polynomial_is_exact_to_rounding() -> None:
    # The five- and seven-point stencils are exact for polynomials up to degree 4 and 6.
    def f(t: np.ndarray) -> float:
        return float(np.sum(t**4) + 3 * t[0] * t[1])

    theta = np.array([0.5, -1.25, 2.0])
    expected = 4 * theta**3 + 3 * np.array([theta[1], theta[0], 0.0])
    np.testing.assert_allclose(numerical_gradient(f, theta, 1e-2, order=4), expected, rtol=1e-12)
    np.testing.assert_allclose(numerical_gradient(f, theta, 1e-2, order=6), expected, rtol=1e-12)
    np.testing.assert_allclose(numerical_gradient(f, theta, 1e-5), expected, rtol=1e-8)


def test_numerical_gradient_restricted_to_indices_leaves_the_rest_zero() -> None:
    theta = np.arange(6.0)
    grad = numerical_gradient(lambda t: float(t @ t), theta, indices=np.array([1, 4]))
    np.testing.assert_allclose(grad, [0, 2, 0, 0, 8, 0], atol=1e-9)
    assert theta.tolist() == list(range(6))  # the caller's θ untouched


def test_gradcheck_catches_a_wrong_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MLP([3, 4, 2], ["tanh", "identity"], "mse")
    theta, x, y, _ = _kink_free_problem(model, N=3)
    tanh = model.activations[0]
    original = tanh.backward

    def off_by_a_little(upstream, z, a, work=()):
        delta = original(upstream, z, a, work)
        delta *= 1.001  # in place, as backward writes δ
        return delta

    monkeypatch.setattr(tanh, "backward", off_by_a_little)
    errors = gradcheck(model, theta, x, y)
    assert errors["W1"] > 1e-4 and errors["W2"] <= TOLERANCE


def test_check_architecture_reports_the_worst_error_per_layer() -> None:
    config = ModelConfig(
        sizes=(6, 8, 8, 3),
        activations=("gelu", "elu", "identity"),
        loss="softmax_cross_entropy",
        l2=0.01,
        dropout=0.2,
        label_smoothing=0.1,
    )
    report = check_architecture(config, entries_per_tensor=None)
    assert isinstance(report, GradcheckReport)
    assert len(report.layer_errors) == 3
    assert set(report.tensor_errors) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    assert report.checked_entries == (6 + 1) * 8 + (8 + 1) * 8 + (8 + 1) * 3
    assert report.worst_error <= TOLERANCE and report.is_passed


def test_check_architecture_samples_entries_of_a_large_model() -> None:
    config = ModelConfig((784, 256, 256, 10), ("relu", "relu", "identity"), "softmax_cross_entropy")
    report = check_architecture(config, entries_per_tensor=4)
    assert report.checked_entries == 6 * 4
    assert report.is_passed, report


def test_check_architecture_rejects_what_the_model_rejects() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        check_architecture(ModelConfig((3, 2), ("swish",), "mse"))
    with pytest.raises(ValueError, match="label_smoothing applies only to"):
        check_architecture(ModelConfig((3, 2), ("identity",), "mse", label_smoothing=0.1))


def test_an_exact_zero_gradient_matches_finite_difference_noise_only() -> None:
    assert rel_error(np.zeros(3), np.array([1e-13, -2e-12, 0.0])) == 0.0
    assert rel_error(np.zeros(3), np.array([0.0, 1e-6, 0.0])) > 0.5  # a real gradient
