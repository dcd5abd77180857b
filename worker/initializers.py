"""Seeded weight initialisers: He (normal) and Glorot (uniform), chosen per layer.

    he:      W ~ N(0, 2/in)                                keeps relu-like layers' variance
    glorot:  W ~ U(−r, r), r = sqrt(6/(in + out))          keeps tanh/sigmoid/linear layers'
    auto:    he for relu-like activations (relu, leaky_relu, elu, gelu), glorot otherwise

Biases start at 0. Draws are float64 from one `np.random.default_rng(seed)`, layer by
layer, then cast, so the same seed gives the same θ in every dtype's precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from worker.activations import RELU_LIKE, get_activation

INITIALIZERS: tuple[str, ...] = ("auto", "he", "glorot")


def resolve_initializers(init: str | Sequence[str], activations: Sequence[str]) -> list[str]:
    """One of "he" / "glorot" per layer, from `init` (one name, or one per layer)."""
    names = [init] * len(activations) if isinstance(init, str) else list(init)
    if len(names) != len(activations):
        raise ValueError(
            f"init must name one initialiser or one per layer ({len(activations)}), "
            f"got {len(names)}"
        )
    resolved = []
    for name, activation in zip(names, activations, strict=True):
        if name not in INITIALIZERS:
            raise ValueError(f"unknown init {name!r}; expected one of {', '.join(INITIALIZERS)}")
        get_activation(activation)  # an unknown activation fails here, not silently as Glorot
        if name == "auto":
            name = "he" if activation in RELU_LIKE else "glorot"
        resolved.append(name)
    return resolved


def draw_weights(rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> np.ndarray:
    """A float64 (fan_in, fan_out) W drawn by `scheme` ("he" or "glorot")."""
    if scheme == "he":
        return rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))
