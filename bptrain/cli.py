"""The `bptrain` command: run the server, submit and follow jobs, fetch weights (sweeps:
bptrain/sweep_cli.py)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from bptrain.cli_options import (
    connected,
    output_option,
    reconnect_option,
    server_option,
    weights_format,
    weights_format_option,
    weights_out_option,
)
from bptrain.render import job_dict, print_datasets, print_gradcheck, print_jobs
from bptrain.specfile import load_spec_file
from bptrain.sweep_cli import sweep
from bptrain.v1 import training_pb2 as pb


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

    with connected(server) as client:
        spec = load_spec_file(spec_file)
        if dry_run:
            checked = client.submit(spec, validate_only=True).job
            click.echo(json.dumps(job_dict(checked)["spec"], indent=2))
            return
        job = client.submit(spec, submission_id=submission_id).job
        click.echo(f"submitted {job.job_id}", err=True)
        if not follow:
            print_jobs([job], output)
            return
        final = follow_job(client, job.job_id, reconnect_for_s=reconnect_for)
    print_jobs([final], output)
    sys.exit(0 if final.state == pb.SUCCEEDED else 1)


@main.command()
@click.argument("job_id")
@server_option
@reconnect_option
@output_option
def watch(job_id: str, server: str, reconnect_for: float | None, output: str) -> None:
    """Follow a job's metrics until it ends; exit 0 only if it SUCCEEDED."""
    from bptrain.progress import follow as follow_job

    with connected(server) as client:
        final = follow_job(client, job_id, reconnect_for_s=reconnect_for)
    print_jobs([final], output)
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
    with connected(server) as client:
        print_jobs(client.list(state=state), output)


@main.command()
@click.argument("job_id")
@server_option
@output_option
def status(job_id: str, server: str, output: str) -> None:
    """Show one job."""
    with connected(server) as client:
        job = client.get(job_id)
    if output == "json":
        click.echo(json.dumps(job_dict(job), indent=2))
    else:
        print_jobs([job], output)


@main.command()
@click.argument("job_id")
@server_option
@output_option
def cancel(job_id: str, server: str, output: str) -> None:
    """Cancel a queued or running job."""
    with connected(server) as client:
        print_jobs([client.cancel(job_id)], output)


@main.command()
@click.argument("job_id")
@server_option
@weights_out_option
@weights_format_option
def weights(job_id: str, server: str, path: Path, fmt: str | None) -> None:
    """Download a finished job's weights (sha256-checked)."""
    fmt = weights_format(path, fmt)
    with connected(server) as client:
        digest = client.download_weights(job_id, path, format=fmt)
    click.echo(f"wrote {path} (sha256 {digest})")


@main.command()
@click.argument("spec_file", type=click.Path(path_type=Path))
@server_option
@output_option
def gradcheck(spec_file: Path, server: str, output: str) -> None:
    """Check SPEC_FILE's backprop against float64 finite differences; exit 1 if it fails."""
    with connected(server) as client:
        report = client.check_gradients(load_spec_file(spec_file))
    print_gradcheck(report, output)
    sys.exit(0 if report.passed else 1)


@main.group()
def datasets() -> None:
    """Upload, list and delete datasets (.npz with X and y)."""


@datasets.command("upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Name to show (default: the file's stem).")
@server_option
@output_option
def datasets_upload(path: Path, name: str | None, server: str, output: str) -> None:
    """Upload PATH; prints its dataset_id (use it as dataset.dataset_id with name uploaded)."""
    with connected(server) as client:
        print_datasets([client.upload_dataset(path, name=name)], output)


@datasets.command("list")
@server_option
@output_option
def datasets_list(server: str, output: str) -> None:
    """List uploaded datasets, newest first."""
    with connected(server) as client:
        print_datasets(client.list_datasets(), output)


@datasets.command("delete")
@click.argument("dataset_id")
@server_option
def datasets_delete(dataset_id: str, server: str) -> None:
    """Delete an uploaded dataset (refused while a job uses it)."""
    with connected(server) as client:
        client.delete_dataset(dataset_id)
    click.echo(f"deleted {dataset_id}")


main.add_command(sweep)

if __name__ == "__main__":
    main()
