"""Element-wise activations σ with in-place forward and backward passes.

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
works on NumPy and CuPy arrays alike. There is deliberately no softmax: its Jacobian is
not diagonal, so it exists only fused with cross-entropy in `worker.losses`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from worker.backend import Array, array_module_of, constant_row

_ZERO_ROWS: dict[tuple, Array] = {}


def _zero_row(z: Array) -> Array:
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


def _scratch(like: Array, work: Sequence[Array], index: int = 0, dtype: object = None) -> Array:
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
        return xp.maximum(z, _zero_row(z), out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        mask = xp.greater(a, 0, out=_scratch(a, work, 0, bool))  # 1[a > 0] = 1[z > 0]
        return xp.multiply(upstream, mask, out=upstream)


class LeakyReLU(Activation):
    """σ(z) = z for z > 0, αz otherwise (α = 0.01); σ'(z) = 1 or α, read from a's sign."""

    name = "leaky_relu"
    keeps_one = True
    work_dtypes = ("float",)
    alpha = 0.01

    def forward(self, z: Array, out: Array | None = None, work: Sequence[Array] = ()) -> Array:
        xp = array_module_of(z)
        scaled = xp.multiply(z, self.alpha, out=_scratch(z, work))  # αz
        return xp.maximum(z, scaled, out=out)  # max(z, αz) for 0 < α < 1

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        factor = xp.greater(a, 0, out=_scratch(a, work))  # 1[a > 0] as 0.0 / 1.0
        factor *= 1.0 - self.alpha
        factor += self.alpha  # σ' = α + (1 − α)·1[a > 0]
        return xp.multiply(upstream, factor, out=upstream)


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
            z, _zero_row(z), out=_scratch(z, work)
        )  # min(z, 0): exp never overflows
        xp.expm1(negative, out=negative)
        negative *= self.alpha  # α(e^{min(z,0)} − 1)
        out = xp.maximum(z, _zero_row(z), out=out)
        out += negative
        return out

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(z)
        # αe^{min(z, 0)}: αe^z for z ≤ 0, α for z > 0, where σ' = 1 (the indicator fixes α ≠ 1).
        factor = xp.minimum(z, _zero_row(z), out=_scratch(z, work))
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
        t = xp.abs(z, out=_scratch(z, work))
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
        denominator = xp.abs(z, out=_scratch(z, work))  # |z|, taken before out may overwrite z
        out = xp.minimum(z, _zero_row(z), out=out)
        xp.exp(out, out=out)  # e^{min(z, 0)}
        xp.negative(denominator, out=denominator)
        xp.exp(denominator, out=denominator)
        denominator += 1.0  # 1 + e^{−|z|}
        return xp.divide(out, denominator, out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        factor = xp.subtract(1.0, a, out=_scratch(a, work))
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
        s = self._gate(z, _scratch(z, work, 0), _scratch(z, work, 1))
        return xp.multiply(z, s, out=out)

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(z)
        s, g = _scratch(z, work, 0), _scratch(z, work, 1)
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
        tail = xp.abs(z, out=_scratch(z, work))
        xp.negative(tail, out=tail)
        xp.exp(tail, out=tail)
        xp.log1p(tail, out=tail)  # log(1 + e^{−|z|}) ∈ (0, log 2]
        out = xp.maximum(z, _zero_row(z), out=out)
        out += tail
        return out

    def backward(
        self, upstream: Array, z: Array | None, a: Array, work: Sequence[Array] = ()
    ) -> Array:
        xp = array_module_of(a)
        # e^a = 1 + e^z, so sigmoid(z) = 1 − e^{−a} = −expm1(−a), exact also for tiny a.
        factor = xp.negative(a, out=_scratch(a, work))
        xp.expm1(factor, out=factor)
        xp.negative(factor, out=factor)
        return xp.multiply(upstream, factor, out=upstream)


ACTIVATIONS: dict[str, Activation] = {
    activation.name: activation
    for activation in (
        Identity(),
        ReLU(),
        LeakyReLU(),
        ELU(),
        GELU(),
        Tanh(),
        Sigmoid(),
        Softplus(),
    )
}

# Layers whose activation is relu-like get He initialisation under init="auto".
RELU_LIKE: frozenset[str] = frozenset({"relu", "leaky_relu", "elu", "gelu"})


def get_activation(name: str) -> Activation:
    """The activation registered as `name`; ValueError listing the known names otherwise."""
    activation = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if activation is None:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return activation
