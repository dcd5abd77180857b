"""Built-in data sets, generated or loaded offline, with fixed train/test splits.

Shapes: X is (N, D) float32; y is (N,) int64 class labels for classification
or (N, K) float32 targets for regression. Every array returned is read-only,
so a cached data set cannot be changed by accident (copy before editing).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.errors import InvalidSpecError, quoted

DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "synthetic/blobs",
    "synthetic/spirals",
    "synthetic/regression",
)

TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# Largest synthetic X (N·D float32 elements, 200 MB) a spec may ask for.
MAX_SYNTHETIC_ELEMENTS = 50_000_000


@dataclass(frozen=True, eq=False)  # identity equality: == on arrays is not a bool
class Dataset:
    """A data set with its train/test split; arrays are read-only."""

    name: str
    task: str  # "classification" | "regression"
    X_train: np.ndarray  # (N, D) float32
    y_train: np.ndarray  # (N,) int64, or (N, K) float32 for regression
    X_test: np.ndarray  # (M, D) float32
    y_test: np.ndarray  # (M,) int64, or (M, K) float32
    num_classes: int  # 0 for regression

    @property
    def n_features(self) -> int:
        """D, the width of one input row."""
        return int(self.X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        """Width of the network's output: C classes, or K regression targets."""
        if self.task == "classification":
            return self.num_classes
        return int(self.y_train.shape[1])


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidSpecError(field, f"must be an integer, got {value!r}")
    if value < low:
        raise InvalidSpecError(field, f"must be >= {low}, got {value}")
    if value > high:
        raise InvalidSpecError(field, f"must be <= {high}, got {value}")


@dataclass(frozen=True)
class DatasetOptions:
    """Parameters of the synthetic generators (``digits`` ignores them)."""

    samples: int = 2000  # N before the split
    features: int = 2  # D
    classes: int = 3  # C (blobs, spirals)
    noise: float = 0.1  # std of the Gaussian noise (spirals, regression)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("samples", self.samples, 10, 1_000_000)
        _check_int("features", self.features, 1, 10_000)
        _check_int("classes", self.classes, 2, 1000)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float, np.floating)):
            raise InvalidSpecError("noise", f"must be a number, got {self.noise!r}")
        if not math.isfinite(self.noise):
            raise InvalidSpecError("noise", f"must be finite, got {self.noise}")
        if self.noise < 0:
            raise InvalidSpecError("noise", f"must be >= 0, got {self.noise}")
        if self.samples * self.features > MAX_SYNTHETIC_ELEMENTS:
            raise InvalidSpecError(
                "samples",
                f"times features must be <= {MAX_SYNTHETIC_ELEMENTS}, "
                f"got {self.samples} x {self.features}",
            )


def load_dataset(name: str, options: DatasetOptions | None = None) -> Dataset:
    """Load built-in data set `name` (one of DATASET_NAMES); never touches the network."""
    options = options or DatasetOptions()
    if name == "digits":
        return _load_digits()
    if name == "synthetic/blobs":
        return _make_blobs(options)
    if name == "synthetic/spirals":
        return _make_spirals(options)
    if name == "synthetic/regression":
        return _make_regression(options)
    raise _unknown(name)


def _unknown(name: str) -> InvalidSpecError:
    names = ", ".join(DATASET_NAMES)
    return InvalidSpecError("name", f"must be one of {names}, got {quoted(name)}")


def input_width(name: str, options: DatasetOptions) -> int:
    """D, the features per row of data set `name`, known without generating it."""
    if name == "digits":
        return 64
    if name not in DATASET_NAMES:
        raise _unknown(name)
    if name == "synthetic/spirals" and options.features != 2:
        raise InvalidSpecError(
            "features", f"must be 2 for synthetic/spirals, got {options.features}"
        )
    return options.features


def output_width(name: str, options: DatasetOptions) -> int:
    """C classes, or K regression targets, of data set `name`, known without generating it."""
    if name == "digits":
        return 10
    if name == "synthetic/regression":
        return 1
    if name not in DATASET_NAMES:
        raise _unknown(name)
    return options.classes


