"""The smooth activations, built on exp: elu, tanh, sigmoid, gelu and softplus.

Every exponential here is taken at an exponent ≤ 0, so nothing overflows, and σ' comes
from whichever of z and a keeps its digits: sigmoid and softplus read a; elu, tanh and
gelu (`needs_z`) keep z, since their σ' from a would cancel in the tails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from worker.activations_base import Activation, scratch, zero_row
from worker.backend import Array, array_module_of


class ELU(Activation):
    """σ(z) = z for z > 0, α(e^z − 1) otherwise (α = 1); σ'(z) = 1 or αe^z.

    σ' needs z: from the output it would be a + α, and for z ≪ 0 (a → −α) that sum
    cancels (0.8 % off at z = −12.5 in float32, exactly 0 below z ≈ −17).
    """

    name = "elu"
    keeps_one = True
    needs_z = True
    work_dtypes = ("float",)
    alpha = 1.0

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        negative = xp.minimum(
            z, zero_row(z), out=scratch(z, work)
        )  # min(z, 0): exp never overflows
        xp.expm1(negative, out=negative)
        negative *= self.alpha  # α(e^{min(z,0)} − 1)
        out = xp.maximum(z, zero_row(z), out=out)
        out += negative
        return out

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(z)
        # αe^{min(z, 0)}: αe^z for z ≤ 0, α for z > 0, where σ' = 1 (the indicator fixes α ≠ 1).
        factor = xp.minimum(z, zero_row(z), out=scratch(z, work))
        xp.exp(factor, out=factor)
        if self.alpha != 1.0:
            factor *= self.alpha
            factor += (1.0 - self.alpha) * (z > 0)
        return xp.multiply(upstream, factor, out=upstream)


class Tanh(Activation):
    """σ(z) = tanh(z); σ'(z) = 1 − a² = 4t / (1 + t)², t = e^{−2|z|}.

    σ' needs z: 1 − a² cancels as |z| grows (a → ±1; exactly 0 past |z| ≈ 9 in
    float32), while 4t / (1 + t)² keeps every digit.
    """

    name = "tanh"
    needs_z = True
    work_dtypes = ("float",)

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        return xp.tanh(z, out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(z)
        t = xp.abs(z, out=scratch(z, work))
        t *= -2.0
        xp.exp(t, out=t)  # t = e^{−2|z|} ∈ (0, 1]
        upstream *= t
        upstream *= 4.0
        t += 1.0
        t *= t  # (1 + t)²
        return xp.divide(upstream, t, out=upstream)


class Sigmoid(Activation):
    """σ(z) = 1 / (1 + e^{−z}); σ'(z) = a(1 − a).

    Evaluated as e^{min(z, 0)} / (1 + e^{−|z|}): both exponents are ≤ 0, so nothing
    overflows, and for z ≪ 0 the result keeps e^z instead of rounding 1 − σ(|z|) to 0.
    """

    name = "sigmoid"
    work_dtypes = ("float",)

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        denominator = xp.abs(z, out=scratch(z, work))  # |z|, taken before out may overwrite z
        out = xp.minimum(z, zero_row(z), out=out)
        xp.exp(out, out=out)  # e^{min(z, 0)}
        xp.negative(denominator, out=denominator)
        xp.exp(denominator, out=denominator)
        denominator += 1.0  # 1 + e^{−|z|}
        return xp.divide(out, denominator, out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        factor = xp.subtract(1.0, a, out=scratch(a, work))
        factor *= a  # a(1 − a)
        return xp.multiply(upstream, factor, out=upstream)


_SIGMOID = Sigmoid()


class GELU(Activation):
    """GELU, tanh form: σ(z) = ½ z (1 + tanh(u)), u = √(2/π)(z + 0.044715 z³).

    Since ½(1 + tanh u) = s = sigmoid(2u), σ(z) = z s and σ'(z) = s (1 + 2 z u' (1 − s)),
    u' = √(2/π)(1 + 3·0.044715 z²). The sigmoid form keeps s exact for z ≪ 0, where
    1 + tanh u would cancel to 0. σ' needs z, not a.
    """

    name = "gelu"
    needs_z = True
    work_dtypes = ("float", "float")
    c = math.sqrt(2.0 / math.pi)
    k = 0.044715

    def _gate(self, z: Array, s: Array, work: Array) -> Array:
        """s = sigmoid(2u), written into `s`; `work` is scratch shaped like z."""
        xp = array_module_of(z)
        xp.multiply(z, z, out=s)
        s *= self.k
        s += 1.0
        s *= z
        s *= 2.0 * self.c  # v = 2u = 2√(2/π)(z + k z³)
        return _SIGMOID.forward(s, out=s, work=[work])

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        s = self._gate(z, scratch(z, work, 0), scratch(z, work, 1))
        return xp.multiply(z, s, out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(z)
        s, g = scratch(z, work, 0), scratch(z, work, 1)
        self._gate(z, s, g)
        upstream *= s
        xp.multiply(z, z, out=g)
        g *= 3.0 * self.k
        g += 1.0
        g *= 2.0 * self.c
        g *= z  # 2 z u'
        xp.subtract(1.0, s, out=s)  # 1 − s
        g *= s
        g += 1.0  # 1 + 2 z u' (1 − s)
        return xp.multiply(upstream, g, out=upstream)


class Softplus(Activation):
    """σ(z) = log(1 + e^z) = max(z, 0) + log1p(e^{−|z|}); σ'(z) = sigmoid(z) = 1 − e^{−a}."""

    name = "softplus"
    work_dtypes = ("float",)

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        tail = xp.abs(z, out=scratch(z, work))
        xp.negative(tail, out=tail)
        xp.exp(tail, out=tail)
        xp.log1p(tail, out=tail)  # log(1 + e^{−|z|}) ∈ (0, log 2]
        out = xp.maximum(z, zero_row(z), out=out)
        out += tail
        return out

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        # e^a = 1 + e^z, so sigmoid(z) = 1 − e^{−a} = −expm1(−a), exact also for tiny a.
        factor = xp.negative(a, out=scratch(a, work))
        xp.expm1(factor, out=factor)
        xp.negative(factor, out=factor)
        return xp.multiply(upstream, factor, out=upstream)
