"""Sweeps in the SDK: `Client.submit_sweep` and the calls beside it (`SweepCalls`, a base
of `Client`), and `SweepHandle`, a submitted sweep and the verbs on it.

    sweep = client.submit_sweep("examples/sweep.yaml")
    final = sweep.wait()                # follows StreamSweep to the sweep's end
    sweep.best_weights("model.npz")     # the best trial's job's weights
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bptrain.channel import BptrainError, Resumable, call, follow
from bptrain.sweepspec import load_sweep_file, sweep_spec_from_dict
from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import sweeps_pb2_grpc
from bptrain.v1 import training_pb2 as pb

if TYPE_CHECKING:
    from bptrain.client import Client
    from bptrain.model import Model

SweepSpecLike = spb.SweepSpec | dict | str | Path


def best_trial(sweep: spb.Sweep) -> spb.Trial | None:
    """The sweep's best finished trial so far, if it has one."""
    if not sweep.HasField("best_trial"):
        return None
    return next((t for t in sweep.trials if t.number == sweep.best_trial), None)


class SweepCalls:
    """SweepService's calls, as methods of `Client` (which sets `_sweeps` and
    `timeout_s`)."""

    _sweeps: sweeps_pb2_grpc.SweepServiceStub
    timeout_s: float

    def submit_sweep(
        self, spec: SweepSpecLike, *, submission_id: str = "", validate_only: bool = False
    ) -> SweepHandle:
        """Start a sweep: a SweepSpec message, a mapping, or a path to a YAML/JSON file
        (see bptrain.sweepspec). `submission_id` makes the call idempotent;
        `validate_only` returns the sweep as it would run (defaults filled in, no
        sweep_id), starting nothing."""
        if isinstance(spec, (str, Path)):
            spec = load_sweep_file(spec)
        elif isinstance(spec, dict):
            spec = sweep_spec_from_dict(spec)
        request = spb.SubmitSweepRequest(
            spec=spec, submission_id=submission_id, validate_only=validate_only
        )
        sweep = call(self._sweeps.SubmitSweep, request, timeout=self.timeout_s)
        return SweepHandle(self, sweep)  # type: ignore[arg-type]

    def get_sweep(self, sweep_id: str) -> spb.Sweep:
        request = spb.GetSweepRequest(sweep_id=sweep_id)
        return call(self._sweeps.GetSweep, request, timeout=self.timeout_s)

    def list_sweeps(self, *, state: str | None = None, page_size: int = 50) -> Iterator[spb.Sweep]:
        """Every sweep, newest first (fetched page by page); `state` e.g. "RUNNING"."""
        state_value = pb.JobState.Value(state.upper()) if state else pb.JOB_STATE_UNSPECIFIED
        token = ""
        while True:
            request = spb.ListSweepsRequest(
                page_size=page_size, page_token=token, state=state_value
            )
            page = call(self._sweeps.ListSweeps, request, timeout=self.timeout_s)
            yield from page.sweeps
            token = page.next_page_token
            if not token:
                return

    def cancel_sweep(self, sweep_id: str) -> spb.Sweep:
        """Stop starting trials and cancel the running ones; returns the sweep (CANCELLED,
        or as it was if it had already ended)."""
        request = spb.CancelSweepRequest(sweep_id=sweep_id)
        return call(self._sweeps.CancelSweep, request, timeout=max(self.timeout_s, 60.0))

    def stream_sweep(
        self,
        sweep_id: str,
        after_seq: int = 0,
        *,
        reconnect_for_s: float | None = None,
        on_reconnect: Callable[[str, int], None] | None = None,
    ) -> Iterator[spb.StreamSweepResponse]:
        """The sweep's events with seq > after_seq, then the final sweep. A dropped stream
        is resumed after the last event seen, as `Client.events` resumes a job's."""
        source = Resumable(
            open_after=lambda seq: self._sweeps.StreamSweep(
                spb.StreamSweepRequest(sweep_id=sweep_id, after_seq=seq)
            ),
            position=lambda item: item.event.seq if item.HasField("event") else None,
            stream="sweep stream",
            unit="event",
            owner="sweep",
        )
        return follow(source, after_seq, reconnect_for_s, on_reconnect)

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        on_event: Callable[[spb.SweepEvent], None] | None = None,
        on_reconnect: Callable[[str, int], None] | None = None,
        reconnect_for_s: float | None = None,
    ) -> spb.Sweep:
        """Follow a sweep to its end, calling `on_event` for each event; returns it."""
        items = self.stream_sweep(
            sweep_id, reconnect_for_s=reconnect_for_s, on_reconnect=on_reconnect
        )
        for item in items:
            if item.HasField("event") and on_event is not None:
                on_event(item.event)
            if item.HasField("final"):
                return item.final
        raise AssertionError("unreachable: stream_sweep() ends with the final sweep")


class SweepHandle:
    """A submitted sweep: the `bptrain.v1.Sweep` last seen (`.message`, its fields read
    through: `.sweep_id`, `.state`, `.trials`, ...), plus verbs."""

    def __init__(self, client: Client, sweep: spb.Sweep) -> None:
        self.client = client
        self.message = sweep

    def __getattr__(self, name: str) -> Any:
        if name == "message":  # not set yet (unpickling, copying): no recursion
            raise AttributeError(name)
        return getattr(self.message, name)

    def __repr__(self) -> str:
        return f"SweepHandle({self.message.sweep_id!r}, {pb.JobState.Name(self.message.state)})"

    def sweep(self) -> spb.Sweep:
        """The sweep as it is now (GetSweep)."""
        self.message = self.client.get_sweep(self.message.sweep_id)
        return self.message

    def events(
        self, after_seq: int = 0, *, reconnect_for_s: float | None = None
    ) -> Iterator[spb.StreamSweepResponse]:
        return self.client.stream_sweep(
            self.message.sweep_id, after_seq, reconnect_for_s=reconnect_for_s
        )

    def wait(
        self,
        *,
        on_event: Callable[[spb.SweepEvent], None] | None = None,
        on_reconnect: Callable[[str, int], None] | None = None,
        reconnect_for_s: float | None = None,
    ) -> spb.Sweep:
        self.message = self.client.wait_sweep(
            self.message.sweep_id,
            on_event=on_event,
            on_reconnect=on_reconnect,
            reconnect_for_s=reconnect_for_s,
        )
        return self.message

    def cancel(self) -> spb.Sweep:
        self.message = self.client.cancel_sweep(self.message.sweep_id)
        return self.message

    def best_trial(self) -> spb.Trial:
        """The best finished trial as of now; BptrainError when there is none."""
        sweep = self.sweep()
        trial = best_trial(sweep)
        if trial is None or not trial.job_id:
            state = pb.JobState.Name(sweep.state)
            reason = f": {sweep.reason}" if sweep.reason else ""
            raise BptrainError(
                "FAILED_PRECONDITION",
                f"sweep {sweep.sweep_id!r} has no best trial ({state}{reason})",
            )
        return trial

    def best_weights(self, path: str | Path, format: str = "npz") -> str:
        """Write the best trial's weights to `path` (npz, safetensors or onnx, sha256
        checked); returns their sha256."""
        return self.client.download_weights(self.best_trial().job_id, path, format=format)

    def best_model(self) -> Model:
        """The best trial's model, rebuilt here: ``handle.best_model().predict(X)``."""
        return self.client.model(self.best_trial().job_id)
