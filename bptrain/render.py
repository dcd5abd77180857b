"""How the `bptrain` command shows jobs, datasets and gradient checks: rich tables on a
terminal (not cut to 80 columns when piped), or JSON with `--output json`."""

from __future__ import annotations

import json
from collections.abc import Iterable

import click
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from bptrain.v1 import training_pb2 as pb


def job_dict(job: pb.Job) -> dict:
    return json_format.MessageToDict(job, preserving_proto_field_name=True)


def print_rows(messages: list[Message], output: str, headings: tuple[str, ...], row) -> None:
    """`messages` as JSON, or as a table whose first column (an id) never wraps; `row`
    gives a message's cells, as strings, in the order of `headings`."""
    if output == "json":
        rows = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    table.add_column(headings[0], no_wrap=True)
    for heading in headings[1:]:
        table.add_column(heading)
    for message in messages:
        table.add_row(*row(message))
    console = Console()
    if not console.is_terminal:  # piped: not cut to 80 columns, scripts grep ids out of it
        console = Console(width=max(console.width, 200))
    console.print(table)


def _job_row(job: pb.Job) -> tuple[str, ...]:
    latest = job.latest if job.HasField("latest") else None
    has_accuracy = latest is not None and latest.HasField("validation_accuracy")
    return (
        job.job_id,
        job.name,
        job.owner,
        pb.JobState.Name(job.state),
        f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step),
        f"{latest.loss:.4f}" if latest else "",
        f"{latest.validation_accuracy:.4f}" if has_accuracy else "",
        job.reason,
    )


def print_jobs(jobs: Iterable[pb.Job], output: str) -> None:
    headings = ("JOB ID", "NAME", "OWNER", "STATE", "STEP", "LOSS", "VAL ACC", "REASON")
    print_rows(list(jobs), output, headings, _job_row)


def print_datasets(items: list[pb.Dataset], output: str) -> None:
    headings = ("DATASET ID", "NAME", "TASK", "ROWS", "FEATURES", "OUTPUTS", "BYTES")
    fields = ("dataset_id", "name", "task", "rows", "features", "outputs", "size_bytes")
    print_rows(items, output, headings, lambda d: [str(getattr(d, f)) for f in fields])


def print_gradcheck(report: pb.GradientCheckReport, output: str) -> None:
    if output == "json":
        click.echo(json_format.MessageToJson(report, preserving_proto_field_name=True))
        return
    for layer, error in enumerate(report.layer_errors, start=1):
        click.echo(f"layer {layer}: worst relative error {error:.2e}")
    verdict = "passed" if report.passed else "FAILED"
    click.echo(
        f"{verdict}: worst {report.worst_error:.2e} (tolerance {report.tolerance:.0e}) "
        f"over {report.checked_entries} entries"
    )
