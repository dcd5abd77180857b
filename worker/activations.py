"""Element-wise activations σ by name: `get_activation("relu")`, `ACTIVATIONS`.

    identity, relu, leaky_relu            piecewise linear    `worker.activations_piecewise`
    elu, tanh, sigmoid, gelu, softplus    smooth, built on exp  `worker.activations_smooth`

Each is an `Activation` (`worker.activations_base`): `forward(z, out)` writes a = σ(z),
`backward(upstream, z, a)` turns ∂loss/∂a into δ = ∂loss/∂a ⊙ σ'(z), both in place. The
classes are imported here too, so `from worker.activations import ReLU` keeps working.
There is deliberately no softmax: its Jacobian is not diagonal, so it exists only fused
with cross-entropy (`softmax_cross_entropy` in `worker.loss_functions`).
"""

from __future__ import annotations

from worker.activations_base import Activation
from worker.activations_piecewise import Identity, LeakyReLU, ReLU
from worker.activations_smooth import ELU, GELU, Sigmoid, Softplus, Tanh

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
