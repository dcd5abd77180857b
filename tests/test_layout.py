"""θ as one flat array: layout, zero-copy views, dict round trips, seeded init, backend."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from worker.backend import array_module_of, get_array_module, to_numpy
from worker.layout import ParamLayout


def test_backend_cpu_is_numpy_and_unknown_device_is_rejected() -> None:
    assert get_array_module("cpu") is np
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_array_module("tpu")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_backend_gpu_without_cupy_names_the_package() -> None:
    with pytest.raises(RuntimeError, match=r"pip install cupy-cuda12x"):
        get_array_module("gpu")


def test_numpy_arrays_stay_numpy() -> None:
    x = np.arange(6.0).reshape(2, 3)
    assert array_module_of(x) is np
    assert to_numpy(x) is x


def test_size_counts_every_weight_and_bias() -> None:
    layout = ParamLayout([3, 4, 2])  # W1 (3, 4), b1 (4,), W2 (4, 2), b2 (2,)
    assert layout.sizes == (3, 4, 2)
    assert layout.num_layers == 2
    assert layout.size == 3 * 4 + 4 + 4 * 2 + 2
    assert layout.shapes() == {"W1": (3, 4), "b1": (4,), "W2": (4, 2), "b2": (2,)}


def test_views_are_row_major_slices_in_layer_order() -> None:
    layout = ParamLayout([3, 4, 2])
    theta = np.arange(layout.size, dtype=np.float64)
    (W1, b1), (W2, b2) = layout.views(theta)
    np.testing.assert_array_equal(W1, np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(b1, np.arange(12, 16))
    np.testing.assert_array_equal(W2, np.arange(16, 24).reshape(4, 2))
    np.testing.assert_array_equal(b2, np.arange(24, 26))


def test_views_are_zero_copy() -> None:
    layout = ParamLayout([3, 4, 2])
    theta = np.zeros(layout.size, dtype=np.float32)
    (W1, b1), (W2, b2) = layout.views(theta)
    for view in (W1, b1, W2, b2):
        assert np.shares_memory(view, theta)
    W2[1, 0] = 5.0
    b1[3] = -2.0
    assert theta[16 + 1 * 2 + 0] == 5.0
    assert theta[12 + 3] == -2.0
    assert np.count_nonzero(theta) == 2


def test_views_of_a_gradient_buffer_write_the_buffer() -> None:
    layout = ParamLayout([2, 3])
    grad = np.empty(layout.size)
    [(dW, db)] = layout.views(grad)
    dW[...] = 1.0
    db[...] = 2.0
    np.testing.assert_array_equal(grad, [1.0] * 6 + [2.0] * 3)


@pytest.mark.parametrize("shape", [(25,), (27,), (26, 1), (2, 13)])
def test_views_reject_a_theta_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="26 scalars"):
        ParamLayout([3, 4, 2]).views(np.zeros(shape))


def test_dict_round_trip_copies() -> None:
    layout = ParamLayout([3, 4, 2])
    theta = np.random.default_rng(0).standard_normal(layout.size).astype(np.float32)
    tensors = layout.to_dict(theta)
    assert list(tensors) == ["W1", "b1", "W2", "b2"]
    assert tensors["W1"].shape == (3, 4) and tensors["b2"].shape == (2,)
    assert not any(np.shares_memory(t, theta) for t in tensors.values())
    tensors["W1"][0, 0] = 99.0  # a copy: θ keeps its value
    assert theta[0] != 99.0

    restored = layout.from_dict(layout.to_dict(theta))
    assert restored.dtype == np.float32
    np.testing.assert_array_equal(restored, theta)
    assert layout.from_dict(tensors, dtype=np.float64).dtype == np.float64


def test_from_dict_names_the_key_with_the_wrong_shape() -> None:
    layout = ParamLayout([3, 4, 2])
    tensors = layout.to_dict(np.zeros(layout.size))
    tensors["W2"] = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"'W2' has shape \(2, 4\), expected \(4, 2\)"):
        layout.from_dict(tensors)


def test_from_dict_names_a_missing_or_unexpected_key() -> None:
    layout = ParamLayout([3, 4, 2])
    tensors = layout.to_dict(np.zeros(layout.size))
    missing = {k: v for k, v in tensors.items() if k != "b1"}
    with pytest.raises(ValueError, match="missing key 'b1'"):
        layout.from_dict(missing)
    with pytest.raises(ValueError, match="unexpected key 'W3'"):
        layout.from_dict({**tensors, "W3": np.zeros((2, 2))})


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([], "at least 2 entries"),
        ([5], "at least 2 entries"),
        ([3, 0], r"sizes\[1\] must be an integer >= 1"),
        ([-1, 2], r"sizes\[0\] must be an integer >= 1"),
        ([3, 2.5], r"sizes\[1\] must be an integer >= 1"),
        ([3, True], r"sizes\[1\] must be an integer >= 1"),
    ],
)
def test_bad_sizes_are_rejected(sizes: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParamLayout(sizes)


def test_init_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    layout = ParamLayout([6, 5, 3])
    activations = ["relu", "identity"]
    first = layout.init_theta(activations, seed=7)
    again = layout.init_theta(activations, seed=7)
    other = layout.init_theta(activations, seed=8)
    assert first.dtype == np.float32 and first.shape == (layout.size,)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert layout.init_theta(activations, seed=7, dtype=np.float64).dtype == np.float64


def test_init_biases_are_zero() -> None:
    layout = ParamLayout([6, 5, 3])
    for _, b in layout.views(layout.init_theta(["tanh", "sigmoid"], seed=0)):
        np.testing.assert_array_equal(b, 0.0)


def test_he_normal_scale_for_relu_layers() -> None:
    fan_in, fan_out = 500, 400
    layout = ParamLayout([fan_in, fan_out])
    [(W, _)] = layout.views(layout.init_theta(["relu"], seed=0, dtype=np.float64))
    expected_std = math.sqrt(2.0 / fan_in)
    assert abs(W.mean()) < 0.01 * expected_std
    assert W.std() == pytest.approx(expected_std, rel=0.02)
    assert np.abs(W).max() > 3 * expected_std  # normal tails, not a bounded uniform


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "identity"])
def test_glorot_uniform_scale_for_other_layers(activation: str) -> None:
    fan_in, fan_out = 300, 200
    layout = ParamLayout([fan_in, fan_out])
    [(W, _)] = layout.views(layout.init_theta([activation], seed=1, dtype=np.float64))
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(W).max() <= limit
    assert np.abs(W).max() > 0.99 * limit
    assert W.std() == pytest.approx(limit / math.sqrt(3.0), rel=0.02)


def test_init_picks_the_scheme_per_layer() -> None:
    layout = ParamLayout([400, 300, 200])
    (W1, _), (W2, _) = layout.views(layout.init_theta(["relu", "tanh"], seed=2))
    assert W1.std() == pytest.approx(math.sqrt(2.0 / 400), rel=0.03)
    assert W2.std() == pytest.approx(math.sqrt(6.0 / 500) / math.sqrt(3.0), rel=0.03)


def test_init_validates_activations() -> None:
    layout = ParamLayout([4, 3, 2])
    with pytest.raises(ValueError, match="expected 2 activations"):
        layout.init_theta(["relu"], seed=0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        layout.init_theta(["swish", "identity"], seed=0)


def test_init_can_be_chosen_for_every_layer_or_per_layer() -> None:
    layout = ParamLayout([400, 300, 200])
    activations = ["relu", "tanh"]
    he_std, glorot_std = math.sqrt(2.0 / 400), math.sqrt(6.0 / 700) / math.sqrt(3.0)
    (W1, _), _ = layout.views(layout.init_theta(activations, seed=3, init="glorot"))
    assert W1.std() == pytest.approx(glorot_std, rel=0.03)
    _, (W2, _) = layout.views(layout.init_theta(activations, seed=3, init="he"))
    assert W2.std() == pytest.approx(math.sqrt(2.0 / 300), rel=0.03)
    (W1, _), _ = layout.views(layout.init_theta(activations, seed=3, init=["he", "glorot"]))
    assert W1.std() == pytest.approx(he_std, rel=0.03)
    auto = layout.init_theta(activations, seed=3)
    np.testing.assert_array_equal(auto, layout.init_theta(activations, seed=3, init="auto"))


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "gelu"])
def test_auto_init_is_he_for_relu_like_layers(activation: str) -> None:
    layout = ParamLayout([500, 400])
    [(W, _)] = layout.views(layout.init_theta([activation], seed=0, dtype=np.float64))
    assert W.std() == pytest.approx(math.sqrt(2.0 / 500), rel=0.02)


def test_init_names_are_checked() -> None:
    layout = ParamLayout([4, 3, 2])
    with pytest.raises(ValueError, match="unknown init 'lecun'"):
        layout.init_theta(["relu", "identity"], seed=0, init="lecun")
    with pytest.raises(ValueError, match=r"one per layer \(2\), got 3"):
        layout.init_theta(["relu", "identity"], seed=0, init=["he"] * 3)


def test_blocks_are_w_over_b_zero_copy() -> None:
    layout = ParamLayout([3, 4, 2])
    theta = np.arange(layout.size, dtype=np.float64)
    blocks = layout.blocks(theta)
    assert [block.shape for block in blocks] == [(4, 4), (5, 2)]
    for block, (W, b) in zip(blocks, layout.views(theta), strict=True):
        assert np.shares_memory(block, theta)
        np.testing.assert_array_equal(block[:-1], W)
        np.testing.assert_array_equal(block[-1], b)


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_squares_of_the_shards_add_up_to_the_whole_gradients(shards: int) -> None:
    layout = ParamLayout([5, 4, 3, 2])
    g = np.random.default_rng(0).normal(size=layout.size).astype(np.float32)  # (P,)
    parts = [layout.squares(g[lo:hi], lo) for lo, hi in layout.shard_bounds(shards)]
    per_layer = np.sum([weights for weights, _ in parts], axis=0)
    expected = [float(np.sum(W.astype(np.float64) ** 2)) for W, _ in layout.views(g)]
    np.testing.assert_allclose(per_layer, expected, rtol=1e-6)
    total = sum(whole for _, whole in parts)
    assert total == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-6)
    assert total > per_layer.sum()  # the biases count in the whole, not per layer
