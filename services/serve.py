"""`bptrain serve`: Ray, the jobs service and the gRPC API in one process, until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from pathlib import Path

import ray

from services import cluster, reaper
from services.api.server import ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from services.metrics import MetricsConfig, MetricsExporter, ServiceMetrics, build_registry
from services.sweeps.manager import SweepManager

log = logging.getLogger(__name__)


SIGNAL_POLL_S = 0.5  # how soon a termination signal is acted on, at most


def freeze_startup_objects() -> None:
    """Move every object alive now (Ray's, gRPC's and protobuf's modules, the manager; some
    150,000) out of the cyclic collector's reach. A full collection otherwise walks them
    all and holds the GIL for 70-140 ms, several times a minute under load: every call in
    flight waits that long (bench/load.py's SubmitJob and fan-out p99s). What the server
    creates from now on is collected as before."""
    gc.collect()
    gc.freeze()


def serve(
    server_config: ServerConfig,
    jobs_config: JobsConfig,
    ray_config: cluster.RayConfig,
    *,
    port_file: Path | None = None,
    metrics_config: MetricsConfig | None = None,
) -> None:
    """Run until a termination signal; then stop taking calls, let in-flight ones finish.

    The API answers at once; with a cluster address that does not answer yet, jobs
    queue (and RPCs that need Ray answer UNAVAILABLE) until Ray can be reached.
    """
    stop = threading.Event()
    is_embedded = ray_config.address is None
    reaping = None
    if is_embedded:  # its Ray (and the jobs on it) ends with this process, however it ends
        reaping = reaper.start()
        cluster.connect(ray_config)
    # /metrics binds before the manager starts any job, so a taken port fails fast.
    metrics = ServiceMetrics(build_registry())
    metrics_config = metrics_config or MetricsConfig()
    exporter = MetricsExporter.start(metrics_config, metrics.registry)
    log.info("metrics on http://%s:%d/metrics", metrics_config.host, exporter.port)
    manager = JobManager(
        jobs_config, metrics=metrics, ray_address=None if is_embedded else ray_config.address
    )
    if not is_embedded:
        cluster.connect_in_background(ray_config, manager.ray_ready, stop)
    sweeps = SweepManager(manager)
    running = create_server(server_config, manager, sweeps)
    freeze_startup_objects()
    log.info(
        "bptrain API listening on %s:%d (storage %s, Ray %s)",
        server_config.host,
        running.port,
        jobs_config.storage,
        ray_config.address or "embedded",
    )
    if port_file is not None:
        port_file.write_text(f"{running.port}\n")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Python runs a signal's handler in the main thread only once that thread is back in
    # the interpreter; the kernel may deliver the signal to any of Ray's or gRPC's
    # threads, and an untimed wait then never returns (seen: SIGTERM ignored for 60 s).
    while not stop.wait(timeout=SIGNAL_POLL_S):
        pass
    log.info("shutting down")
    running.stop(grace_s=5.0)
    exporter.stop()
    sweeps.shutdown()
    manager.shutdown()
    if ray.is_initialized():
        ray.shutdown()
    if reaping is not None:  # anything Ray left behind goes now
        reaping.stdin.close()
        reaping.wait(timeout=30)
