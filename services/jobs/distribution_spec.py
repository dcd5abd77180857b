"""The distribution part of a job's spec: workers, consistency, θ shards, gradient compression."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.errors import InvalidSpecError
from services.jobs.spec_checks import check_choice, check_range
from worker.compression import COMPRESSIONS

if TYPE_CHECKING:
    from services.jobs.spec import JobSpec

CONSISTENCY_MODES = ("bsp", "ssp", "asp")
DEFAULT_STALENESS = 2  # ssp's bound s when the spec gives none
DEFAULT_TOPK_FRACTION = 0.01
MAX_STALENESS = 1000
MAX_PS_SHARDS = 64
MAX_WORKERS = 64
MAX_BATCH_SIZE = 65_536


def check_workers(workers: int, batch_size: int) -> None:
    """Between 1 and MAX_WORKERS workers, and a batch that gives each one a sample."""
    check_range("workers", workers, 1, MAX_WORKERS)
    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    if batch_size < workers:
        raise InvalidSpecError(
            "batch_size",
            f"must be >= workers ({workers}) so every worker gets a sample, got {batch_size}",
        )


def check_distribution(spec: JobSpec) -> None:
    """Consistency, parameter-server shards and compression, with the options each allows."""
    _check_consistency(spec)
    check_range("ps_shards", spec.ps_shards, 1, MAX_PS_SHARDS)
    if spec.ps_shards > spec.parameter_count:
        raise InvalidSpecError(
            "ps_shards", f"must be <= the model's {spec.parameter_count} parameters"
        )
    if spec.ps_shards > 1 and spec.optimizer.clip_norm:
        raise InvalidSpecError(
            "ps_shards",
            "must be 1 with optimizer.clip_norm (clipping by the global norm needs "
            "the whole gradient in one place)",
        )
    check_choice("compression", spec.compression, COMPRESSIONS)
    if spec.topk_fraction is not None:
        if spec.compression != "topk":
            raise InvalidSpecError("topk_fraction", "applies only to compression topk")
        check_range("topk_fraction", spec.topk_fraction, 1e-6, 1.0)


def _check_consistency(spec: JobSpec) -> None:
    check_choice("consistency", spec.consistency, CONSISTENCY_MODES)
    if spec.staleness is not None:
        if spec.consistency != "ssp":
            raise InvalidSpecError("staleness", "applies only to consistency ssp")
        check_range("staleness", spec.staleness, 0, MAX_STALENESS)
    if spec.staleness_aware_lr and spec.consistency == "bsp":
        raise InvalidSpecError("staleness_aware_lr", "applies only to consistency asp or ssp")


def staleness_bound(consistency: str, staleness: int | None) -> int | None:
    """ssp's s; None for bsp and asp (no bound)."""
    if consistency != "ssp":
        return None
    return DEFAULT_STALENESS if staleness is None else staleness


def topk_share(topk_fraction: float | None) -> float:
    """The share of g's entries a topk push sends."""
    return DEFAULT_TOPK_FRACTION if topk_fraction is None else topk_fraction
