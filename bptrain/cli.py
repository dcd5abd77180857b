"""The `bptrain` command: run the server, submit and follow jobs, fetch weights."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import click
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from bptrain.client import DEFAULT_SERVER, BptrainError, Client
from bptrain.specfile import SpecFileError, load_spec_file
from bptrain.v1 import training_pb2 as pb

server_option = click.option(
    "--server",
    envvar="BPTRAIN_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="host:port of the bptrain API ($BPTRAIN_SERVER).",
)
output_option = click.option(
    "--output", "-O", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _job_dict(job: pb.Job) -> dict:
    return json_format.MessageToDict(job, preserving_proto_field_name=True)


def _print_table(table: Table) -> None:
    console = Console()
    if not console.is_terminal:  # piped: not cut to 80 columns, scripts grep ids out of it
        console = Console(width=max(console.width, 200))
    console.print(table)


def _print_jobs(jobs: Iterable[pb.Job], output: str) -> None:
    jobs = list(jobs)
    if output == "json":
        click.echo(json.dumps([_job_dict(j) for j in jobs], indent=2))
        return
    table = Table()
    table.add_column("JOB ID", no_wrap=True)
    for heading in ("NAME", "STATE", "STEP", "LOSS", "VAL ACC", "REASON"):
        table.add_column(heading)
    for job in jobs:
        latest = job.latest if job.HasField("latest") else None
        table.add_row(
            job.job_id,
            job.name,
            pb.JobState.Name(job.state),
            f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step),
            f"{latest.loss:.4f}" if latest else "",
            f"{latest.validation_accuracy:.4f}"
            if latest and latest.HasField("validation_accuracy")
            else "",
            job.reason,
        )
    _print_table(table)


@click.group()
@click.option("--log-level", default="WARNING", show_default=True, help="Python log level.")
def main(log_level: str) -> None:
    """bptrain: distributed neural-network training over gRPC."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
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
def serve(
    host: str,
    port: int,
    storage: Path,
    ray_address: str | None,
    num_cpus: int | None,
    worker_cpus: float,
    max_running_jobs: int,
    max_queued_jobs: int,
    standby_runners: int,
    max_dataset_bytes: int,
    port_file: Path | None,
    tokens_file: Path | None,
    quota_running_jobs: int | None,
    quota_queued_jobs: int | None,
    quota_dataset_bytes: int | None,
    threads: int,
    max_streams: int,
    metrics_port: int,
    metrics_host: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
) -> None:
    """Run the API server (and an embedded Ray unless --ray-address is given)."""
    from services.api.server import ServerConfig, TlsConfig
    from services.cluster import RayConfig
    from services.errors import UnavailableError
    from services.jobs.manager import JobsConfig
    from services.metrics import MetricsConfig
    from services.serve import serve as run_server
    from services.tenancy import Quotas, parse_principals

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        principals = parse_principals(
            tokens_file.read_text() if tokens_file else os.environ.get("BPTRAIN_TOKENS", "")
        )
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        tls = TlsConfig(cert=tls_cert, key=tls_key, client_ca=tls_client_ca) if tls_cert else None
        configs = (
            ServerConfig(
                host=host,
                port=port,
                principals=principals,
                threads=threads,
                max_streams=max_streams,
                tls=tls,
            ),
            JobsConfig(
                storage=storage,
                worker_cpus=worker_cpus,
                max_running_jobs=max_running_jobs,
                max_queued_jobs=max_queued_jobs,
                standby_runners=standby_runners,
                max_dataset_bytes=max_dataset_bytes,
                quotas=Quotas(
                    running_jobs=quota_running_jobs,
                    queued_jobs=quota_queued_jobs,
                    dataset_bytes=quota_dataset_bytes,
                ),
            ),
            RayConfig(address=ray_address, num_cpus=num_cpus),
        )
        metrics_config = MetricsConfig(host=metrics_host or host, port=metrics_port)
        run_server(*configs, port_file=port_file, metrics_config=metrics_config)
    except (ValueError, OSError, UnavailableError) as error:
        _fail(str(error))


reconnect_option = click.option(
    "--reconnect-for",
    "reconnect_for",
    type=click.FloatRange(min=0),
    default=None,
    help="While following: give up after this many seconds without an answer "
    "(default: keep reconnecting until the job ends).",
)


@main.command()
@click.argument("spec_file", type=click.Path(path_type=Path))
@server_option
@click.option(
    "--follow/--no-wait", default=True, show_default=True, help="Follow until the job ends."
)
@reconnect_option
@click.option("--submission-id", default="", help="Idempotency key: a retry returns the same job.")
@click.option("--dry-run", is_flag=True, help="Only validate; print the spec with its defaults.")
@output_option
def submit(
    spec_file: Path,
    server: str,
    follow: bool,
    reconnect_for: float | None,
    submission_id: str,
    dry_run: bool,
    output: str,
) -> None:
    """Submit the job in SPEC_FILE (YAML or JSON). With --follow, exit 0 only if it SUCCEEDED."""
    from bptrain.progress import follow as follow_job

    try:
        spec = load_spec_file(spec_file)
        with Client(server) as client:
            if dry_run:
                checked = client.submit(spec, validate_only=True).job
                click.echo(json.dumps(_job_dict(checked)["spec"], indent=2))
                return
            job = client.submit(spec, submission_id=submission_id).job
            click.echo(f"submitted {job.job_id}", err=True)
            if not follow:
                _print_jobs([job], output)
                return
            final = follow_job(client, job.job_id, reconnect_for_s=reconnect_for)
    except (SpecFileError, BptrainError) as error:
        _fail(str(error))
    _print_jobs([final], output)
    sys.exit(0 if final.state == pb.SUCCEEDED else 1)


