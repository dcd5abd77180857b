"""The `Activation` interface: element-wise σ with in-place forward and backward passes.

Each activation has

    forward(z, out)               a = σ(z), written into `out` (which may be `z` itself)
    backward(upstream, z, a)      upstream ← upstream ⊙ σ'(z), in place: ∂loss/∂a → δ

and a convenience `grad(z, a) -> σ'(z)` for tests. Backward reads σ' from the cached
output `a` wherever that loses no digits (relu' = 1[a > 0], sigmoid' = a(1 − a),
softplus' = −expm1(−a)), so forward can overwrite z with a and the model keeps one
buffer per layer; gelu, elu and tanh (`needs_z`) keep z, because their σ' from a would
cancel for z ≪ 0 (elu: a + α as a → −α; tanh: 1 − a² as a → ±1).

`work` holds scratch buffers shaped like `z` (the model preallocates them, as listed in
`work_dtypes`); without them the functions allocate their own. Every function here
works on NumPy and CuPy arrays alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from worker.backend import Array, array_module_of, constant_row

_ZERO_ROWS: dict[tuple, Array] = {}


def zero_row(z: Array) -> Array:
    """Zeros shaped like z's last axis: max(z, row) runs numpy's contiguous loop, which is
    about twice as fast as its loop for a scalar 0.

    Looked up by (array type, width, dtype) here first: `constant_row` builds a string
    key, which costs more than the relu pass it feeds on a small batch.
    """
    key = (type(z), z.shape[-1], z.dtype)
    row = _ZERO_ROWS.get(key)
    if row is None:
        if len(_ZERO_ROWS) > 64:  # many widths: keep the cache small
            _ZERO_ROWS.clear()
        row = _ZERO_ROWS[key] = constant_row(z, 0.0)
    return row


def scratch(like: Array, work: Sequence[Array], index: int = 0, dtype: object = None) -> Array:
    """work[index] when the caller preallocated it, else a new buffer shaped like `like`."""
    if index < len(work):
        return work[index]
    return array_module_of(like).empty(like.shape, dtype=dtype or like.dtype)


class Activation(ABC):
    """σ applied element-wise; every array keeps the shape and dtype of `z`."""

    name: str
    # Facts the model uses to skip work: δ = upstream when σ' ≡ 1; z kept only when needed;
    # σ(1) = 1 leaves the workspace's column of ones intact.
    has_unit_grad: bool = False
    needs_z: bool = False
    keeps_one: bool = False
    # dtypes of the scratch buffers shaped like z that forward and backward use:
    # "bool", or "float" for the compute dtype.
    work_dtypes: tuple[str, ...] = ()

    @abstractmethod
    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        """a = σ(z), written into `out` when given (may be `z` itself)."""

    @abstractmethod
    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        """upstream ⊙ σ'(z) written over `upstream` and returned (∂loss/∂a → ∂loss/∂z)."""

    def grad(self, z: Array, a: Array) -> Array:
        """σ'(z) as a new array, given z and the a = σ(z) that forward returned for it."""
        ones = array_module_of(z).ones_like(z)
        return self.backward(ones, z, a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
