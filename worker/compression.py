"""Gradient compression for a worker's pushes to the parameter server: none, fp16 or top-k.

fp16 sends every coordinate of g at half precision (relative error ≤ 2⁻¹¹ in float16's
normal range, |g| ≥ 6.1e-5); top-k sends only the k coordinates of largest magnitude,
as (index, value) pairs. Top-k alone would drop the small coordinates for good, so it
keeps an error-feedback residual r (Seide et al. 2014, "1-bit SGD"; Stich et al. 2018,
"Sparsified SGD with memory"): what is not sent this step is added to the next gradient,

    v_t = g_t + r_{t−1},   ĝ_t = top_k(v_t),   r_t = v_t − ĝ_t,   r_0 = 0     # (P,)

so Σ_{t≤T} ĝ_t + r_T = Σ_{t≤T} g_t: nothing is lost, only delayed, and a coordinate
whose gradient keeps its sign grows in r until it is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COMPRESSIONS = ("none", "fp16", "topk")

_DENSE_DTYPES = ("float32", "float64")
_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_INT32_LIMIT = 2**31  # P from here on needs int64 indices


def _index_dtype(size: int) -> type[np.signedinteger]:
    """int32 indices while every index in [0, P) fits, int64 from P = 2³¹ on."""
    return np.int32 if size < _INT32_LIMIT else np.int64


def _topk_count(fraction: float, size: int) -> int:
    """k = max(1, ⌈fraction · P⌉), and never more than P (so 0 when P = 0)."""
    return min(size, max(1, math.ceil(fraction * size)))


@dataclass(frozen=True)
class Compressed:
    """One compressed gradient (or gradient slice) of `size` elements of dtype `dtype`.

    kind: one of COMPRESSIONS.
    size: P, the length of the dense vector.
    dtype: "float32" or "float64", the dense vector's dtype.
    values: none: (P,) in `dtype`; fp16: (P,) float16; topk: (k,) in `dtype`.
    indices: topk: (k,) int32 (int64 if P ≥ 2³¹), sorted ascending; None otherwise.
    """

    kind: str
    size: int
    dtype: str
    values: np.ndarray
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in COMPRESSIONS:
            raise ValueError(
                f"unknown compression kind {self.kind!r}; expected one of {COMPRESSIONS}"
            )
        if self.dtype not in _DENSE_DTYPES:
            raise ValueError(f"dtype must be one of {_DENSE_DTYPES}, got {self.dtype!r}")
        if self.size < 0:
            raise ValueError(f"size must be ≥ 0, got {self.size}")
        if self.values.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {self.values.shape}")
        if self.kind == "topk":
            self._check_topk()
            return
        if self.indices is not None:
            raise ValueError(f"{self.kind} carries no indices")
        if self.values.size != self.size:
            raise ValueError(
                f"{self.kind} values must have size {self.size}, got {self.values.size}"
            )
        values_dtype = np.float16 if self.kind == "fp16" else np.dtype(self.dtype)
        if self.values.dtype != values_dtype:
            raise ValueError(f"{self.kind} values must be {values_dtype}, got {self.values.dtype}")

    def _check_topk(self) -> None:
        if self.indices is None or self.indices.shape != self.values.shape:
            shape = None if self.indices is None else self.indices.shape
            raise ValueError(f"topk indices must match values {self.values.shape}, got {shape}")
        if self.values.dtype != np.dtype(self.dtype):
            raise ValueError(f"topk values must be {self.dtype}, got {self.values.dtype}")
        if self.indices.dtype.kind != "i":
            raise ValueError(f"topk indices must be signed integers, got {self.indices.dtype}")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.size):
            raise ValueError(f"topk indices must lie in [0, {self.size})")

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the values, plus the indices for top-k."""
        index_bytes = 0 if self.indices is None else self.indices.nbytes
        return int(self.values.nbytes + index_bytes)


