"""y ← y + αx in one pass, through the BLAS that NumPy itself links (level-1 axpy).

NumPy has no fused multiply-add for arrays, so `y += alpha * x` reads and writes twice.
BLAS axpy does it once. It must be NumPy's own BLAS: a second BLAS in the process (e.g.
SciPy's) keeps its own thread pool, whose spinning threads starve NumPy's matrix
products when both run more than one thread. NumPy does not expose axpy, so this finds
its bundled OpenBLAS (scipy-openblas builds, via threadpoolctl) and calls cblas axpy
through ctypes; where that is not available, `axpy` falls back to two NumPy passes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info

# (symbol, integer type) of cblas_?axpy in scipy-openblas builds: ILP64, then LP64.
_SYMBOLS = (("scipy_cblas_{}axpy64_", ctypes.c_int64), ("scipy_cblas_{}axpy", ctypes.c_int32))
_REAL = {"f": ctypes.c_float, "d": ctypes.c_double}


def _numpy_blas_library() -> ctypes.CDLL | None:
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))  # site-packages
    for info in threadpool_info():
        path = info.get("filepath", "")
        folder = os.path.basename(os.path.dirname(path))  # numpy.libs (Linux), .dylibs (macOS)
        is_numpys = folder in ("numpy.libs", ".dylibs") and path.startswith(numpy_dir)
        if info.get("user_api") == "blas" and is_numpys:
            return ctypes.CDLL(path)
    return None


def _load() -> dict[str, Callable[[int, float, int, int], None]]:
    try:
        library = _numpy_blas_library()
    except OSError:
        return {}
    if library is None:
        return {}
    kernels = {}
    for char, real in _REAL.items():
        for pattern, integer in _SYMBOLS:
            function = getattr(library, pattern.format("s" if char == "f" else "d"), None)
            if function is None:
                continue
            function.restype = None
            function.argtypes = [integer, real, ctypes.c_void_p, integer, ctypes.c_void_p, integer]
            kernels[char] = function
            break
    return {char: f for char, f in kernels.items() if _works(f, char)}


def _works(function: Callable, char: str) -> bool:
    """The kernel computes [1, 2, 3] + 2·[1, 1, 1] = [3, 4, 5] (the ABI guessed right)."""
    x = np.ones(3, dtype=char)
    y = np.arange(1, 4, dtype=char)
    function(3, 2.0, x.ctypes.data, 1, y.ctypes.data, 1)
    return y.tolist() == [3.0, 4.0, 5.0]


_KERNELS = _load()


def has_fused_axpy(dtype: np.dtype | type) -> bool:
    """Whether `axpy` runs as one BLAS pass for arrays of `dtype`."""
    return np.dtype(dtype).char in _KERNELS


def axpy(alpha: float, x: np.ndarray, y: np.ndarray, work: np.ndarray | None = None) -> None:
    """y ← y + αx in place, for flat arrays of one shape.

    One BLAS pass when both are C-contiguous, of the same float32/float64 dtype, and y
    is writable; otherwise NumPy's two passes, through `work` (like y) when given.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {x.shape} and {y.shape}")
    kernel = _KERNELS.get(y.dtype.char) if x.dtype == y.dtype else None
    if (
        kernel is not None
        and x.ndim == 1
        and x.flags.c_contiguous
        and y.flags.c_contiguous
        and y.flags.writeable
    ):
        kernel(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
        return
    scaled = np.multiply(x, alpha, out=work)
    y += scaled
