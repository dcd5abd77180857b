"""Following a job on a terminal: a live progress bar (rich), or plain lines when piped."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bptrain.client import Client
from bptrain.v1 import training_pb2 as pb


def describe(point: pb.MetricPoint) -> str:
    """loss, validation numbers when the point has them, staleness and the lead over
    the slowest worker (asp/ssp), throughput."""
    parts = [f"loss {point.loss:.4f}"]
    if point.HasField("validation_loss"):
        parts.append(f"val_loss {point.validation_loss:.4f}")
    if point.HasField("validation_accuracy"):
        parts.append(f"val_acc {point.validation_accuracy:.4f}")
    if point.staleness_max:
        parts.append(f"staleness {point.staleness_mean:.1f} (max {point.staleness_max})")
    if point.clock_lead_max:
        parts.append(f"lead {point.clock_lead_max}")
    parts.append(f"{point.samples_per_second:,.0f} samples/s")
    return "  ".join(parts)


def follow(
    client: Client,
    job_id: str,
    console: Console | None = None,
    *,
    reconnect_for_s: float | None = None,
) -> pb.Job:
    """Show a job's metrics until it ends; returns the final job. While the server is
    out of reach it says so ("reconnecting…") and keeps trying, for `reconnect_for_s`
    since the last answer (None: until the job ends)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        return _follow_plain(client, job_id, console, reconnect_for_s)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(job_id, total=None, metrics="waiting for the first step")
        validation = ""

        def show(point: pb.MetricPoint) -> None:
            nonlocal validation
            if progress.tasks[task].total is None:
                progress.update(task, total=client.get(job_id).total_steps or None)
            if point.HasField("validation_accuracy"):
                validation = f"  val_acc {point.validation_accuracy:.4f}"
            text = f"loss {point.loss:.4f}{validation}  {point.samples_per_second:,.0f} samples/s"
            progress.update(task, completed=point.step, metrics=text)

        def reconnecting(status: str, step: int) -> None:
            text = f"[yellow]reconnecting to {client.target}… ({status}, after step {step})"
            progress.update(task, metrics=text)

        return client.wait(
            job_id, on_point=show, on_reconnect=reconnecting, reconnect_for_s=reconnect_for_s
        )


def _follow_plain(
    client: Client, job_id: str, console: Console, reconnect_for_s: float | None
) -> pb.Job:
    is_reconnecting = False

    def show(point: pb.MetricPoint) -> None:
        nonlocal is_reconnecting
        if is_reconnecting:
            console.print(f"{job_id} reconnected; step {point.step}", soft_wrap=True)
            is_reconnecting = False
        if point.HasField("validation_loss") or point.step == 1:
            console.print(
                f"{job_id} step {point.step} epoch {point.epoch}  {describe(point)}",
                soft_wrap=True,
            )

    def reconnecting(status: str, step: int) -> None:
        nonlocal is_reconnecting
        if not is_reconnecting:  # once an outage, not once an attempt
            console.print(
                f"{job_id} reconnecting to {client.target}… ({status}, after step {step})",
                soft_wrap=True,
            )
            is_reconnecting = True

    return client.wait(
        job_id, on_point=show, on_reconnect=reconnecting, reconnect_for_s=reconnect_for_s
    )
