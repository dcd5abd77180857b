"""The optimizer update rules over one flat θ buffer (P,), applied in place by the parameter
server.

With gradient g, learning rate η (this step's, from the schedule), weight decay λ and t
the step number (from 1):

    g ← g · min(1, c / ‖g‖)                            (clip_norm c: global-norm clipping)
    g ← g + λθ                                        (L2 weight decay; every kind but adamw)
    sgd:       θ ← θ − η g
    momentum:  v ← μ v + g;  θ ← θ − η v               (PyTorch's convention)
    nesterov:  v ← μ v + g;  θ ← θ − η (g + μ v)       (PyTorch's nesterov=True)
    adam:      m ← β1 m + (1 − β1) g
               v ← β2 v + (1 − β2) g²
               θ ← θ − η m̂ / (√v̂ + ε),  m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)
    adamw:     θ ← θ (1 − ηλ), then adam's step with the raw g (decoupled decay)
    rmsprop:   s ← ρ s + (1 − ρ) g²;  θ ← θ − η g / (√s + ε)

Every update writes into θ and preallocated buffers with ``out=``; the gradient is never
modified. Adam is computed in Kingma & Ba's equivalent form θ ← θ − η_t m / (√v + ε̂)
with η_t = η √(1 − β2ᵗ) / (1 − β1ᵗ) and ε̂ = ε √(1 − β2ᵗ), which folds both bias
corrections into two scalars. θ ← θ + αx steps are one pass of BLAS axpy where NumPy's
BLAS offers it (`worker.blas`).

This module holds the update rules and their state only; what they take (`OptimizerConfig`,
`LRSchedule`, η_t from `learning_rate_at`) and its validation live in `optimizer_config`,
re-exported here.

`OptimizerConfig(weight_decay=λ)` decays all of θ inside the update. The model's own
`MLP(l2=λ)` instead adds (λ/2)‖W‖² to the loss (weights only, gradient-checked, part of
the reported loss); with plain SGD both add λW to W's gradient. Use one or the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.paramserver.optimizer_config import (
    OPTIMIZER_KINDS,
    SCHEDULE_KINDS,
    LRSchedule,
    OptimizerConfig,
    learning_rate_at,
)
from worker.blas import axpy, has_fused_axpy

# The optimizer's mathematical state per kind (what a checkpoint must keep).
_STATE_BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("velocity",),
    "nesterov": ("velocity",),
    "adam": ("m", "v"),
    "adamw": ("m", "v"),
    "rmsprop": ("square_avg",),
}


@dataclass(eq=False)  # identity equality: == on arrays is not a bool
class OptimizerState:
    """Updates applied so far and the optimizer's buffers, each (P,) like θ.

    `buffers` (see _STATE_BUFFERS) and `step` are the whole state to checkpoint.
    `scratch` holds work space reused between steps; it carries no information and is
    rebuilt on demand (so a restored state may leave it empty). `last_gradient_norm` is
    ‖g‖ of the last step's gradient before clipping (set only when clipping is on).
    """

    step: int
    buffers: dict[str, np.ndarray]
    scratch: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    last_gradient_norm: float | None = None


def init_state(
    config: OptimizerConfig, size: int, dtype: np.dtype | type = np.float32
) -> OptimizerState:
    """Zeroed state for a θ of `size` elements: step 0, buffers and scratch preallocated."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    buffers = {name: np.zeros(size, dtype=dtype) for name in _STATE_BUFFERS[config.kind]}
    scratch = {name: np.empty(size, dtype=dtype) for name in _scratch_names(config)}
    return OptimizerState(step=0, buffers=buffers, scratch=scratch)


def global_norm(grad: np.ndarray) -> float:
    """‖g‖₂ over all of the flat gradient (one BLAS dot)."""
    return math.sqrt(float(np.dot(grad, grad)))


def apply_update(
    theta: np.ndarray,
    grad: np.ndarray,
    state: OptimizerState,
    config: OptimizerConfig,
    *,
    learning_rate: float | None = None,
) -> OptimizerState:
    """Apply one update to θ (P,) from g (P,) in place; advance `state` in place and return it.

    `learning_rate` is this step's η (from the schedule); config.learning_rate when None.
    `grad` is only read. θ keeps its dtype (float32 stays float32).
    """
    if theta.ndim != 1 or theta.shape != grad.shape:
        raise ValueError(
            f"theta and grad must be flat and alike, got {theta.shape} and {grad.shape}"
        )
    for name in _STATE_BUFFERS[config.kind]:
        buffer = state.buffers.get(name)
        if buffer is None or buffer.shape != theta.shape:
            found = None if buffer is None else buffer.shape
            raise ValueError(f"state buffer {name!r} must have shape {theta.shape}, got {found}")
    eta = config.learning_rate if learning_rate is None else float(learning_rate)
    state.step += 1
    g = _clipped_gradient(grad, state, config, theta)
    if config.kind == "adamw":
        if config.weight_decay:
            theta *= 1.0 - eta * config.weight_decay  # θ ← θ(1 − ηλ), decoupled
    else:
        g = _decayed_gradient(theta, g, state, config)
    _UPDATES[config.kind](theta, g, state, config, eta)
    return state


