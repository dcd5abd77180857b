"""Connecting the API process to Ray: an embedded local instance, or a cluster's address."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


@functools.cache
def remote_class(kind: type) -> Any:
    """`ray.remote(kind)`, made once per process: Ray exports a class (pickling it and
    hashing its code) each time one is made remote."""
    return ray.remote(kind)


# The embedded Ray starts no idle worker processes ahead of time: every actor the
# service makes (runners, workers) gets a process of its own when made, and Ray's
# prestarted pool (one idle Python process per CPU, each waking 100 times a second)
# only competed with the jobs' workers for the cores.
EMBEDDED_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}


def start_embedded(num_cpus: int | None, *, address: str | None = None) -> None:
    """Start a Ray of this process tree, lean: no dashboard, no prestarted idle
    workers, and no log monitor, which forwards workers' output to drivers that ask
    for it (`log_to_driver`), and none here does. Idle, these cost a 2-core host about
    5 % of a bsp job's throughput (README, "Distributed throughput"). `address`:
    "local" never joins a cluster that happens to run on this machine."""
    ray.init(
        address=address,
        namespace=NAMESPACE,
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        _system_config=EMBEDDED_SYSTEM_CONFIG,
    )
    _stop_log_monitor()


def _stop_log_monitor() -> None:
    """Stop the embedded node's log monitor (it polls the log directory ten times a
    second). `ray start --include-log-monitor=false` does the same for a cluster's
    nodes; `ray.init` has no such option, so this reaches the node it started."""
    try:
        ray._private.worker._global_node.kill_log_monitor(check_alive=False)
    except Exception as error:  # a Ray without it: only a cost, never a fault
        log.info("the embedded Ray's log monitor keeps running: %s", error)


def connect(config: RayConfig) -> None:
    """Initialise Ray for this process (idempotent)."""
    if ray.is_initialized():
        return
    try:
        if config.address is None:
            start_embedded(config.num_cpus)
        else:
            ray.init(
                address=config.address,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError) as error:
        if ray.is_initialized():
            ray.shutdown()
        raise UnavailableError(f"cannot reach Ray at {config.address}: {error}") from error
    log.info("Ray ready: %s", ray.cluster_resources())


def connect_in_background(
    config: RayConfig, on_ready: Callable[[], None], stop: threading.Event, retry_s: float = 2.0
) -> threading.Thread:
    """Keep trying to reach Ray until it answers (then call `on_ready`) or `stop` is set."""

    def attempt() -> None:
        while not stop.is_set():
            try:
                connect(config)
            except UnavailableError as error:
                log.warning("waiting for Ray: %s", error)
                stop.wait(retry_s)
                continue
            on_ready()
            return

    thread = threading.Thread(target=attempt, name="ray-connect", daemon=True)
    thread.start()
    return thread
