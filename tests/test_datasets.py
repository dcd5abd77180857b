"""Built-in data sets: shapes, dtypes, fixed and stratified splits, determinism, validation."""

from __future__ import annotations

import numpy as np
import pytest

from services.datasets import (
    DATASET_NAMES,
    Dataset,
    DatasetOptions,
    builtin,
    load_dataset,
    split_validation,
)
from services.errors import InvalidSpecError

SYNTHETIC = [name for name in DATASET_NAMES if name.startswith("synthetic/")]


def rows(X: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.ascontiguousarray(X)}


def assert_same(a: Dataset, b: Dataset) -> None:
    for part in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))


# --- digits -----------------------------------------------------------------------


def test_digits_shapes_and_dtypes():
    data = load_dataset("digits")
    assert data.task == "classification"
    assert data.num_classes == 10
    assert data.n_features == 64
    assert data.n_outputs == 10
    assert len(data.X_train) + len(data.X_test) == 1797
    assert abs(len(data.X_test) - 360) <= 1
    assert data.X_train.shape == (len(data.y_train), 64)
    assert data.X_test.shape == (len(data.y_test), 64)
    assert data.X_train.dtype == data.X_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int64
    for X in (data.X_train, data.X_test):
        assert X.min() >= 0.0
        assert X.max() <= 1.0
    assert data.X_train.max() == 1.0  # scaled by 16, not by the observed max


def test_digits_split_is_fixed_across_calls_and_options():
    first = load_dataset("digits")
    builtin._load_digits.cache_clear()  # reload from disk, not from the cache
    again = load_dataset("digits", DatasetOptions(samples=50, features=3, classes=4, seed=7))
    assert_same(first, again)


def test_digits_split_is_stratified():
    data = load_dataset("digits")
    test_counts = np.bincount(data.y_test, minlength=10)
    total_counts = test_counts + np.bincount(data.y_train, minlength=10)
    assert (test_counts > 0).all()
    # Each class holds its share of the test split to within one row.
    assert (np.abs(test_counts - 0.2 * total_counts) <= 1).all()


def test_digits_train_and_test_partition_the_data():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert not rows(data.X_train) & rows(data.X_test)
    original = np.column_stack([load_digits().data / 16.0, load_digits().target])
    split = np.concatenate(
        [
            np.column_stack([data.X_train, data.y_train]),
            np.column_stack([data.X_test, data.y_test]),
        ]
    )
    assert rows(split.astype(np.float64)) == rows(original.astype(np.float64))