def _sgd(theta, g, state, config, eta) -> None:
    _axpy(-eta, g, theta, state)  # θ ← θ − η g


def _momentum(theta, g, state, config, eta) -> None:
    velocity = state.buffers["velocity"]
    velocity *= config.momentum
    velocity += g  # v ← μ v + g
    _axpy(-eta, velocity, theta, state)  # θ ← θ − η v


def _nesterov(theta, g, state, config, eta) -> None:
    velocity = state.buffers["velocity"]
    velocity *= config.momentum
    velocity += g  # v ← μ v + g
    _axpy(-eta, g, theta, state)
    _axpy(-eta * config.momentum, velocity, theta, state)  # θ ← θ − η (g + μ v)


def _adam(theta, g, state, config, eta) -> None:
    """Update m, v in place and step θ by −η m̂ / (√v̂ + ε)."""
    m, v = state.buffers["m"], state.buffers["v"]
    out = _scratch(state, "work", theta)
    t = state.step
    beta1, beta2 = config.beta1, config.beta2
    m *= beta1
    np.multiply(g, 1.0 - beta1, out=out)
    m += out  # m ← β1 m + (1 − β1) g
    v *= beta2
    np.multiply(g, g, out=out)
    out *= 1.0 - beta2
    v += out  # v ← β2 v + (1 − β2) g²
    # -expm1(t·log β) = 1 − βᵗ without cancellation when β is close to 1.
    correction1 = -math.expm1(t * math.log(beta1)) if beta1 > 0 else 1.0
    correction2 = -math.expm1(t * math.log(beta2)) if beta2 > 0 else 1.0
    step_size = eta * math.sqrt(correction2) / correction1  # η_t
    np.sqrt(v, out=out)
    out += config.epsilon * math.sqrt(correction2)  # √v + ε̂
    np.divide(m, out, out=out)
    _axpy(-step_size, out, theta, state)


def _rmsprop(theta, g, state, config, eta) -> None:
    square_avg = state.buffers["square_avg"]
    out = _scratch(state, "work", theta)
    square_avg *= config.rho
    np.multiply(g, g, out=out)
    out *= 1.0 - config.rho
    square_avg += out  # s ← ρ s + (1 − ρ) g²
    np.sqrt(square_avg, out=out)
    out += config.epsilon  # √s + ε
    np.divide(g, out, out=out)
    _axpy(-eta, out, theta, state)  # θ ← θ − η g / (√s + ε)


_UPDATES: dict[str, Callable[..., None]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adam": _adam,
    "adamw": _adam,
    "rmsprop": _rmsprop,
}


def _clipped_gradient(
    grad: np.ndarray, state: OptimizerState, config: OptimizerConfig, theta: np.ndarray
) -> np.ndarray:
    """g · min(1, c/‖g‖) (P,) in scratch space when it scales, else `grad` itself."""
    if config.clip_norm is None:
        return grad
    norm = global_norm(grad)
    state.last_gradient_norm = norm
    if norm <= config.clip_norm:
        return grad
    clipped = _scratch(state, "clipped_grad", theta)
    np.multiply(grad, config.clip_norm / norm, out=clipped)
    return clipped


def _decayed_gradient(
    theta: np.ndarray, grad: np.ndarray, state: OptimizerState, config: OptimizerConfig
) -> np.ndarray:
    """g + λθ (P,) in scratch space, or `grad` itself when λ = 0."""
    if config.weight_decay == 0:
        return grad
    decayed = _scratch(state, "decayed_grad", theta)
    np.multiply(theta, config.weight_decay, out=decayed)
    decayed += grad
    return decayed


def _scratch_names(config: OptimizerConfig) -> tuple[str, ...]:
    names = ["work"] if config.kind in ("adam", "adamw", "rmsprop") else []
    if config.weight_decay > 0 and config.kind != "adamw":
        names.append("decayed_grad")
    if config.clip_norm is not None:
        names.append("clipped_grad")
    return tuple(names)


def _scratch(state: OptimizerState, name: str, like: np.ndarray) -> np.ndarray:
    """The scratch buffer `name`, (P,) like θ, allocated on first use."""
    buffer = state.scratch.get(name)
    if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype:
        buffer = np.empty_like(like)
        state.scratch[name] = buffer
    return buffer


def _axpy(alpha: float, x: np.ndarray, y: np.ndarray, state: OptimizerState) -> None:
    """y ← y + αx in place: one pass of NumPy's own BLAS where it can, else two."""
    work = None if has_fused_axpy(y.dtype) and x.dtype == y.dtype else _scratch(state, "axpy", y)
    axpy(alpha, x, y, work)


__all__ = [
    "OPTIMIZER_KINDS",
    "SCHEDULE_KINDS",
    "LRSchedule",
    "OptimizerConfig",
    "OptimizerState",
    "apply_update",
    "global_norm",
    "init_state",
    "learning_rate_at",
]
