"""Optimizer steps against their textbook updates, computed a second way with Python floats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.errors import InvalidSpecError
from services.paramserver.optimizers import (
    OPTIMIZER_KINDS,
    LRSchedule,
    OptimizerConfig,
    OptimizerState,
    apply_update,
    init_state,
    learning_rate_at,
)

THETA0 = [1.0, -2.0, 0.5]
# Three steps of gradients, deliberately of different sizes and signs.
GRADS = [[0.5, -1.0, 2.0], [0.25, 3.0, -1.0], [-0.75, 0.5, 0.125]]


def run_steps(config: OptimizerConfig, theta0=THETA0, grads=GRADS, dtype=np.float32):
    theta = np.array(theta0, dtype=dtype)
    state = init_state(config, theta.size, dtype=dtype)
    for g in grads:
        apply_update(theta, np.array(g, dtype=dtype), state, config)
    return theta, state


def reference(kind, theta0, grads, lr, mu=0.9, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, rho=0.99):
    """The textbook update, one coordinate at a time in Python floats."""
    out = []
    for i, x in enumerate(theta0):
        v = m = s = 0.0
        for t, gs in enumerate(grads, start=1):
            g = gs[i] if kind == "adamw" else gs[i] + wd * x
            if kind == "sgd":
                x -= lr * g
            elif kind == "momentum":
                v = mu * v + g
                x -= lr * v
            elif kind == "nesterov":
                v = mu * v + g
                x -= lr * (g + mu * v)
            elif kind == "rmsprop":
                s = rho * s + (1 - rho) * g * g
                x -= lr * g / (math.sqrt(s) + eps)
            else:  # adam, adamw
                if kind == "adamw":
                    x *= 1 - lr * wd
                m = b1 * m + (1 - b1) * g
                s = b2 * s + (1 - b2) * g * g
                m_hat = m / (1 - b1**t)
                s_hat = s / (1 - b2**t)
                x -= lr * m_hat / (math.sqrt(s_hat) + eps)
        out.append(x)
    return out


# --- hand-computed three-step examples -------------------------------------------------


def test_sgd_three_steps_by_hand():
    # θ3 = θ0 − η (g1 + g2 + g3); column sums of GRADS are 0, 2.5, 1.125.
    theta, state = run_steps(OptimizerConfig(kind="sgd", learning_rate=0.1))
    np.testing.assert_allclose(theta, [1.0, -2.25, 0.3875], rtol=1e-6)
    assert state.step == 3
    assert state.buffers == {}


def test_momentum_three_steps_by_hand():
    # Constant g = 1, μ = 0.9: v = 1, 1.9, 2.71; θ3 = θ0 − 0.1·(1 + 1.9 + 2.71) = θ0 − 0.561.
    config = OptimizerConfig(kind="momentum", learning_rate=0.1, momentum=0.9)
    theta, state = run_steps(config, grads=[[1.0, 1.0, 1.0]] * 3)
    np.testing.assert_allclose(theta, [0.439, -2.561, -0.061], rtol=1e-6)
    np.testing.assert_allclose(state.buffers["velocity"], [2.71] * 3, rtol=1e-6)


def test_momentum_matches_reference_on_varying_gradients():
    config = OptimizerConfig(kind="momentum", learning_rate=0.05, momentum=0.8)
    theta, _ = run_steps(config)
    np.testing.assert_allclose(theta, reference("momentum", THETA0, GRADS, 0.05, mu=0.8), rtol=1e-6)


def test_adam_constant_gradient_moves_eta_per_step():
    # With a constant g, m̂ = g and v̂ = g² at every t, so each step is η·g/(|g| + ε).
    g = [0.001, -5.0, 100.0]
    config = OptimizerConfig(kind="adam", learning_rate=0.01)
    theta, state = run_steps(config, grads=[g] * 3)
    expected = [x - 3 * 0.01 * gi / (abs(gi) + 1e-8) for x, gi in zip(THETA0, g, strict=True)]
    np.testing.assert_allclose(theta, expected, rtol=1e-6)
    # Without bias correction m3 would be only 1 − 0.9³ = 0.271 of g.
    np.testing.assert_allclose(state.buffers["m"], [0.271 * gi for gi in g], rtol=1e-5)
    np.testing.assert_allclose(state.buffers["v"], [(1 - 0.999**3) * gi**2 for gi in g], rtol=1e-5)


def test_adam_first_step_is_eta_times_sign_of_gradient():
    # Bias correction: at t = 1, m̂ = g and √v̂ = |g|, whatever the gradient's scale.
    theta = np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    grad = np.array([1e-4, -3.0, 250.0, -0.02], dtype=np.float32)
    config = OptimizerConfig(kind="adam", learning_rate=0.001)
    apply_update(theta, grad, init_state(config, 4), config)
    np.testing.assert_allclose(theta, -0.001 * grad / (np.abs(grad) + 1e-8), rtol=1e-5)
    # ε matters only for |g| near ε: even g = 1e-4 moves by η·(1 − 1e-4).
    np.testing.assert_allclose(theta, -0.001 * np.sign(grad), rtol=2e-4)


def test_adam_matches_reference_on_varying_gradients():
    config = OptimizerConfig(kind="adam", learning_rate=0.1, beta1=0.8, beta2=0.99, epsilon=1e-6)
    theta, _ = run_steps(config)
    expected = reference("adam", THETA0, GRADS, 0.1, b1=0.8, b2=0.99, eps=1e-6)
    np.testing.assert_allclose(theta, expected, rtol=1e-6, atol=1e-7)


def test_nesterov_three_steps_by_hand():
    # Constant g = 1, μ = 0.9, η = 0.1: v = 1, 1.9, 2.71 and each step is η (g + μ v):
    # 0.1·1.9 + 0.1·2.71 + 0.1·3.439 = 0.8049.
    config = OptimizerConfig(kind="nesterov", learning_rate=0.1, momentum=0.9)
    theta, state = run_steps(config, grads=[[1.0, 1.0, 1.0]] * 3)
    np.testing.assert_allclose(theta, [0.1951, -2.8049, -0.3049], rtol=1e-6)
    np.testing.assert_allclose(state.buffers["velocity"], [2.71] * 3, rtol=1e-6)


def test_nesterov_matches_reference_on_varying_gradients():
    config = OptimizerConfig(kind="nesterov", learning_rate=0.05, momentum=0.8)
    theta, _ = run_steps(config)
    np.testing.assert_allclose(theta, reference("nesterov", THETA0, GRADS, 0.05, mu=0.8), rtol=1e-6)


def test_adamw_three_steps_by_hand():
    # Constant g: m̂ = g, v̂ = g², so each step is θ ← 0.999 θ − η·sign(g) (η = 0.01, λ = 0.1).
    # From θ0 = 1 with g > 0: 0.989, 0.978011, 0.967032989.
    config = OptimizerConfig(kind="adamw", learning_rate=0.01, weight_decay=0.1)
    theta, state = run_steps(config, theta0=[1.0, -2.0], grads=[[2.0, -0.5]] * 3)
    theta_2 = ((-2.0 * 0.999 + 0.01) * 0.999 + 0.01) * 0.999 + 0.01
    np.testing.assert_allclose(theta, [0.967032989, theta_2], rtol=1e-6)
    assert state.step == 3


def test_adamw_decay_is_decoupled_from_adams_scaling():
    # With a huge constant gradient Adam's step is still η·sign(g); AdamW's decay still
    # shrinks θ by ηλθ, while Adam's L2 decay drowns in the normalisation.
    grads = [[1e4, 1e4]] * 3
    adamw, _ = run_steps(
        OptimizerConfig(kind="adamw", learning_rate=0.1, weight_decay=0.5),
        (1.0, 1.0),
        grads,
        np.float64,
    )
    adam, _ = run_steps(
        OptimizerConfig(kind="adam", learning_rate=0.1, weight_decay=0.5),
        (1.0, 1.0),
        grads,
        np.float64,
    )
    expected = ((1.0 * 0.95 - 0.1) * 0.95 - 0.1) * 0.95 - 0.1
    np.testing.assert_allclose(adamw, [expected] * 2, rtol=1e-6)
    np.testing.assert_allclose(adam, [1.0 - 0.3] * 2, rtol=1e-6)


def test_rmsprop_three_steps_by_hand():
    # Constant g = 1, ρ = 0.9: s_t = 1 − 0.9ᵗ = 0.1, 0.19, 0.271 and each step is η/√s_t.
    config = OptimizerConfig(kind="rmsprop", learning_rate=0.01, rho=0.9, epsilon=1e-12)
    theta, state = run_steps(config, grads=[[1.0, 1.0, 1.0]] * 3)
    moved = 0.01 * (1 / math.sqrt(0.1) + 1 / math.sqrt(0.19) + 1 / math.sqrt(0.271))
    assert moved == pytest.approx(0.0737738, rel=1e-6)
    np.testing.assert_allclose(theta, [x - moved for x in THETA0], rtol=1e-6)
    np.testing.assert_allclose(state.buffers["square_avg"], [0.271] * 3, rtol=1e-6)


def test_rmsprop_matches_reference_on_varying_gradients():
    config = OptimizerConfig(kind="rmsprop", learning_rate=0.02, rho=0.95, epsilon=1e-6)
    theta, _ = run_steps(config)
    expected = reference("rmsprop", THETA0, GRADS, 0.02, rho=0.95, eps=1e-6)
    np.testing.assert_allclose(theta, expected, rtol=1e-6, atol=1e-7)


# --- gradient clipping ---------------------------------------------------------------


def test_clipping_scales_the_gradient_to_the_global_norm():
    # g = (3, 4) has norm 5; clipped to norm 1 it is (0.6, 0.8); SGD η = 0.1.
    config = OptimizerConfig(kind="sgd", learning_rate=0.1, clip_norm=1.0)
    theta = np.zeros(2, dtype=np.float32)
    grad = np.array([3.0, 4.0], dtype=np.float32)
    state = apply_update(theta, grad, init_state(config, 2), config)
    np.testing.assert_allclose(theta, [-0.06, -0.08], rtol=1e-6)
    assert state.last_gradient_norm == pytest.approx(5.0)
    np.testing.assert_array_equal(grad, [3.0, 4.0])  # the caller's gradient is untouched


def test_clipping_leaves_a_small_gradient_alone():
    config = OptimizerConfig(kind="momentum", learning_rate=0.1, clip_norm=10.0)
    clipped, _ = run_steps(config)
    plain, _ = run_steps(OptimizerConfig(kind="momentum", learning_rate=0.1))
    np.testing.assert_array_equal(clipped, plain)


@pytest.mark.parametrize("kind", OPTIMIZER_KINDS)
def test_clipping_comes_before_weight_decay(kind):
    # Every kind sees the clipped g: the same as feeding the clipped gradient unclipped.
    grads = [[30.0, -40.0, 0.0], [0.3, 0.4, 0.0], [-6.0, 8.0, 0.0]]
    scaled = []
    for g in grads:
        norm = math.sqrt(sum(v * v for v in g))
        scaled.append([v * min(1.0, 1.0 / norm) for v in g])
    clipped, _ = run_steps(
        OptimizerConfig(kind=kind, learning_rate=0.05, weight_decay=0.1, clip_norm=1.0),
        grads=grads,
        dtype=np.float64,
    )
    expected, _ = run_steps(
        OptimizerConfig(kind=kind, learning_rate=0.05, weight_decay=0.1),
        grads=scaled,
        dtype=np.float64,
    )
    np.testing.assert_allclose(clipped, expected, rtol=1e-12)


# --- learning-rate schedules ------------------------------------------------------------


def test_step_schedule_by_hand():
    schedule = LRSchedule(kind="step", step_size=2, gamma=0.5)
    rates = [learning_rate_at(t, 1.0, schedule) for t in range(1, 7)]
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_linear_warmup_then_constant():
    schedule = LRSchedule(warmup_steps=4)
    rates = [learning_rate_at(t, 0.8, schedule) for t in range(1, 7)]
    assert rates == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])


def test_cosine_schedule_after_warmup_by_hand():
    # η = 1, η_min = 0.1, one warm-up step, then T = 4 steps of ½(1 + cos(πs/4)).
    schedule = LRSchedule(kind="cosine", warmup_steps=1, total_steps=5, min_learning_rate=0.1)
    rates = [learning_rate_at(t, 1.0, schedule) for t in (1, 2, 3, 4, 5, 6, 100)]
    half = 0.5 * (1 + math.cos(math.pi / 4))  # 0.853553
    expected = [1.0, 1.0, 0.1 + 0.9 * half, 0.55, 0.1 + 0.9 * (1 - half), 0.1, 0.1]
    assert rates == pytest.approx(expected)


def test_constant_schedule_is_the_default():
    assert learning_rate_at(1, 0.3) == learning_rate_at(10_000, 0.3) == 0.3


def test_apply_update_takes_this_steps_learning_rate():
    config = OptimizerConfig(kind="sgd", learning_rate=0.1)
    theta = np.ones(3, dtype=np.float32)
    apply_update(
        theta, np.ones(3, dtype=np.float32), init_state(config, 3), config, learning_rate=0.5
    )
    np.testing.assert_allclose(theta, [0.5] * 3)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"kind": "exponential"}, "kind", "unknown schedule 'exponential'"),
        ({"warmup_steps": -1}, "warmup_steps", "must be >= 0"),
        ({"warmup_steps": 1.5}, "warmup_steps", "must be an integer"),
        ({"kind": "step", "step_size": 0}, "step_size", "must be >= 1"),
        ({"kind": "step", "gamma": 0.0}, "gamma", r"must be in \(0, 1\]"),
        ({"kind": "step", "gamma": 1.5}, "gamma", r"must be in \(0, 1\]"),
        ({"kind": "cosine"}, "total_steps", "is required for the cosine schedule"),
        (
            {"kind": "cosine", "total_steps": 10, "warmup_steps": 10},
            "total_steps",
            "must be > warmup_steps",
        ),
        ({"min_learning_rate": -0.1}, "min_learning_rate", "must be >= 0"),
    ],
)
def test_invalid_schedule_names_the_field(changes, field, message):
    with pytest.raises(InvalidSpecError, match=message) as caught:
        LRSchedule(**changes)
    assert caught.value.field == field


# --- weight decay -------------------------------------------------------------------


def test_sgd_weight_decay_by_hand():
    # One step: θ1 = θ0 − η (g + λ θ0) with η = 0.1, λ = 0.5.
    config = OptimizerConfig(kind="sgd", learning_rate=0.1, weight_decay=0.5)
    theta, _ = run_steps(config, grads=GRADS[:1])
    np.testing.assert_allclose(theta, [0.9, -1.8, 0.275], rtol=1e-6)


def test_weight_decay_alone_shrinks_theta_geometrically():
    # g = 0: θ3 = θ0 (1 − ηλ)³ = θ0 · 0.9³.
    config = OptimizerConfig(kind="sgd", learning_rate=0.2, weight_decay=0.5)
    theta, _ = run_steps(config, grads=[[0.0, 0.0, 0.0]] * 3)
    np.testing.assert_allclose(theta, [0.729 * x for x in THETA0], rtol=1e-6)


@pytest.mark.parametrize("kind", OPTIMIZER_KINDS)
def test_weight_decay_matches_reference(kind):
    config = OptimizerConfig(kind=kind, learning_rate=0.05, weight_decay=0.1)
    theta, _ = run_steps(config)
    np.testing.assert_allclose(
        theta, reference(kind, THETA0, GRADS, 0.05, wd=0.1), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kind", ["momentum", "nesterov", "adam", "adamw", "rmsprop"])
def test_weight_decay_changes_the_update(kind):
    plain, _ = run_steps(OptimizerConfig(kind=kind, learning_rate=0.05))
    decayed, _ = run_steps(OptimizerConfig(kind=kind, learning_rate=0.05, weight_decay=0.1))
    assert not np.allclose(plain, decayed)


# --- in place, dtypes, state -------------------------------------------------------------


@pytest.mark.parametrize("kind", OPTIMIZER_KINDS)
@pytest.mark.parametrize(("weight_decay", "clip_norm"), [(0.0, None), (0.01, None), (0.01, 0.5)])
def test_updates_in_place_and_leaves_grad_alone(kind, weight_decay, clip_norm):
    config = OptimizerConfig(
        kind=kind, learning_rate=0.1, weight_decay=weight_decay, clip_norm=clip_norm
    )
    storage = np.array(THETA0 * 2, dtype=np.float32)
    theta = storage[:3]  # a view, as the parameter server's per-layer slices are
    state = init_state(config, theta.size)
    buffers = dict(state.buffers)
    grad = np.array(GRADS[0], dtype=np.float32)
    grad_before = grad.copy()
    returned = apply_update(theta, grad, state, config)
    assert returned is state
    assert np.shares_memory(theta, storage)
    assert not np.allclose(storage[:3], THETA0)  # the caller's buffer moved
    np.testing.assert_array_equal(storage[3:], THETA0)
    np.testing.assert_array_equal(grad, grad_before)
    for name, buffer in state.buffers.items():
        assert buffer is buffers[name]
        assert not np.shares_memory(buffer, theta)


@pytest.mark.parametrize("kind", OPTIMIZER_KINDS)
def test_float32_stays_float32(kind):
    config = OptimizerConfig(kind=kind, weight_decay=0.01)
    theta = np.array(THETA0, dtype=np.float32)
    state = init_state(config, 3)
    for g in GRADS:
        apply_update(theta, np.array(g, dtype=np.float64), state, config)
    assert theta.dtype == np.float32
    assert all(buffer.dtype == np.float32 for buffer in state.buffers.values())


def test_float64_theta_supported():
    theta, state = run_steps(OptimizerConfig(kind="momentum", learning_rate=0.05), dtype=np.float64)
    assert theta.dtype == np.float64
    assert state.buffers["velocity"].dtype == np.float64
    np.testing.assert_allclose(theta, reference("momentum", THETA0, GRADS, 0.05), rtol=1e-12)


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("sgd", set()),
        ("momentum", {"velocity"}),
        ("nesterov", {"velocity"}),
        ("adam", {"m", "v"}),
        ("adamw", {"m", "v"}),
        ("rmsprop", {"square_avg"}),
    ],
)
def test_init_state_buffers_are_zeroed_and_sized(kind, names):
    state = init_state(OptimizerConfig(kind=kind), 7)
    assert state.step == 0
    assert set(state.buffers) == names
    for buffer in state.buffers.values():
        assert buffer.shape == (7,)
        assert buffer.dtype == np.float32
        assert not buffer.any()


def test_restored_state_without_scratch_continues_identically():
    config = OptimizerConfig(kind="adam", learning_rate=0.1, weight_decay=0.01)
    theta = np.array(THETA0, dtype=np.float32)
    state = init_state(config, 3)
    apply_update(theta, np.array(GRADS[0], dtype=np.float32), state, config)
    restored = OptimizerState(
        step=state.step, buffers={k: v.copy() for k, v in state.buffers.items()}
    )
    theta_restored = theta.copy()
    for g in GRADS[1:]:
        apply_update(theta, np.array(g, dtype=np.float32), state, config)
        apply_update(theta_restored, np.array(g, dtype=np.float32), restored, config)
    np.testing.assert_array_equal(theta, theta_restored)
    assert restored.step == 3


def test_mismatched_shapes_rejected():
    config = OptimizerConfig(kind="momentum")
    with pytest.raises(ValueError, match="theta and grad"):
        apply_update(
            np.zeros(3, np.float32), np.zeros(4, np.float32), init_state(config, 3), config
        )
    with pytest.raises(ValueError, match="velocity"):
        apply_update(
            np.zeros(3, np.float32), np.zeros(3, np.float32), init_state(config, 2), config
        )


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(OPTIMIZER_KINDS),
    theta0=st.lists(st.floats(-10, 10), min_size=1, max_size=4),
    steps=st.integers(1, 4),
    lr=st.floats(1e-4, 0.5),
    wd=st.sampled_from([0.0, 0.01, 0.3]),
    seed=st.integers(0, 1000),
)
def test_matches_reference_in_float64(kind, theta0, steps, lr, wd, seed):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(steps, len(theta0))).tolist()
    config = OptimizerConfig(kind=kind, learning_rate=lr, weight_decay=wd)
    theta, _ = run_steps(config, theta0=theta0, grads=grads, dtype=np.float64)
    np.testing.assert_allclose(
        theta, reference(kind, theta0, grads, lr, wd=wd), rtol=1e-9, atol=1e-9
    )


# --- config validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "lbfgs"),
        ("kind", "SGD"),
        ("learning_rate", 0.0),
        ("learning_rate", -1.0),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("learning_rate", "0.1"),
        ("momentum", -0.1),
        ("momentum", 1.0),
        ("momentum", float("nan")),
        ("beta1", 1.0),
        ("beta1", -0.5),
        ("beta2", 1.0),
        ("beta2", 1.5),
        ("beta2", float("inf")),
        ("epsilon", 0.0),
        ("epsilon", -1e-8),
        ("epsilon", float("nan")),
        ("weight_decay", -0.1),
        ("weight_decay", float("inf")),
        ("weight_decay", True),
        ("rho", 1.0),
        ("rho", -0.5),
        ("clip_norm", 0.0),
        ("clip_norm", -1.0),
        ("clip_norm", float("inf")),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(InvalidSpecError) as caught:
        OptimizerConfig(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} ")


def test_invalid_config_messages():
    with pytest.raises(InvalidSpecError, match=r"^learning_rate must be > 0, got -1.0$"):
        OptimizerConfig(learning_rate=-1.0)
    with pytest.raises(
        InvalidSpecError,
        match=(
            r"^kind unknown optimizer 'x'; "
            r"expected one of sgd, momentum, nesterov, adam, adamw, rmsprop$"
        ),
    ):
        OptimizerConfig(kind="x")


def test_valid_edge_configs_accepted():
    OptimizerConfig(kind="momentum", momentum=0.0)
    OptimizerConfig(kind="adam", beta1=0.0, beta2=0.0, epsilon=1e-12)
    OptimizerConfig(learning_rate=10, weight_decay=0)
    OptimizerConfig(kind="rmsprop", rho=0.0, clip_norm=1e-3)
