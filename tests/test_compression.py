"""Gradient compression: round trips, top-k against a full sort, error feedback losing nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.compression import (
    COMPRESSIONS,
    Compressed,
    GradientCompressor,
    _index_dtype,
    decompress,
)

FLOAT16_MAX = 65504.0
FLOAT16_EPS = 2.0**-11  # unit roundoff of float16: relative error of round-to-nearest


def random_gradient(size: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    """(size,) with distinct magnitudes, so the top k are unambiguous."""
    return np.random.default_rng(seed).standard_normal(size).astype(dtype)


def norm_rel_error(x: np.ndarray, reference: np.ndarray) -> float:
    """‖x − reference‖ / ‖reference‖, computed in float64."""
    x, reference = x.astype(np.float64), reference.astype(np.float64)
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


def topk_reference(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest |v|, by a full stable sort instead of a partition, ascending."""
    return np.sort(np.argsort(-np.abs(v), kind="stable")[:k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_none_round_trips_exactly(dtype):
    g = random_gradient(257, dtype)
    c = GradientCompressor("none").compress(g)
    assert (c.kind, c.size, c.dtype, c.indices) == ("none", 257, np.dtype(dtype).name, None)
    np.testing.assert_array_equal(decompress(c), g)
    assert c.nbytes == g.nbytes


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_compress_neither_modifies_nor_keeps_the_input(kind):
    g = random_gradient(100)
    before = g.copy()
    compressor = GradientCompressor(kind, topk_fraction=0.1)
    c = compressor.compress(g)
    np.testing.assert_array_equal(g, before)
    sent = decompress(c).copy()
    g[:] = 1e3  # the caller reuses its buffer for the next gradient
    np.testing.assert_array_equal(decompress(c), sent)
    assert not np.shares_memory(c.values, g)


def test_fp16_round_trips_within_half_precision_and_halves_float32_bytes():
    rng = np.random.default_rng(1)
    # Magnitudes across float16's normal range, [6.1e-5, 65504], with both signs.
    magnitudes = 10.0 ** rng.uniform(-4, 4.5, size=1000)
    g = (magnitudes * rng.choice([-1.0, 1.0], size=1000)).astype(np.float32)
    c = GradientCompressor("fp16").compress(g)
    assert c.values.dtype == np.float16 and c.dtype == "float32"
    dense = decompress(c)
    assert dense.dtype == np.float32
    np.testing.assert_allclose(dense, g, rtol=FLOAT16_EPS, atol=0)
    assert c.nbytes == g.nbytes // 2


def test_fp16_clips_beyond_half_range_to_65504_never_inf():
    g = np.array([1e6, -1e6, 7e4, np.inf, -np.inf, 1.0], dtype=np.float32)
    dense = decompress(GradientCompressor("fp16").compress(g))
    np.testing.assert_array_equal(
        dense, [FLOAT16_MAX, -FLOAT16_MAX, FLOAT16_MAX, FLOAT16_MAX, -FLOAT16_MAX, 1.0]
    )
    assert np.isfinite(dense).all()


def test_fp16_keeps_nan_so_divergence_is_seen():
    g = np.array([1.0, np.nan, -2.0], dtype=np.float32)
    dense = decompress(GradientCompressor("fp16").compress(g))
    assert np.isnan(dense[1])
    np.testing.assert_array_equal(dense[[0, 2]], [1.0, -2.0])


@pytest.mark.parametrize(("size", "fraction"), [(1000, 0.01), (1000, 0.0015), (37, 0.25)])
def test_topk_keeps_exactly_k_largest_magnitudes_with_sorted_indices(size, fraction):
    g = random_gradient(size, seed=size)
    c = GradientCompressor("topk", topk_fraction=fraction).compress(g)
    k = max(1, math.ceil(fraction * size))
    assert c.values.shape == c.indices.shape == (k,)
    assert c.indices.dtype == np.int32
    assert (np.diff(c.indices) > 0).all()
    np.testing.assert_array_equal(c.indices, topk_reference(g, k))
    np.testing.assert_array_equal(c.values, g[c.indices])
    dense = decompress(c)
    assert np.count_nonzero(dense) == k


def test_topk_sends_at_least_one_and_at_most_all_entries():
    g = random_gradient(50)
    tiny = GradientCompressor("topk", topk_fraction=1e-9).compress(g)
    assert tiny.indices.tolist() == [int(np.argmax(np.abs(g)))]
    whole = GradientCompressor("topk", topk_fraction=1.0).compress(g)
    np.testing.assert_array_equal(whole.indices, np.arange(50))
    np.testing.assert_array_equal(decompress(whole), g)


def test_topk_matches_a_full_sort_reference_over_several_steps():
    compressor = GradientCompressor("topk", topk_fraction=0.05)
    r = np.zeros(200)  # the reference's residual, in float64
    for step in range(10):
        g = random_gradient(200, np.float64, seed=step)
        c = compressor.compress(g)
        v = g + r
        indices = topk_reference(v, 10)
        np.testing.assert_array_equal(c.indices, indices)
        np.testing.assert_allclose(c.values, v[indices], rtol=1e-12)
        r = v.copy()
        r[indices] = 0.0
        np.testing.assert_allclose(compressor.residual, r, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_feedback_loses_nothing_over_many_steps(dtype):
    compressor = GradientCompressor("topk", topk_fraction=0.02)
    sent = np.zeros(500)
    total = np.zeros(500)
    for step in range(40):
        g = random_gradient(500, dtype, seed=step)
        sent += decompress(compressor.compress(g))
        total += g
    assert norm_rel_error(sent + compressor.residual, total) < 1e-5


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 300),
    fraction=st.floats(1e-3, 1.0),
    steps=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_error_feedback_loses_nothing_for_any_size_and_fraction(size, fraction, steps, seed):
    compressor = GradientCompressor("topk", topk_fraction=fraction)
    rng = np.random.default_rng(seed)
    sent = np.zeros(size)
    total = np.zeros(size)
    for _ in range(steps):
        g = rng.standard_normal(size).astype(np.float32)
        sent += decompress(compressor.compress(g))
        total += g
    assert norm_rel_error(sent + compressor.residual, total) < 1e-5


def test_constant_gradient_eventually_sends_every_coordinate():
    # Magnitudes spread over two decades: the small ones only win once their residual grows.
    g = (np.linspace(0.01, 1.0, 100) * np.where(np.arange(100) % 2, 1.0, -1.0)).astype(np.float32)
    k = 5
    # If coordinate i is unsent through step t, each step s ≤ t sent k entries of |v| ≥ s|g_i|,
    # and signs never flip, so k|g_i| t(t + 1)/2 ≤ t Σ|g|: t < 2Σ|g| / (k |g_i|) ≈ 2020 here.
    bound = math.ceil(2 * np.abs(g).sum() / (k * np.abs(g).min()))
    compressor = GradientCompressor("topk", topk_fraction=k / 100)
    ever_sent = np.zeros(100, dtype=bool)
    for _ in range(bound):
        ever_sent[compressor.compress(g).indices] = True
        if ever_sent.all():
            break
    assert ever_sent.all(), f"never sent: {np.flatnonzero(~ever_sent).tolist()}"


@pytest.mark.parametrize(("dtype", "itemsize"), [(np.float32, 4), (np.float64, 8)])
def test_topk_nbytes_counts_values_and_int32_indices(dtype, itemsize):
    c = GradientCompressor("topk", topk_fraction=0.1).compress(random_gradient(1000, dtype))
    k = 100
    assert c.nbytes == k * (itemsize + 4)


def test_indices_widen_to_int64_only_from_two_to_the_31():
    assert _index_dtype(2**31 - 1) == np.int32
    assert _index_dtype(2**31) == np.int64


def test_unknown_kind_raises_naming_it():
    with pytest.raises(ValueError, match=r"unknown compression kind 'int8'"):
        GradientCompressor("int8")


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan, math.inf, True, "0.1"])
def test_topk_fraction_outside_zero_one_raises(fraction):
    with pytest.raises(ValueError, match=r"topk_fraction must be in \(0, 1\]"):
        GradientCompressor("topk", topk_fraction=fraction)