@main.command()
@click.argument("job_id")
@server_option
@reconnect_option
@output_option
def watch(job_id: str, server: str, reconnect_for: float | None, output: str) -> None:
    """Follow a job's metrics until it ends; exit 0 only if it SUCCEEDED."""
    from bptrain.progress import follow as follow_job

    try:
        with Client(server) as client:
            final = follow_job(client, job_id, reconnect_for_s=reconnect_for)
    except BptrainError as error:
        _fail(str(error))
    _print_jobs([final], output)
    sys.exit(0 if final.state == pb.SUCCEEDED else 1)


@main.command()
@server_option
@click.option(
    "--state",
    type=click.Choice(
        [name for name, _ in pb.JobState.items() if name != "JOB_STATE_UNSPECIFIED"],
        case_sensitive=False,
    ),
)
@output_option
def jobs(server: str, state: str | None, output: str) -> None:
    """List jobs, newest first."""
    try:
        with Client(server) as client:
            _print_jobs(client.list(state=state), output)
    except BptrainError as error:
        _fail(str(error))


@main.command()
@click.argument("job_id")
@server_option
@output_option
def status(job_id: str, server: str, output: str) -> None:
    """Show one job."""
    try:
        with Client(server) as client:
            job = client.get(job_id)
    except BptrainError as error:
        _fail(str(error))
    if output == "json":
        click.echo(json.dumps(_job_dict(job), indent=2))
    else:
        _print_jobs([job], output)


@main.command()
@click.argument("job_id")
@server_option
@output_option
def cancel(job_id: str, server: str, output: str) -> None:
    """Cancel a queued or running job."""
    try:
        with Client(server) as client:
            _print_jobs([client.cancel(job_id)], output)
    except BptrainError as error:
        _fail(str(error))


@main.command()
@click.argument("job_id")
@server_option
@click.option(
    "-o", "--out", "path", default="model.npz", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npz", "safetensors", "onnx"]),
    default=None,
    help="Default: from the output file's suffix, else npz.",
)
def weights(job_id: str, server: str, path: Path, fmt: str | None) -> None:
    """Download a finished job's weights (sha256-checked)."""
    suffix = path.suffix.lstrip(".").lower()
    fmt = fmt or (suffix if suffix in ("npz", "safetensors", "onnx") else "npz")
    try:
        with Client(server) as client:
            digest = client.download_weights(job_id, path, format=fmt)
    except (BptrainError, OSError) as error:
        _fail(str(error))
    click.echo(f"wrote {path} (sha256 {digest})")


@main.command()
@click.argument("spec_file", type=click.Path(path_type=Path))
@server_option
@output_option
def gradcheck(spec_file: Path, server: str, output: str) -> None:
    """Check SPEC_FILE's backprop against float64 finite differences; exit 1 if it fails."""
    try:
        with Client(server) as client:
            report = client.check_gradients(load_spec_file(spec_file))
    except (SpecFileError, BptrainError) as error:
        _fail(str(error))
    if output == "json":
        click.echo(json_format.MessageToJson(report, preserving_proto_field_name=True))
    else:
        for layer, error in enumerate(report.layer_errors, start=1):
            click.echo(f"layer {layer}: worst relative error {error:.2e}")
        verdict = "passed" if report.passed else "FAILED"
        click.echo(
            f"{verdict}: worst {report.worst_error:.2e} (tolerance {report.tolerance:.0e}) "
            f"over {report.checked_entries} entries"
        )
    sys.exit(0 if report.passed else 1)


@main.group()
def datasets() -> None:
    """Upload, list and delete datasets (.npz with X and y)."""


def _print_datasets(items: list[pb.Dataset], output: str) -> None:
    if output == "json":
        rows = [json_format.MessageToDict(d, preserving_proto_field_name=True) for d in items]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    table.add_column("DATASET ID", no_wrap=True)
    for heading in ("NAME", "TASK", "ROWS", "FEATURES", "OUTPUTS", "BYTES"):
        table.add_column(heading)
    for d in items:
        row = (d.name, d.task, d.rows, d.features, d.outputs, d.size_bytes)
        table.add_row(d.dataset_id, *map(str, row))
    _print_table(table)


@datasets.command("upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Name to show (default: the file's stem).")
@server_option
@output_option
def datasets_upload(path: Path, name: str | None, server: str, output: str) -> None:
    """Upload PATH; prints its dataset_id (use it as dataset.dataset_id with name uploaded)."""
    try:
        with Client(server) as client:
            _print_datasets([client.upload_dataset(path, name=name)], output)
    except BptrainError as error:
        _fail(str(error))


@datasets.command("list")
@server_option
@output_option
def datasets_list(server: str, output: str) -> None:
    """List uploaded datasets, newest first."""
    try:
        with Client(server) as client:
            _print_datasets(client.list_datasets(), output)
    except BptrainError as error:
        _fail(str(error))


@datasets.command("delete")
@click.argument("dataset_id")
@server_option
def datasets_delete(dataset_id: str, server: str) -> None:
    """Delete an uploaded dataset (refused while a job uses it)."""
    try:
        with Client(server) as client:
            client.delete_dataset(dataset_id)
    except BptrainError as error:
        _fail(str(error))
    click.echo(f"deleted {dataset_id}")


if __name__ == "__main__":
    main()
