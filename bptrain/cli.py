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


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def serve(context: click.Context, arguments: tuple[str, ...]) -> None:
    """Run the API server: `bptrain-server ARGUMENTS` (`bptrain serve --help` lists them).

    The server is not part of the client: this execs `python -m services` in place of
    this process (same pid), so the client imports no server code."""
    level = context.parent.params["log_level"] if context.parent else "WARNING"
    level = level if level.upper() not in ("WARNING", "ERROR", "CRITICAL") else "INFO"
    command = [sys.executable, "-m", "services", "--log-level", level, *arguments]
    os.execv(sys.executable, command)


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