def split_validation(
    X: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out round(fraction·N) random rows of (X (N, D), y (N, ...)) for validation.

    Returns (X_train, y_train, X_val, y_val); each part keeps the rows' original
    order, so fraction 0 gives back all rows and empty (0, D), (0, ...) arrays.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise InvalidSpecError("validation_fraction", f"must be a number, got {fraction!r}")
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 0.5):
        raise InvalidSpecError("validation_fraction", f"must be in [0, 0.5], got {fraction}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    n = len(X)
    n_val = round(fraction * n)
    order = np.random.default_rng(seed).permutation(n)
    val_rows = np.sort(order[:n_val])
    train_rows = np.sort(order[n_val:])
    return X[train_rows], y[train_rows], X[val_rows], y[val_rows]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _split_rows(
    n: int, labels: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled row indices (train, test), round(TEST_FRACTION·n) of them in test.

    With `labels` (n,) the split is stratified: class c gets floor(TEST_FRACTION·count_c)
    test rows, and the rows left over go to the classes with the largest remainders,
    so every class with 5 or more rows appears in the test split.
    """
    n_test = round(TEST_FRACTION * n)
    if labels is None:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    classes, counts = np.unique(labels, return_counts=True)
    quotas = TEST_FRACTION * counts
    per_class = np.floor(quotas).astype(np.int64)
    by_remainder = np.argsort(-(quotas - per_class), kind="stable")
    per_class[by_remainder[: n_test - per_class.sum()]] += 1
    train_parts, test_parts = [], []
    for label, class_test in zip(classes, per_class, strict=True):
        rows = rng.permutation(np.flatnonzero(labels == label))
        test_parts.append(rows[:class_test])
        train_parts.append(rows[class_test:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


def _assemble(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
) -> Dataset:
    """Split X (N, D), y (N,) or (N, K) into a read-only float32 Dataset."""
    is_classification = num_classes > 0
    train, test = _split_rows(len(X), y if is_classification else None, rng)
    X = X.astype(np.float32, copy=False)
    y = y.astype(np.int64 if is_classification else np.float32, copy=False)
    return Dataset(
        name=name,
        task="classification" if is_classification else "regression",
        X_train=_read_only(X[train]),
        y_train=_read_only(y[train]),
        X_test=_read_only(X[test]),
        y_test=_read_only(y[test]),
        num_classes=num_classes,
    )


@functools.lru_cache(maxsize=1)
def _load_digits() -> Dataset:
    """8×8 handwritten digits: 1797 rows, D = 64 in [0, 1], C = 10."""
    table = _digits_table()  # (1797, 65): 64 pixels in 0..16, then the label
    X = np.asarray(table[:, :-1], dtype=np.float32) / np.float32(16.0)  # (1797, 64)
    y = np.asarray(table[:, -1], dtype=np.int64)  # (1797,)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    return _assemble("digits", X, y, 10, rng)


def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits.csv.gz, read without importing scikit-learn (whose
    import costs about a second in every fresh runner process); sklearn's own loader
    where the file is not where it ships."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = Path(root) / "datasets" / "data" / "digits.csv.gz"
            if path.is_file():
                return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def _class_sizes(samples: int, classes: int) -> np.ndarray:
    """Split `samples` rows over `classes` as evenly as possible, (C,) ints."""
    sizes = np.full(classes, samples // classes)
    sizes[: samples % classes] += 1
    return sizes


def _make_blobs(options: DatasetOptions) -> Dataset:
    """C unit-variance Gaussian blobs in D dims, centres uniform in [-10, 10]^D."""
    rng = np.random.default_rng(options.seed)
    centres = rng.uniform(-10.0, 10.0, size=(options.classes, options.features))  # (C, D)
    y = np.repeat(np.arange(options.classes), _class_sizes(options.samples, options.classes))
    X = centres[y] + rng.standard_normal((options.samples, options.features))  # (N, D)
    return _assemble("synthetic/blobs", X, y, options.classes, rng)


def _make_spirals(options: DatasetOptions) -> Dataset:
    """C interleaved 2-D spiral arms of radius 0..1 (CS231n), Gaussian noise on X."""
    input_width("synthetic/spirals", options)  # checks features == 2
    rng = np.random.default_rng(options.seed)
    sizes = _class_sizes(options.samples, options.classes)
    y = np.repeat(np.arange(options.classes), sizes)  # (N,)
    radius = np.concatenate([np.linspace(0.0, 1.0, size) for size in sizes])  # (N,)
    # Arm c starts at angle 2πc/C and winds 4 radians outwards.
    angle = 2.0 * np.pi * y / options.classes + 4.0 * radius
    X = radius[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)  # (N, 2)
    X += options.noise * rng.standard_normal(X.shape)
    return _assemble("synthetic/spirals", X, y, options.classes, rng)


def _make_regression(options: DatasetOptions) -> Dataset:
    """y = sin(X a) + X b + noise·ε, X uniform in [-1, 1]^D, a ~ N(0, 4/D), b ~ N(0, 1/D); K = 1."""
    rng = np.random.default_rng(options.seed)
    D = options.features
    X = rng.uniform(-1.0, 1.0, size=(options.samples, D))  # (N, D)
    a = rng.standard_normal((D, 1)) * (2.0 / math.sqrt(D))  # (D, 1)
    b = rng.standard_normal((D, 1)) / math.sqrt(D)  # (D, 1)
    y = np.sin(X @ a) + X @ b + options.noise * rng.standard_normal((options.samples, 1))
    return _assemble("synthetic/regression", X, y, 0, rng)
