"""Element-wise activations σ with their derivatives σ'.

Each activation has `forward(z) -> a = σ(z)` and `grad(z, a) -> σ'(z)`; `grad` gets the
cached `a` too, because σ' is cheaper from it (tanh' = 1 − a², sigmoid' = a(1 − a)).
There is deliberately no softmax here: its Jacobian is not diagonal, so it exists only
fused with cross-entropy in `worker.losses`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from worker.backend import Array, array_module_of


class Activation(ABC):
    """σ applied element-wise; every array keeps the shape and dtype of `z`."""

    name: str
    # A fact backward can use to skip multiplying δ by a tensor of ones.
    has_unit_grad: bool = False

    @abstractmethod
    def forward(self, z: Array, out: Array | None = None) -> Array:
        """a = σ(z), written into `out` when given (may be `z` itself)."""

    @abstractmethod
    def grad(self, z: Array, a: Array) -> Array:
        """σ'(z), given z and the a = σ(z) that forward returned for it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(Activation):
    """σ(z) = max(z, 0); σ'(z) = 1 where z > 0, else 0 (0 at the kink)."""

    name = "relu"

    def forward(self, z: Array, out: Array | None = None) -> Array:
        xp = array_module_of(z)
        return xp.maximum(z, 0, out=out)

    def grad(self, z: Array, a: Array) -> Array:
        return (z > 0).astype(z.dtype)


class Tanh(Activation):
    """σ(z) = tanh(z); σ'(z) = 1 − a²."""

    name = "tanh"

    def forward(self, z: Array, out: Array | None = None) -> Array:
        xp = array_module_of(z)
        return xp.tanh(z, out=out)

    def grad(self, z: Array, a: Array) -> Array:
        return 1 - a * a


class Sigmoid(Activation):
    """σ(z) = 1 / (1 + e^{−z}); σ'(z) = a(1 − a).

    Evaluated through e = e^{−|z|} ∈ (0, 1], which never overflows:
    σ(z) = 1 / (1 + e) for z ≥ 0 and e / (1 + e) for z < 0.
    """

    name = "sigmoid"

    def forward(self, z: Array, out: Array | None = None) -> Array:
        xp = array_module_of(z)
        e = xp.exp(-xp.abs(z))  # e^{−|z|} ∈ (0, 1]
        r = 1 / (1 + e)  # σ(|z|)
        a = xp.where(z >= 0, r, e * r)  # σ(−|z|) = 1 − σ(|z|) = e·σ(|z|)
        if out is None:
            return a
        out[...] = a
        return out

    def grad(self, z: Array, a: Array) -> Array:
        return a * (1 - a)


class Identity(Activation):
    """σ(z) = z; σ'(z) = 1. Usual on the output layer (logits or regression values)."""

    name = "identity"
    has_unit_grad = True

    def forward(self, z: Array, out: Array | None = None) -> Array:
        """`z` itself (no copy) unless `out` is given."""
        if out is None:
            return z
        out[...] = z
        return out

    def grad(self, z: Array, a: Array) -> Array:
        return array_module_of(z).ones_like(z)


ACTIVATIONS: dict[str, Activation] = {
    activation.name: activation for activation in (ReLU(), Tanh(), Sigmoid(), Identity())
}


def get_activation(name: str) -> Activation:
    """The activation registered as `name`; ValueError listing the known names otherwise."""
    activation = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if activation is None:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return activation
