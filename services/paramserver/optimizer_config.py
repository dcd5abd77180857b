"""Optimizer and learning-rate-schedule configuration: which update rule and η schedule a
job asks for, validated on construction, and η_t for step t (`learning_rate_at`).

The update rules themselves are in `optimizers`; this module only says what they take.
The schedule gives η for step t: constant, step decay or cosine annealing, each
optionally after a linear warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.errors import InvalidSpecError

OPTIMIZER_KINDS: tuple[str, ...] = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "step", "cosine")


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidSpecError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidSpecError(name, f"must be finite, got {value}")
    return float(value)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidSpecError(name, f"must be an integer, got {value!r}")
    if value < low:
        raise InvalidSpecError(name, f"must be >= {low}, got {value}")
    return int(value)


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

    kind: str = "sgd"  # one of OPTIMIZER_KINDS
    learning_rate: float = 0.01  # η, the base rate the schedule scales
    momentum: float = 0.9  # μ, momentum and nesterov
    beta1: float = 0.9  # β1, adam and adamw
    beta2: float = 0.999  # β2, adam and adamw
    epsilon: float = 1e-8  # ε, adam, adamw and rmsprop
    weight_decay: float = 0.0  # λ: g ← g + λθ (adamw: θ ← θ(1 − ηλ))
    rho: float = 0.99  # ρ, rmsprop's decay of the squared-gradient average
    clip_norm: float | None = None  # c: scale g down to global norm c when larger

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
        _check_unit_interval("rho", self.rho)
        if _check_real("epsilon", self.epsilon) <= 0:
            raise InvalidSpecError("epsilon", f"must be > 0, got {self.epsilon}")
        if _check_real("weight_decay", self.weight_decay) < 0:
            raise InvalidSpecError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and _check_real("clip_norm", self.clip_norm) <= 0:
            raise InvalidSpecError("clip_norm", f"must be > 0, got {self.clip_norm}")


@dataclass(frozen=True)
class LRSchedule:
    """How η changes with the step t = 1, 2, ...: `learning_rate_at` gives the formulas.

    kind: "constant" | "step" (× gamma every step_size steps) | "cosine" (from η down to
    min_learning_rate over the steps after warm-up, ending at total_steps).
    warmup_steps: W ≥ 0; steps 1..W ramp linearly, η·t/W, before `kind` takes over.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    step_size: int = 1000  # step: steps between decays
    gamma: float = 0.1  # step: factor per decay, in (0, 1]
    total_steps: int | None = None  # cosine: the step where η reaches min_learning_rate
    min_learning_rate: float = 0.0  # cosine: the floor η_min ≥ 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise InvalidSpecError(
                "kind",
                f"unknown schedule {self.kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}",
            )
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("step_size", self.step_size, 1)
        gamma = _check_real("gamma", self.gamma)
        if not 0 < gamma <= 1:
            raise InvalidSpecError("gamma", f"must be in (0, 1], got {gamma}")
        if _check_real("min_learning_rate", self.min_learning_rate) < 0:
            raise InvalidSpecError(
                "min_learning_rate", f"must be >= 0, got {self.min_learning_rate}"
            )
        if self.total_steps is not None:
            _check_int("total_steps", self.total_steps, 1)
        if self.kind == "cosine":
            if self.total_steps is None:
                raise InvalidSpecError("total_steps", "is required for the cosine schedule")
            if self.total_steps <= self.warmup_steps:
                raise InvalidSpecError(
                    "total_steps",
                    f"must be > warmup_steps ({self.warmup_steps}) for the cosine schedule, "
                    f"got {self.total_steps}",
                )


def learning_rate_at(step: int, learning_rate: float, schedule: LRSchedule | None = None) -> float:
    """η_t for update number `step` (1-based) from the base rate η.

    warm-up (t ≤ W):  η t / W
    after it, with s = t − W − 1 = 0, 1, 2, ...:
      constant:  η
      step:      η γ^⌊s / step_size⌋
      cosine:    η_min + (η − η_min) ½ (1 + cos(π min(s, T) / T)),  T = total_steps − W
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    schedule = schedule or LRSchedule()
    warmup = schedule.warmup_steps
    if step <= warmup:
        return learning_rate * step / warmup
    s = step - warmup - 1
    if schedule.kind == "step":
        return learning_rate * schedule.gamma ** (s // schedule.step_size)
    if schedule.kind == "cosine":
        assert schedule.total_steps is not None  # validated by LRSchedule
        T = schedule.total_steps - warmup
        floor = schedule.min_learning_rate
        return floor + (learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * min(s, T) / T))
    return learning_rate
