"""Following a sweep on a terminal: a live table of its trials (rich), redrawn on each
StreamSweep event, or plain lines (trials started, stopped, finished) when piped."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from bptrain.client import Client
from bptrain.sweep_render import sweep_view
from bptrain.v1 import sweeps_pb2 as spb


class TrialBoard:
    """The sweep's trials as the events tell them (each event carries its trial whole)."""

    def __init__(self, sweep: spb.Sweep) -> None:
        self.sweep = sweep
        self.trials = {t.number: t for t in sweep.trials}
        self.note = ""

    def apply(self, event: spb.SweepEvent) -> None:
        self.trials[event.trial.number] = event.trial
        self.note = ""

    def view(self) -> Group:
        view = sweep_view(self.sweep, self.trials.values())
        return Group(view, Text(self.note, style="yellow")) if self.note else view


def follow_sweep(
    client: Client,
    sweep_id: str,
    console: Console | None = None,
    *,
    reconnect_for_s: float | None = None,
) -> spb.Sweep:
    """Show a sweep's trials until it ends; returns the final sweep. While the server is
    out of reach it says so and keeps trying, for `reconnect_for_s` since the last
    answer (None: until the sweep ends)."""
    console = console or Console(stderr=True)
    board = TrialBoard(client.get_sweep(sweep_id))
    if not console.is_terminal:
        return _follow_plain(client, board, console, reconnect_for_s)
    with Live(board.view(), console=console, auto_refresh=False, transient=True) as live:

        def show(event: spb.SweepEvent) -> None:
            board.apply(event)
            live.update(board.view(), refresh=True)

        def reconnecting(status: str, seq: int) -> None:
            board.note = f"reconnecting to {client.target}… ({status}, after event {seq})"
            live.update(board.view(), refresh=True)

        return client.wait_sweep(
            sweep_id, on_event=show, on_reconnect=reconnecting, reconnect_for_s=reconnect_for_s
        )


def _follow_plain(
    client: Client, board: TrialBoard, console: Console, reconnect_for_s: float | None
) -> spb.Sweep:
    sweep_id = board.sweep.sweep_id
    is_reconnecting = False

    def show(event: spb.SweepEvent) -> None:
        nonlocal is_reconnecting
        if is_reconnecting:
            console.print(f"{sweep_id} reconnected; event {event.seq}", soft_wrap=True)
            is_reconnecting = False
        if event.kind != spb.TRIAL_REPORTED:  # one line per evaluation is too many
            kind = spb.SweepEventKind.Name(event.kind)
            text = event.message or f"trial {event.trial.number}: {kind}"
            console.print(f"{sweep_id} {text}", soft_wrap=True)

    def reconnecting(status: str, seq: int) -> None:
        nonlocal is_reconnecting
        if not is_reconnecting:  # once an outage, not once an attempt
            console.print(
                f"{sweep_id} reconnecting to {client.target}… ({status}, after event {seq})",
                soft_wrap=True,
            )
            is_reconnecting = True

    return client.wait_sweep(
        sweep_id, on_event=show, on_reconnect=reconnecting, reconnect_for_s=reconnect_for_s
    )