def test_gradient_of_another_shape_than_the_residual_raises():
    compressor = GradientCompressor("topk", topk_fraction=0.1)
    compressor.compress(random_gradient(100))
    with pytest.raises(ValueError, match=r"shape \(101,\) does not match the residual's \(100,\)"):
        compressor.compress(random_gradient(101))


def test_gradient_of_another_dtype_than_the_residual_raises():
    compressor = GradientCompressor("topk", topk_fraction=0.1)
    compressor.compress(random_gradient(100, np.float32))
    with pytest.raises(ValueError, match=r"dtype float64 does not match the residual's float32"):
        compressor.compress(random_gradient(100, np.float64))


@pytest.mark.parametrize(
    ("g", "problem"),
    [
        (np.zeros((3, 4), dtype=np.float32), r"must be 1-D"),
        (np.zeros(5, dtype=np.float16), r"dtype must be one of"),
        (np.zeros(5, dtype=np.int64), r"dtype must be one of"),
    ],
)
def test_gradient_that_is_not_a_float_vector_raises(g, problem):
    with pytest.raises(ValueError, match=problem):
        GradientCompressor("none").compress(g)


def test_reset_forgets_the_residual():
    compressor = GradientCompressor("topk", topk_fraction=0.1)
    compressor.compress(random_gradient(100))
    assert np.count_nonzero(compressor.residual) == 90
    compressor.reset()
    assert compressor.residual is None
    c = compressor.compress(random_gradient(40, seed=4))  # another size is fine after reset
    np.testing.assert_array_equal(c.indices, topk_reference(random_gradient(40, seed=4), 4))