class GradientCompressor:
    """Compresses successive gradients of one worker; top-k keeps an error-feedback residual.

    One instance per worker (and per gradient slice, if slices are pushed separately): the
    residual r (P,) belongs to the stream of gradients it has seen.
    """

    def __init__(self, kind: str = "none", topk_fraction: float = 0.01) -> None:
        if kind not in COMPRESSIONS:
            raise ValueError(f"unknown compression kind {kind!r}; expected one of {COMPRESSIONS}")
        if (
            isinstance(topk_fraction, bool)
            or not isinstance(topk_fraction, int | float)
            or not 0.0 < topk_fraction <= 1.0  # also rejects NaN
        ):
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction!r}")
        self.kind = kind
        self.topk_fraction = float(topk_fraction)
        self._residual: np.ndarray | None = None

    @property
    def residual(self) -> np.ndarray | None:
        """r (P,) in g's dtype, what top-k has not sent yet (read-only view); None before use."""
        if self._residual is None:
            return None
        view = self._residual.view()
        view.flags.writeable = False
        return view

    def reset(self) -> None:
        """Forget the residual: the next top-k gradient starts from r = 0, of any size."""
        self._residual = None

    def compress(self, g: np.ndarray) -> Compressed:
        """Compress g (P,) float32/float64; g is neither modified nor kept.

        fp16 clips |g| beyond 65504 (±inf included) to ±65504 so no inf is sent; NaN stays
        NaN so the parameter server still sees a divergence. top-k sends the k entries of
        largest |g + r|; a NaN counts as the largest, so it is sent too.
        """
        if g.ndim != 1:
            raise ValueError(f"gradient must be 1-D (P,), got shape {g.shape}")
        if g.dtype.name not in _DENSE_DTYPES:
            raise ValueError(f"gradient dtype must be one of {_DENSE_DTYPES}, got {g.dtype}")
        if self.kind == "none":
            return Compressed("none", g.size, g.dtype.name, g.copy())
        if self.kind == "fp16":
            half = np.empty(g.size, dtype=np.float16)
            np.clip(g, -_FLOAT16_MAX, _FLOAT16_MAX, out=half, casting="same_kind")
            return Compressed("fp16", g.size, g.dtype.name, half)
        return self._compress_topk(g)

    def _compress_topk(self, g: np.ndarray) -> Compressed:
        size = g.size
        if self._residual is None:
            self._residual = np.zeros(size, dtype=g.dtype)
        elif self._residual.shape != g.shape:
            raise ValueError(
                f"gradient shape {g.shape} does not match the residual's {self._residual.shape}; "
                "call reset() before compressing gradients of another size"
            )
        elif self._residual.dtype != g.dtype:
            raise ValueError(
                f"gradient dtype {g.dtype} does not match the residual's {self._residual.dtype}; "
                "call reset() before switching dtype"
            )
        v = self._residual
        v += g  # v = g + r, in r's own buffer  # (P,)
        k = _topk_count(self.topk_fraction, size)
        if k == size:
            indices = np.arange(size, dtype=_index_dtype(size))
        else:
            top = np.argpartition(np.abs(v), size - k)[size - k :]  # (k,) unordered
            top.sort()
            indices = top.astype(_index_dtype(size), copy=False)
        values = v[indices]  # (k,), a copy
        v[indices] = 0  # r ← v with the sent entries zeroed
        return Compressed("topk", size, g.dtype.name, values, indices)


def decompress(c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
    """The dense (P,) vector in c.dtype; writes into `out` (zeroed first for topk) when given.

    out: None, or a writable (P,) array of dtype c.dtype (its contents are ignored).
    """
    dtype = np.dtype(c.dtype)
    if out is None:
        out = np.empty(c.size, dtype=dtype)
    elif out.shape != (c.size,) or out.dtype != dtype:
        raise ValueError(
            f"out must be ({c.size},) {dtype} to hold this gradient, got {out.shape} {out.dtype}"
        )
    if c.kind == "topk":
        out.fill(0)
        out[c.indices] = c.values
    else:
        np.copyto(out, c.values)  # fp16 widens exactly to float32/float64
    return out
