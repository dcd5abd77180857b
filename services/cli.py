"""`bptrain-server` (also `python -m services`, and `bptrain serve`): the API server.

Ray (embedded unless --ray-address names a cluster), the jobs service and the gRPC API in
one process until SIGTERM/SIGINT (services/serve.py). The options become one config per
concern (ServerConfig, JobsConfig with its Quotas, RayConfig, MetricsConfig); a bad value
is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from services.api.server import ServerConfig, TlsConfig
from services.cluster import RayConfig
from services.errors import UnavailableError
from services.jobs.lead import MAX_LEAD_S
from services.jobs.manager import JobsConfig
from services.metrics import MetricsConfig
from services.serve import serve
from services.tenancy import Quotas, parse_principals


@click.command(context_settings={"max_content_width": 100})
@click.option("--log-level", default="INFO", show_default=True, help="Python log level.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=50051, show_default=True, type=int, help="0 picks a free port.")
@click.option("--storage", default=".bptrain", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--ray-address", default=None, help="Ray cluster HOST:PORT; none starts an embedded Ray."
)
@click.option("--num-cpus", default=None, type=int, help="CPUs of the embedded Ray (default: all).")
@click.option("--worker-cpus", default=1.0, show_default=True, type=float, help="CPUs per worker.")
@click.option("--max-running-jobs", default=2, show_default=True, type=int, help="Jobs at once.")
@click.option(
    "--max-queued-jobs", default=100, show_default=True, type=int, help="Waiting jobs at most."
)
@click.option(
    "--standby-runners",
    default=1,
    show_default=True,
    type=int,
    help="Job runners kept booted for the next job (0-8; 0: each job starts its own).",
)
@click.option(
    "--keep-workers-s",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds a standby runner keeps its last job's workers for a job of the same shape "
    "(0: never; kept workers hold their CPUs, and are dropped when another job needs them).",
)
@click.option(
    "--max-lead-s",
    default=MAX_LEAD_S,
    show_default=True,
    type=float,
    help="Seconds of training a job's runner may run past the last step the store holds "
    "(0.5-3600): what a stalled or restarted API server costs in steps trained again.",
)
@click.option(
    "--max-dataset-bytes", default=1 << 30, show_default=True, type=int, help="Upload size limit."
)
@click.option(
    "--port-file", default=None, type=click.Path(path_type=Path), help="Write the bound port here."
)
@click.option(
    "--tokens-file",
    default=None,
    type=click.Path(path_type=Path),
    help="Tokens, one NAME:ROLE:TOKEN per line, ROLE user or admin, or a bare TOKEN for the "
    "admin 'admin' (else $BPTRAIN_TOKENS, comma-separated; none: no auth, one local user).",
)
@click.option(
    "--quota-running-jobs", default=None, type=int, help="Per principal: its jobs running at once."
)
@click.option(
    "--quota-queued-jobs", default=None, type=int, help="Per principal: its jobs waiting at most."
)
@click.option(
    "--quota-dataset-bytes", default=None, type=int, help="Per principal: its uploaded bytes."
)
@click.option(
    "--threads",
    default=16,
    show_default=True,
    type=int,
    help="Threads for the API's blocking work (SQLite, Ray, files); streams take none.",
)
@click.option(
    "--max-streams",
    default=2048,
    show_default=True,
    type=int,
    help="Streams (followers, downloads, uploads) open at once; the next is refused.",
)
@click.option(
    "--metrics-port",
    default=9464,
    show_default=True,
    type=int,
    help="Port of the Prometheus /metrics endpoint; 0 picks a free port.",
)
@click.option("--metrics-host", default=None, help="Interface of /metrics (default: --host).")
@click.option("--tls-cert", default=None, type=click.Path(path_type=Path), help="PEM certificate.")
@click.option("--tls-key", default=None, type=click.Path(path_type=Path), help="PEM private key.")
@click.option(
    "--tls-client-ca",
    default=None,
    type=click.Path(path_type=Path),
    help="CA that client certificates must be signed by (mutual TLS).",
)
def main(**options: Any) -> None:
    """Run the bptrain API server (and an embedded Ray unless --ray-address is given)."""
    logging.basicConfig(
        level=options.pop("log_level").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        configs = _configs(options)
        serve(*configs[:3], port_file=options["port_file"], metrics_config=configs[3])
    except (ValueError, OSError, UnavailableError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def _configs(o: dict[str, Any]) -> tuple[ServerConfig, JobsConfig, RayConfig, MetricsConfig]:
    """One validated config per concern from the command's options (ValueError if bad)."""
    tokens = (
        o["tokens_file"].read_text() if o["tokens_file"] else os.environ.get("BPTRAIN_TOKENS", "")
    )
    if (o["tls_cert"] is None) != (o["tls_key"] is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if o["tls_client_ca"] is not None and o["tls_cert"] is None:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = (
        TlsConfig(cert=o["tls_cert"], key=o["tls_key"], client_ca=o["tls_client_ca"])
        if o["tls_cert"]
        else None
    )
    server = ServerConfig(
        host=o["host"],
        port=o["port"],
        principals=parse_principals(tokens),
        threads=o["threads"],
        max_streams=o["max_streams"],
        tls=tls,
    )
    quotas = Quotas(
        running_jobs=o["quota_running_jobs"],
        queued_jobs=o["quota_queued_jobs"],
        dataset_bytes=o["quota_dataset_bytes"],
    )
    jobs = JobsConfig(
        storage=o["storage"],
        worker_cpus=o["worker_cpus"],
        max_running_jobs=o["max_running_jobs"],
        max_queued_jobs=o["max_queued_jobs"],
        standby_runners=o["standby_runners"],
        keep_workers_s=o["keep_workers_s"],
        max_lead_s=o["max_lead_s"],
        max_dataset_bytes=o["max_dataset_bytes"],
        quotas=quotas,
    )
    ray = RayConfig(address=o["ray_address"], num_cpus=o["num_cpus"])
    metrics = MetricsConfig(host=o["metrics_host"] or o["host"], port=o["metrics_port"])
    return server, jobs, ray, metrics
