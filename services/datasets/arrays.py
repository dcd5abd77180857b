"""What an uploaded dataset must hold, and an uploaded file as a Dataset.

X: (N, D) numeric, finite, N >= MIN_ROWS, D <= MAX_FEATURES; y: (N,) integer class
labels 0..C-1 (2 <= C <= MAX_OUTPUTS) for classification, or (N, K) finite float
targets for regression. Errors name the array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.datasets.builtin import Dataset, _assemble
from services.datasets.npz_file import read_arrays
from services.errors import InvalidSpecError

MIN_ROWS = 10
MAX_FEATURES = 10_000
MAX_OUTPUTS = 1_000


def check_arrays(X: np.ndarray, y: np.ndarray) -> tuple[str, int]:
    """Validate an uploaded (X, y); returns (task, outputs). Errors name the array."""
    if X.ndim != 2 or X.dtype.kind not in "fiu":
        raise InvalidSpecError("X", f"must be a 2-D numeric array, got {X.ndim}-D {X.dtype}")
    rows, features = X.shape
    if rows < MIN_ROWS:
        raise InvalidSpecError("X", f"must have at least {MIN_ROWS} rows, got {rows}")
    if not 1 <= features <= MAX_FEATURES:
        raise InvalidSpecError("X", f"must have 1 to {MAX_FEATURES} columns, got {features}")
    if not np.isfinite(X).all():
        raise InvalidSpecError("X", "must hold only finite values (found NaN or inf)")
    if len(y) != rows:
        raise InvalidSpecError("y", f"must have one row per row of X ({rows}), got {len(y)}")
    if y.ndim == 1 and y.dtype.kind in "iu":
        return "classification", _classes(y)
    if y.ndim == 2 and y.dtype.kind == "f":
        return "regression", _targets(y)
    raise InvalidSpecError(
        "y", f"must be (N,) integer labels or (N, K) float targets, got {y.ndim}-D {y.dtype}"
    )


def _classes(y: np.ndarray) -> int:
    """The class count of (N,) integer labels 0..C-1."""
    if y.min() < 0:
        raise InvalidSpecError("y", "class labels must be >= 0")
    classes = int(y.max()) + 1
    if not 2 <= classes <= MAX_OUTPUTS:
        raise InvalidSpecError("y", f"must hold 2 to {MAX_OUTPUTS} classes, got {classes}")
    return classes


def _targets(y: np.ndarray) -> int:
    """The column count of (N, K) float regression targets."""
    if not 1 <= y.shape[1] <= MAX_OUTPUTS:
        raise InvalidSpecError("y", f"must have 1 to {MAX_OUTPUTS} target columns")
    if not np.isfinite(y).all():
        raise InvalidSpecError("y", "must hold only finite values (found NaN or inf)")
    return int(y.shape[1])


def load_uploaded(path: Path, dataset_id: str) -> Dataset:
    """An uploaded file as a Dataset with the same fixed 80/20 test split as the built-ins."""
    X, y = read_arrays(path)
    task, outputs = check_arrays(X, y)
    classes = outputs if task == "classification" else 0
    return _assemble(f"uploaded/{dataset_id[:12]}", X, y, classes, np.random.default_rng(0))
