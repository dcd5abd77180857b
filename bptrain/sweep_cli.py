"""`bptrain sweep`: submit, follow, list and cancel hyperparameter sweeps, and fetch the
best trial's weights. Same conventions as the job commands (bptrain/cli.py)."""

from __future__ import annotations

import json
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
from bptrain.sweep_render import print_sweep, print_sweeps, sweep_dict
from bptrain.sweeps import SweepHandle, best_trial
from bptrain.sweepspec import load_sweep_file
from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb

STATES = [name for name, _ in pb.JobState.items() if name != "JOB_STATE_UNSPECIFIED"]


def _ended_well(sweep: spb.Sweep) -> bool:
    return sweep.state == pb.SUCCEEDED and best_trial(sweep) is not None


@click.group()
def sweep() -> None:
    """Hyperparameter sweeps: many trials (jobs) of a base spec, the best one kept."""


@sweep.command("submit")
@click.argument("sweep_file", type=click.Path(path_type=Path))
@server_option
@click.option("--follow", is_flag=True, help="Show the trials live until the sweep ends.")
@reconnect_option
@click.option("--submission-id", default="", help="Idempotency key: a retry gets the same sweep.")
@click.option("--validate-only", is_flag=True, help="Only validate; print the spec with defaults.")
@output_option
def sweep_submit(
    sweep_file: Path,
    server: str,
    follow: bool,
    reconnect_for: float | None,
    submission_id: str,
    validate_only: bool,
    output: str,
) -> None:
    """Start the sweep in SWEEP_FILE (YAML or JSON). With --follow, exit 0 only if it
    SUCCEEDED with a best trial."""
    from bptrain.sweep_progress import follow_sweep

    with connected(server) as client:
        spec = load_sweep_file(sweep_file)
        if validate_only:
            checked = client.submit_sweep(spec, validate_only=True).message
            click.echo(json.dumps(sweep_dict(checked)["spec"], indent=2))
            return
        submitted = client.submit_sweep(spec, submission_id=submission_id).message
        click.echo(f"submitted {submitted.sweep_id}", err=True)
        if not follow:
            print_sweep(submitted, output)
            return
        final = follow_sweep(client, submitted.sweep_id, reconnect_for_s=reconnect_for)
    print_sweep(final, output)
    sys.exit(0 if _ended_well(final) else 1)


@sweep.command("watch")
@click.argument("sweep_id")
@server_option
@reconnect_option
@output_option
def sweep_watch(sweep_id: str, server: str, reconnect_for: float | None, output: str) -> None:
    """Show a sweep's trials live until it ends; exit 0 only if it SUCCEEDED with a best
    trial."""
    from bptrain.sweep_progress import follow_sweep

    with connected(server) as client:
        final = follow_sweep(client, sweep_id, reconnect_for_s=reconnect_for)
    print_sweep(final, output)
    sys.exit(0 if _ended_well(final) else 1)


@sweep.command("get")
@click.argument("sweep_id")
@server_option
@output_option
def sweep_get(sweep_id: str, server: str, output: str) -> None:
    """Show one sweep and its trials."""
    with connected(server) as client:
        found = client.get_sweep(sweep_id)
    print_sweep(found, output)


@sweep.command("list")
@server_option
@click.option("--state", type=click.Choice(STATES, case_sensitive=False))
@output_option
def sweep_list(server: str, state: str | None, output: str) -> None:
    """List sweeps, newest first."""
    with connected(server) as client:
        print_sweeps(client.list_sweeps(state=state), output)


@sweep.command("cancel")
@click.argument("sweep_id")
@server_option
@output_option
def sweep_cancel(sweep_id: str, server: str, output: str) -> None:
    """Stop a sweep: no more trials, the running ones cancelled (its best trial is kept)."""
    with connected(server) as client:
        cancelled = client.cancel_sweep(sweep_id)
    print_sweep(cancelled, output)


@sweep.command("best")
@click.argument("sweep_id")
@server_option
@weights_out_option
@weights_format_option
def sweep_best(sweep_id: str, server: str, path: Path, fmt: str | None) -> None:
    """Download the weights of the sweep's best trial (sha256-checked)."""
    fmt = weights_format(path, fmt)
    with connected(server) as client:
        handle = SweepHandle(client, spb.Sweep(sweep_id=sweep_id))
        trial = handle.best_trial()
        digest = client.download_weights(trial.job_id, path, format=fmt)
    click.echo(
        f"wrote {path}: trial {trial.number} ({trial.job_id}), "
        f"{handle.message.spec.metric} {trial.metric:.4f} (sha256 {digest})"
    )
