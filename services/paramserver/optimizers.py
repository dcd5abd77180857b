"""Optimizer steps over one flat θ buffer (P,), applied in place by the parameter server.

With gradient g, learning rate η, weight decay λ and t the step number (from 1):

    g ← g + λθ                                        (L2 weight decay, every kind)
    sgd:       θ ← θ − η g
    momentum:  v ← μ v + g;  θ ← θ − η v               (PyTorch's convention)
    adam:      m ← β1 m + (1 − β1) g
               v ← β2 v + (1 − β2) g²
               θ ← θ − η m̂ / (√v̂ + ε),  m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)

Every update writes into θ and preallocated buffers with ``out=``; the gradient
is never modified. Adam is computed in Kingma & Ba's equivalent form
θ ← θ − η_t m / (√v + ε̂) with η_t = η √(1 − β2ᵗ) / (1 − β1ᵗ) and ε̂ = ε √(1 − β2ᵗ),
which folds both bias corrections into two scalars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from services.errors import InvalidSpecError

OPTIMIZER_KINDS: tuple[str, ...] = ("sgd", "momentum", "adam")

# The optimizer's mathematical state per kind (what a checkpoint must keep).
_STATE_BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("velocity",),
    "adam": ("m", "v"),
}


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidSpecError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidSpecError(name, f"must be finite, got {value}")
    return float(value)


def _check_unit_interval(name: str, value: object) -> None:
    """value in [0, 1)."""
    number = _check_real(name, value)
    if number < 0:
        raise InvalidSpecError(name, f"must be >= 0, got {number}")
    if number >= 1:
        raise InvalidSpecError(name, f"must be < 1, got {number}")


@dataclass(frozen=True)
class OptimizerConfig:
    """Which update rule to apply and its hyperparameters."""

    kind: str = "sgd"  # "sgd" | "momentum" | "adam"
    learning_rate: float = 0.01  # η
    momentum: float = 0.9  # μ, momentum only
    beta1: float = 0.9  # β1, adam only
    beta2: float = 0.999  # β2, adam only
    epsilon: float = 1e-8  # ε, adam only
    weight_decay: float = 0.0  # λ: g ← g + λθ

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZER_KINDS:
            raise InvalidSpecError(
                "kind",
                f"unknown optimizer {self.kind!r}; expected one of {', '.join(OPTIMIZER_KINDS)}",
            )
        if _check_real("learning_rate", self.learning_rate) <= 0:
            raise InvalidSpecError("learning_rate", f"must be > 0, got {self.learning_rate}")
        _check_unit_interval("momentum", self.momentum)
        _check_unit_interval("beta1", self.beta1)
        _check_unit_interval("beta2", self.beta2)
        if _check_real("epsilon", self.epsilon) <= 0:
            raise InvalidSpecError("epsilon", f"must be > 0, got {self.epsilon}")
        if _check_real("weight_decay", self.weight_decay) < 0:
            raise InvalidSpecError("weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass(eq=False)  # identity equality: == on arrays is not a bool
class OptimizerState:
    """Updates applied so far and the optimizer's buffers, each (P,) like θ.

    `buffers` ("velocity" for momentum; "m", "v" for adam) and `step` are the whole
    state to checkpoint. `scratch` holds work space reused between steps; it carries
    no information and is rebuilt on demand (so a restored state may leave it empty).
    """

    step: int
    buffers: dict[str, np.ndarray]
    scratch: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


def init_state(
    config: OptimizerConfig, size: int, dtype: np.dtype | type = np.float32
) -> OptimizerState:
    """Zeroed state for a θ of `size` elements: step 0, buffers and scratch preallocated."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    buffers = {name: np.zeros(size, dtype=dtype) for name in _STATE_BUFFERS[config.kind]}
    scratch = {name: np.empty(size, dtype=dtype) for name in _scratch_names(config)}
    return OptimizerState(step=0, buffers=buffers, scratch=scratch)


def apply_update(
    theta: np.ndarray, grad: np.ndarray, state: OptimizerState, config: OptimizerConfig
) -> OptimizerState:
    """Apply one update to θ (P,) from g (P,) in place; advance `state` in place and return it.

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
    state.step += 1
    g = _decayed_gradient(theta, grad, state, config)
    work = _scratch(state, "work", theta)
    if config.kind == "sgd":
        np.multiply(g, config.learning_rate, out=work)  # η g
    elif config.kind == "momentum":
        velocity = state.buffers["velocity"]
        velocity *= config.momentum
        velocity += g  # v ← μ v + g
        np.multiply(velocity, config.learning_rate, out=work)  # η v
    else:
        _adam_direction(g, state, config, out=work)
    theta -= work
    return state


def _adam_direction(
    g: np.ndarray, state: OptimizerState, config: OptimizerConfig, out: np.ndarray
) -> None:
    """Update m, v in place and write η m̂ / (√v̂ + ε) into `out` (P,)."""
    m, v = state.buffers["m"], state.buffers["v"]
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
    step_size = config.learning_rate * math.sqrt(correction2) / correction1  # η_t
    np.sqrt(v, out=out)
    out += config.epsilon * math.sqrt(correction2)  # √v + ε̂
    np.divide(m, out, out=out)
    out *= step_size


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
    return ("work", "decayed_grad") if config.weight_decay > 0 else ("work",)


def _scratch(state: OptimizerState, name: str, like: np.ndarray) -> np.ndarray:
    """The scratch buffer `name`, (P,) like θ, allocated on first use."""
    buffer = state.scratch.get(name)
    if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype:
        buffer = np.empty_like(like)
        state.scratch[name] = buffer
    return buffer
