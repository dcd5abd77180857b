"""Array backend: NumPy on the CPU, CuPy on the GPU, chosen once per worker.

Only `get_array_module` looks at a device name. Everything downstream takes its array
module from the arrays it is handed (`array_module_of`), so the same code runs unchanged
on either backend.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, TypeAlias

import numpy as np

Array: TypeAlias = Any  # numpy.ndarray or cupy.ndarray; one alias keeps the signatures honest

DEVICES = ("cpu", "gpu")
_CUPY_MISSING = "device 'gpu' needs CuPy: pip install cupy-cuda12x"


def _import_cupy() -> ModuleType:
    try:
        return importlib.import_module("cupy")
    except ImportError as error:
        raise RuntimeError(_CUPY_MISSING) from error


def get_array_module(device: str) -> ModuleType:
    """The array module for `device`: `numpy` for "cpu", `cupy` for "gpu".

    CuPy is imported only here and only when asked for, so CPU workers never need it.
    Raises ValueError for an unknown device and RuntimeError when CuPy is missing.
    """
    if device == "cpu":
        return np
    if device == "gpu":
        return _import_cupy()
    raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")


def _is_cupy_array(x: Any) -> bool:
    # A type check by module name: deciding must not import CuPy on a CPU-only machine.
    return type(x).__module__.split(".", 1)[0] == "cupy"


def array_module_of(x: Array) -> ModuleType:
    """The module (`numpy` or `cupy`) whose functions operate on `x`."""
    if type(x) is np.ndarray:  # the hot path: a step asks this a dozen times
        return np
    return _import_cupy() if _is_cupy_array(x) else np


_CONSTANT_ROWS: dict[tuple[str, int, str, float], Array] = {}


def constant_row(like: Array, value: float) -> Array:
    """A read-only (W,) array of `value`, W = like.shape[-1], in like's dtype and module.

    Cached: element-wise steps broadcast it (max(z, 0), row sums by a product with ones)
    without allocating it every time.
    """
    xp = array_module_of(like)
    key = (xp.__name__, like.shape[-1], like.dtype.str, value)
    row = _CONSTANT_ROWS.get(key)
    if row is None:
        row = xp.full(like.shape[-1:], value, dtype=like.dtype)
        if xp is np:
            row.flags.writeable = False
        if len(_CONSTANT_ROWS) > 256:  # many widths: keep the cache small
            _CONSTANT_ROWS.clear()
        _CONSTANT_ROWS[key] = row
    return row


def to_numpy(x: Array) -> np.ndarray:
    """`x` as a host NumPy array: CuPy arrays are copied off the device, NumPy passes through."""
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)
