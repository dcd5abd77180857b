"""Textbook definitions of every activation, loss and the network's loss, for checking.

A second, independent way to compute what `worker.model` computes: plain expressions,
no in-place buffers, no fused bias, any floating dtype. The gradient check
differentiates `loss_value` numerically in extended precision (NumPy's longdouble, 64
significant bits on x86), so its rounding noise sits far below the 1e-7 it checks for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from worker.model import MLP


def activation(name: str, z: np.ndarray) -> np.ndarray:
    """σ(z) by its definition."""
    if name == "identity":
        return z
    if name == "relu":
        return np.where(z > 0, z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    if name == "gelu":  # ½ z (1 + tanh u) = z·sigmoid(2u), which keeps tiny values exact
        u = math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)
        return z * activation("sigmoid", 2 * u)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return np.exp(-np.logaddexp(0, -z))  # 1 / (1 + e^{−z})
    if name == "softplus":
        return np.logaddexp(0, z)  # log(1 + e^z)
    raise ValueError(f"no reference for activation {name!r}")


def loss(
    name: str,
    out: np.ndarray,
    y: np.ndarray,
    *,
    label_smoothing: float = 0.0,
    huber_delta: float = 1.0,
) -> np.ndarray:
    """The batch-mean loss (summed over outputs) by its definition, as a 0-d array."""
    N, K = out.shape
    if name == "softmax_cross_entropy":
        log_p = out - np.logaddexp.reduce(out, axis=1, keepdims=True)  # log softmax
        q = np.full(out.shape, label_smoothing / K, dtype=out.dtype)
        q[np.arange(N), y] += 1 - label_smoothing
        return -(q * log_p).sum() / N
    y = np.asarray(y, dtype=out.dtype).reshape(N, K)
    if name == "binary_cross_entropy":
        return (np.logaddexp(0, out) - out * y).sum() / N  # −y log σ − (1 − y) log(1 − σ)
    r = out - y
    if name == "mse":
        return 0.5 * (r * r).sum() / N
    if name == "huber":
        d = huber_delta
        return np.where(np.abs(r) <= d, 0.5 * r * r, d * (np.abs(r) - 0.5 * d)).sum() / N
    raise ValueError(f"no reference for loss {name!r}")


def loss_value(
    model: MLP,
    theta: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    dropout_masks: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """The model's training loss at θ: data loss + (λ/2) Σ‖W‖², in θ's dtype (0-d)."""
    a = np.asarray(x, dtype=theta.dtype)
    masks = list(dropout_masks or [])
    views = model.layout.views(theta)
    for layer, ((W, b), name) in enumerate(zip(views, model.activation_names, strict=True), 1):
        a = activation(name, a @ W + b)
        if layer <= len(masks) and masks[layer - 1] is not None:
            a = a * np.asarray(masks[layer - 1], dtype=theta.dtype)
    options = {"label_smoothing": 0.0, "huber_delta": 1.0}
    for option in options:
        options[option] = getattr(model.loss_fn, option, options[option])
    value = loss(model.loss_name, a, y, **options)
    penalty = sum((W * W).sum() for W, _ in views)
    return value + 0.5 * model.l2 * penalty
