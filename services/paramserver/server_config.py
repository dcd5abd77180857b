"""ServerConfig: what a parameter server (an actor, or the shard a colocated worker keeps)
needs besides θ's layer sizes: the optimizer, its schedule, and θ's make-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.paramserver.optimizer_config import LRSchedule, OptimizerConfig


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """`optimizer` with `schedule` scaling its η per step; θ initialised from `seed` for
    the layers' `activations` by `init` ("auto", "he", "glorot", or one per layer), in
    `dtype` ("float32" or "float64"), which the workers compute in."""

    optimizer: OptimizerConfig
    activations: tuple[str, ...]
    seed: int = 0
    schedule: LRSchedule = field(default_factory=LRSchedule)
    dtype: str = "float32"
    init: str | tuple[str, ...] = "auto"
