"""The piecewise-linear activations: identity, relu and leaky_relu.

σ' is constant on each side of 0, so backward reads it from the sign of the output a
(a > 0 exactly when z > 0) and forward may overwrite z with a: none of them keeps z.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.activations_base import Activation, scratch, zero_row
from worker.backend import Array, array_module_of


class Identity(Activation):
    """σ(z) = z; σ'(z) = 1. Usual on the output layer (logits or regression values)."""

    name = "identity"
    keeps_one = True
    has_unit_grad = True

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        """`z` itself (no copy) unless `out` is given."""
        if out is None or out is z:
            return z
        out[...] = z
        return out

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        return upstream


class ReLU(Activation):
    """σ(z) = max(z, 0); σ'(z) = 1[a > 0] (0 at the kink)."""

    name = "relu"
    keeps_one = True
    work_dtypes = ("bool",)  # the mask 1[a > 0] in backward

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        return xp.maximum(z, zero_row(z), out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        mask = xp.greater(a, 0, out=scratch(a, work, 0, bool))  # 1[a > 0] = 1[z > 0]
        return xp.multiply(upstream, mask, out=upstream)


class LeakyReLU(Activation):
    """σ(z) = z for z > 0, αz otherwise (α = 0.01); σ'(z) = 1 or α, read from a's sign."""

    name = "leaky_relu"
    keeps_one = True
    work_dtypes = ("float",)
    alpha = 0.01

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        scaled = xp.multiply(z, self.alpha, out=scratch(z, work))  # αz
        return xp.maximum(z, scaled, out=out)  # max(z, αz) for 0 < α < 1

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        factor = xp.greater(a, 0, out=scratch(a, work))  # 1[a > 0] as 0.0 / 1.0
        factor *= 1.0 - self.alpha
        factor += self.alpha  # σ' = α + (1 − α)·1[a > 0]
        return xp.multiply(upstream, factor, out=upstream)