def test_residual_is_read_only_to_callers():
    compressor = GradientCompressor("topk", topk_fraction=0.1)
    compressor.compress(random_gradient(10))
    with pytest.raises(ValueError, match="read-only"):
        compressor.residual[0] = 1.0


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_decompress_into_a_garbage_out_buffer_overwrites_it(kind):
    g = random_gradient(300, seed=7)
    c = GradientCompressor(kind, topk_fraction=0.1).compress(g)
    expected = decompress(c)
    out = np.full(300, np.nan, dtype=np.float32)
    out[::2] = 1e30
    result = decompress(c, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)
    if kind == "topk":
        assert np.count_nonzero(out) == 30


def test_decompress_rejects_an_out_buffer_of_the_wrong_shape_or_dtype():
    c = GradientCompressor("none").compress(random_gradient(10))
    with pytest.raises(ValueError, match=r"out must be \(10,\) float32"):
        decompress(c, out=np.empty(11, dtype=np.float32))
    with pytest.raises(ValueError, match=r"out must be \(10,\) float32"):
        decompress(c, out=np.empty(10, dtype=np.float64))


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_float64_input_keeps_float64(kind):
    g = random_gradient(100, np.float64)
    compressor = GradientCompressor(kind, topk_fraction=0.1)
    c = compressor.compress(g)
    assert c.dtype == "float64"
    assert decompress(c).dtype == np.float64
    if kind != "fp16":
        assert c.values.dtype == np.float64
    if kind == "topk":
        assert compressor.residual.dtype == np.float64
        assert c.nbytes == 10 * (8 + 4)


def test_topk_sends_nan_first_so_divergence_is_seen():
    g = np.array([5.0, np.nan, -3.0, 1.0], dtype=np.float32)
    c = GradientCompressor("topk", topk_fraction=0.25).compress(g)
    assert c.indices.tolist() == [1] and np.isnan(c.values[0])


def test_compressed_rejects_inconsistent_fields():
    values = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match="unknown compression kind"):
        Compressed("zip", 3, "float32", values, None)
    with pytest.raises(ValueError, match="values must have size 4"):
        Compressed("none", 4, "float32", values, None)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        Compressed("topk", 3, "float32", values, np.array([0, 1, 3], dtype=np.int32))
    with pytest.raises(ValueError, match="indices must match values"):
        Compressed("topk", 3, "float32", values, None)
