"""SweepService servicer: proto in, SweepManager call, proto out. Errors are mapped elsewhere.

StreamSweep replays a sweep's stored events after the cursor, then waits (a suspended
coroutine, no thread) until the sweeps' driver says something changed, reads again,
and ends with the sweep in its final state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import sweeps_pb2_grpc
from services.api import convert, sweep_convert
from services.api.auth import caller
from services.errors import InvalidSpecError
from services.jobs.manager import JobManager
from services.sweeps.manager import SweepManager
from services.tenancy import Principal

Context = grpc.aio.ServicerContext

WAIT_S = 5.0  # a follower reads again at least this often, whatever it is told


def _sweep_id(sweep_id: str) -> str:
    if not sweep_id:
        raise InvalidSpecError("sweep_id", "is required")
    return sweep_id


class SweepChanges:
    """Wakes StreamSweep followers (on the event loop) when the driver made a pass."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._moved: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._moved = asyncio.Event()

    def changed(self) -> None:
        """From any thread."""
        if self._loop is None or self._moved is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: server stopped
            self._loop.call_soon_threadsafe(self._moved.set)

    async def wait(self) -> None:
        assert self._moved is not None
        moved = self._moved
        try:
            await asyncio.wait_for(moved.wait(), WAIT_S)
        except TimeoutError:
            pass
        finally:
            if moved.is_set():  # every waiter woke; the next change sets it again
                self._moved = asyncio.Event()


class SweepServicer(sweeps_pb2_grpc.SweepServiceServicer):
    def __init__(self, sweeps: SweepManager, jobs: JobManager, changes: SweepChanges) -> None:
        self.sweeps = sweeps
        self.jobs = jobs
        self.changes = changes

    async def SubmitSweep(self, request: spb.SubmitSweepRequest, context: Context) -> spb.Sweep:
        return await asyncio.to_thread(self._submit, request, caller())

    def _submit(self, request: spb.SubmitSweepRequest, principal: Principal) -> spb.Sweep:
        spec = sweep_convert.sweep_spec_from_proto(
            request.spec, self.jobs.dataset_lookup(principal)
        )
        if request.validate_only:
            return spb.Sweep(name=spec.name, spec=sweep_convert.sweep_spec_to_proto(spec))
        record = self.sweeps.submit(spec, principal=principal, submission_id=request.submission_id)
        return sweep_convert.sweep_to_proto(record)

    async def GetSweep(self, request: spb.GetSweepRequest, context: Context) -> spb.Sweep:
        record = await asyncio.to_thread(
            self.sweeps.get, _sweep_id(request.sweep_id), principal=caller()
        )
        return sweep_convert.sweep_to_proto(record)

    async def ListSweeps(
        self, request: spb.ListSweepsRequest, context: Context
    ) -> spb.ListSweepsResponse:
        records, token = await asyncio.to_thread(
            self.sweeps.list,
            principal=caller(),
            state=convert.state_from_proto(request.state),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return spb.ListSweepsResponse(
            sweeps=[sweep_convert.sweep_to_proto(r) for r in records], next_page_token=token
        )

    async def CancelSweep(self, request: spb.CancelSweepRequest, context: Context) -> spb.Sweep:
        record = await asyncio.to_thread(
            self.sweeps.cancel, _sweep_id(request.sweep_id), principal=caller()
        )
        return sweep_convert.sweep_to_proto(record)

    async def StreamSweep(
        self, request: spb.StreamSweepRequest, context: Context
    ) -> AsyncIterator[spb.StreamSweepResponse]:
        sweep_id, principal = _sweep_id(request.sweep_id), caller()
        if request.after_seq < 0:
            raise InvalidSpecError("after_seq", f"must be >= 0, got {request.after_seq}")
        await asyncio.to_thread(self.sweeps.get, sweep_id, principal=principal)  # NOT_FOUND
        cursor = request.after_seq
        while True:
            record = await asyncio.to_thread(self.sweeps.get, sweep_id, principal=principal)
            events = await asyncio.to_thread(self.sweeps.events_after, sweep_id, cursor)
            for event in events:
                yield spb.StreamSweepResponse(event=sweep_convert.event_to_proto(event))
                cursor = event.seq
            if not events and record.is_finished:
                yield spb.StreamSweepResponse(final=sweep_convert.sweep_to_proto(record))
                return
            if not events:
                await self.changes.wait()