def test_cached_arrays_cannot_be_mutated():
    data = load_dataset("digits")
    with pytest.raises(ValueError, match="read-only"):
        data.X_train[0, 0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        data.y_test[0] = 3
    assert load_dataset("digits").X_train[0, 0] <= 1.0


# --- synthetic generators -----------------------------------------------------------


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_deterministic_per_seed(name):
    options = DatasetOptions(samples=200, seed=3)
    assert_same(load_dataset(name, options), load_dataset(name, options))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_differs_across_seeds(name):
    a = load_dataset(name, DatasetOptions(samples=200, seed=1))
    b = load_dataset(name, DatasetOptions(samples=200, seed=2))
    assert not np.array_equal(a.X_train, b.X_train)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_split_is_twenty_percent_and_disjoint(name):
    data = load_dataset(name, DatasetOptions(samples=500))
    assert len(data.X_test) == 100
    assert len(data.X_train) == 400
    assert len(data.y_train) == 400
    assert len(data.y_test) == 100
    assert data.X_train.dtype == np.float32
    assert not rows(data.X_train) & rows(data.X_test)


def test_blobs_shapes_and_classes():
    options = DatasetOptions(samples=1000, features=5, classes=4, seed=0)
    data = load_dataset("synthetic/blobs", options)
    assert data.task == "classification"
    assert data.X_train.shape == (800, 5)
    assert data.y_train.shape == (800,)
    assert data.y_train.dtype == np.int64
    assert (data.num_classes, data.n_features, data.n_outputs) == (4, 5, 4)
    assert set(np.unique(data.y_test)) == {0, 1, 2, 3}
    assert set(np.unique(data.y_train)) == {0, 1, 2, 3}


def test_spirals_shapes_and_noise():
    quiet = load_dataset("synthetic/spirals", DatasetOptions(samples=300, classes=5, noise=0.0))
    noisy = load_dataset("synthetic/spirals", DatasetOptions(samples=300, classes=5, noise=0.5))
    assert quiet.X_train.shape == (240, 2)
    assert quiet.num_classes == quiet.n_outputs == 5
    assert set(np.unique(quiet.y_test)) == set(range(5))
    # Without noise every point lies on an arm of radius at most 1.
    assert np.linalg.norm(quiet.X_train, axis=1).max() <= 1.0 + 1e-6
    assert np.linalg.norm(noisy.X_train, axis=1).max() > 1.0


@pytest.mark.parametrize("features", [1, 3, 10])
def test_spirals_reject_features_other_than_two(features):
    with pytest.raises(InvalidSpecError) as caught:
        load_dataset("synthetic/spirals", DatasetOptions(features=features))
    assert caught.value.field == "features"


def test_regression_targets_are_n_by_one_float32():
    data = load_dataset("synthetic/regression", DatasetOptions(samples=100, features=4))
    assert data.task == "regression"
    assert data.num_classes == 0
    assert data.X_train.shape == (80, 4)
    assert data.y_train.shape == (80, 1)
    assert data.y_test.shape == (20, 1)
    assert data.y_train.dtype == data.y_test.dtype == np.float32
    assert data.n_outputs == 1
    assert np.isfinite(data.y_train).all()


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples", 3),
        ("samples", 1_000_001),
        ("samples", 100.0),
        ("features", 0),
        ("features", 10_001),
        ("classes", 1),
        ("classes", 1001),
        ("noise", -0.1),
        ("noise", float("nan")),
        ("noise", float("inf")),
        ("seed", -1),
    ],
)
def test_bad_options_name_the_field(field, value):
    with pytest.raises(InvalidSpecError) as caught:
        DatasetOptions(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} ")


def test_bad_option_message():
    with pytest.raises(InvalidSpecError, match=r"^samples must be >= 10, got 3$"):
        DatasetOptions(samples=3)


def test_unknown_name_rejected():
    with pytest.raises(InvalidSpecError, match="got 'foo'") as caught:
        load_dataset("foo")
    assert caught.value.field == "name"
    assert "digits, synthetic/blobs" in str(caught.value)


# --- split_validation ---------------------------------------------------------------


def test_split_validation_sizes_and_partition():
    X = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.arange(100, dtype=np.int64)
    X_train, y_train, X_val, y_val = split_validation(X, y, 0.2, seed=0)
    assert X_train.shape == (80, 2)
    assert y_train.shape == (80,)
    assert X_val.shape == (20, 2)
    assert y_val.shape == (20,)
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == list(range(100))
    np.testing.assert_array_equal(X_val[:, 0], 2 * y_val)  # rows stay paired with labels


def test_split_validation_seeded():
    X = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    a = split_validation(X, y, 0.3, seed=4)
    b = split_validation(X, y, 0.3, seed=4)
    c = split_validation(X, y, 0.3, seed=5)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a[3], c[3])


def test_split_validation_zero_fraction_gives_empty_validation():
    X = np.ones((30, 4), dtype=np.float32)
    y = np.ones((30, 1), dtype=np.float32)
    X_train, y_train, X_val, y_val = split_validation(X, y, 0.0, seed=0)
    assert X_train.shape == (30, 4)
    assert y_train.shape == (30, 1)
    assert X_val.shape == (0, 4)
    assert y_val.shape == (0, 1)
    assert X_val.dtype == np.float32


@pytest.mark.parametrize("fraction", [-0.1, 0.51, 1.0, float("nan")])
def test_split_validation_rejects_bad_fraction(fraction):
    X = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(InvalidSpecError) as caught:
        split_validation(X, np.zeros(10), fraction, seed=0)
    assert caught.value.field == "validation_fraction"
