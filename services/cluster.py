"""Connecting the API process to Ray: an embedded local instance, or a cluster's address."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from services.errors import UnavailableError

log = logging.getLogger(__name__)

NAMESPACE = "bptrain"


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """`address` None starts an embedded Ray in this process tree; else join that cluster."""

    address: str | None = None
    num_cpus: int | None = None  # embedded only; default: this machine's cores

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.address is not None and self.num_cpus is not None:
            raise ValueError("num_cpus applies only to the embedded Ray (no address)")


def connect(config: RayConfig) -> None:
    """Initialise Ray for this process (idempotent)."""
    if ray.is_initialized():
        return
    try:
        if config.address is None:
            ray.init(
                namespace=NAMESPACE,
                num_cpus=config.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        else:
            ray.init(
                address=config.address,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError) as error:
        raise UnavailableError(f"cannot reach Ray at {config.address}: {error}") from error
    log.info("Ray ready: %s", ray.cluster_resources())
