"""StreamMetrics' fan-out: every follower of a job reads one shared, in-memory tail.

A follower costs no thread and no query of its own once it has caught up: per followed
job, one `_Tail` holds the newest stored points (converted to responses once), and one
refresh (a store read in a worker thread) per change of the store extends it and wakes
every follower waiting on it. A follower behind the tail (a resume from an old
`after_step`, or one slower than the tail is long) reads the store directly, page by
page, until it reaches the tail.

The followers of a burst take turns: at most `fanout_slots` of them (all jobs
together) have a message on its way at once, and the others wait for a slot in line.
Woken all at once, a thousand followers would put thousands of writes in front of
every other callback of the event loop, and a health check or a GetJob arriving then
waited for all of them (p99 115-180 ms under bench/load.py); taking turns, each waits
for a few dozen (22-58 ms), for a wider spread of the same step over the followers.
A follower waiting for the tail is not woken by new points themselves: the tail lines
it up (`Turns.line_up`), and it wakes once, holding its slot.

A follower that asks for `batched` messages gets the points that are ready together in
one message (`points`, at most BATCH_POINTS): after a drain of the job's workers that is
one message per follower instead of one per point, and followers at the same cursor share
the message, built once per change of the tail.

Invariant of a tail: every stored point with covered_after < step <= last_step is in
`steps`/`responses`, in step order; `final` is set once the job has ended and no point
after last_step is stored. Everything here runs on the server's event loop; `changed`
is the one entry that other threads may call.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bptrain.v1 import training_pb2 as pb
from services.api import convert
from services.api.turns import Turns
from services.errors import InvalidSpecError
from services.jobs.records import JobRecord, MetricPoint
from services.jobs.store import JobStore

log = logging.getLogger(__name__)

TAIL_POINTS = 4096  # newest points kept per followed job
PAGE_POINTS = 1000  # points one store read returns at most
FANOUT_SLOTS = 32  # followers with a tail message on its way at once
BATCH_POINTS = 1000  # points in one batched message at most (~100 KB)
_KEPT_BATCHES = 8  # batched messages kept per tail (cursors seen since its last change)


@dataclass(eq=False)
class _Tail:
    covered_after: int = 0
    last_step: int = 0
    steps: list[int] = field(default_factory=list)
    responses: list[pb.StreamMetricsResponse] = field(default_factory=list)
    final: pb.StreamMetricsResponse | None = None
    followers: int = 0
    waiting: list[asyncio.Future[None]] = field(default_factory=list)  # for the tail to move
    is_refreshing: bool = False
    is_dirty: bool = False
    refresher: asyncio.Task | None = None
    batches: dict[int, list[pb.StreamMetricsResponse]] = field(default_factory=dict)

    def batches_after(self, start: int) -> list[pb.StreamMetricsResponse]:
        """The points from index `start` on as batched messages, BATCH_POINTS to one;
        built once per cursor and change of the tail, and shared by the followers there."""
        key = self.steps[start]
        batches = self.batches.get(key)
        if batches is None:
            if len(self.batches) >= _KEPT_BATCHES:
                self.batches.clear()
            points = [response.point for response in self.responses[start:]]
            batches = self.batches[key] = batches_of(points)
        return batches

    def extend(self, points: list[MetricPoint], limit: int) -> None:
        for point in points:
            self.steps.append(point.step)
            self.responses.append(pb.StreamMetricsResponse(point=convert.point_to_proto(point)))
        if points:
            self.last_step = points[-1].step
            self.batches.clear()  # their last point is no longer the tail's
        if len(self.steps) > limit:  # the oldest leave; followers behind them read the store
            cut = len(self.steps) - limit
            self.covered_after = self.steps[cut - 1]
            del self.steps[:cut], self.responses[:cut]

    def wake(self, turns: Turns) -> None:
        """Every follower waiting for the tail lines up for a slot (in the order they
        came), and wakes holding it."""
        waiting, self.waiting = self.waiting, []
        for woken in waiting:
            if not woken.done():  # (cancelled: its follower left)
                turns.line_up(woken)


class Followers:
    """The followers of every job, served from one tail per followed job."""

    def __init__(
        self, store: JobStore, *, tail_points: int = TAIL_POINTS, fanout_slots: int = FANOUT_SLOTS
    ) -> None:
        if fanout_slots < 1:
            raise ValueError(f"fanout_slots must be >= 1, got {fanout_slots}")
        self.store = store
        self.tail_points = tail_points
        self._tails: dict[str, _Tail] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turns = Turns(fanout_slots)  # FIFO: waiting followers in line

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the followers run on (the server's)."""
        self._loop = loop

    def changed(self) -> None:
        """The store changed (points, a state): refresh every tail. Any thread may call."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._refresh_all)

    @property
    def followed_jobs(self) -> int:
        return len(self._tails)

    async def follow(
        self,
        job_id: str,
        after_step: int,
        check_access: Callable[[str], JobRecord],
        *,
        batched: bool = False,
    ) -> AsyncIterator[pb.StreamMetricsResponse]:
        """Points with step > after_step, stored then live, one message each (`point`)
        or, `batched`, those ready together in one (`points`); then the finished job.

        `check_access(job_id)` returns the job, or raises (NotFoundError) before the
        first message when the caller may not see it; it runs in a worker thread."""
        if after_step < 0:
            raise InvalidSpecError("after_step", f"must be >= 0, got {after_step}")
        record = await asyncio.to_thread(check_access, job_id)
        tail = self._acquire(job_id, record)
        slot = _Slot(self._turns)
        try:
            cursor = after_step
            while True:
                if cursor < tail.covered_after:  # behind the tail: page through the store
                    slot.give()
                    responses, cursor = await self._stored(job_id, cursor, tail, batched)
                    for response in responses:
                        yield response
                    continue
                start = bisect.bisect_right(tail.steps, cursor)
                if start < len(tail.steps):
                    last = tail.steps[-1]
                    ready = tail.batches_after(start) if batched else tail.responses[start:]
                    for response in ready:
                        await slot.take()
                        yield response  # the slot is held until the message is written
                        slot.give()
                    cursor = last
                    continue
                if tail.final is not None:
                    yield tail.final
                    return
                await slot.wait_for(tail)
        finally:
            slot.give()
            self._release(job_id, tail)

    async def _stored(
        self, job_id: str, cursor: int, tail: _Tail, batched: bool
    ) -> tuple[list[pb.StreamMetricsResponse], int]:
        """The next page of stored points after `cursor` as messages, and the new cursor."""
        points = await asyncio.to_thread(self.store.metrics_after, job_id, cursor, PAGE_POINTS)
        protos = [convert.point_to_proto(point) for point in points]
        if batched:
            responses = batches_of(protos)
        else:
            responses = [pb.StreamMetricsResponse(point=proto) for proto in protos]
        return responses, points[-1].step if points else tail.covered_after

    def _acquire(self, job_id: str, record: JobRecord) -> _Tail:
        """The job's tail; a new one starts after `record` (the job as just read)."""
        tail = self._tails.get(job_id)
        if tail is None:
            tail = self._tails[job_id] = _Tail()
            tail.followers += 1
            tail.covered_after = tail.last_step = record.step
            if record.is_finished:
                tail.final = _final(record)
            self._refresh(job_id, tail)  # a change since `record` was read must not be missed
            return tail
        tail.followers += 1
        return tail

    def _release(self, job_id: str, tail: _Tail) -> None:
        tail.followers -= 1
        if tail.followers == 0 and self._tails.get(job_id) is tail:
            del self._tails[job_id]

    def _refresh_all(self) -> None:
        for job_id, tail in list(self._tails.items()):
            self._refresh(job_id, tail)

    def _refresh(self, job_id: str, tail: _Tail) -> None:
        if tail.final is not None:
            return
        if tail.is_refreshing:
            tail.is_dirty = True  # read again when the running read ends
            return
        tail.is_refreshing = True
        # The loop keeps only a weak reference to a task: the tail holds it while it runs.
        tail.refresher = asyncio.get_running_loop().create_task(self._read_into(job_id, tail))

    async def _read_into(self, job_id: str, tail: _Tail) -> None:
        try:
            while True:
                tail.is_dirty = False
                record, points, is_complete = await asyncio.to_thread(
                    self._read, job_id, tail.last_step
                )
                tail.extend(points, self.tail_points)
                if is_complete and record.is_finished:
                    tail.final = _final(record)
                tail.wake(self._turns)
                if tail.final is not None or (is_complete and not tail.is_dirty):
                    return
        except Exception:  # (the store closing under a shutdown): the next change reads again
            log.exception("reading job %s for its followers failed", job_id)
        finally:
            tail.is_refreshing = False

    def _read(self, job_id: str, after: int) -> tuple[JobRecord, list[MetricPoint], bool]:
        """The job, then its points after `after` (complete: no more stored after them)."""
        record = self.store.get(job_id)  # state first: a job's points are stored before it ends
        points: list[MetricPoint] = []
        while len(points) < self.tail_points:
            page = self.store.metrics_after(job_id, after, PAGE_POINTS)
            points += page
            if len(page) < PAGE_POINTS:
                return record, points, True
            after = page[-1].step
        return record, points, False


def batches_of(points: list[pb.MetricPoint]) -> list[pb.StreamMetricsResponse]:
    """Batched messages of consecutive points (copied into them), BATCH_POINTS to one."""
    return [
        pb.StreamMetricsResponse(points=pb.MetricPoints(points=points[i : i + BATCH_POINTS]))
        for i in range(0, len(points), BATCH_POINTS)
    ]


class _Slot:
    """One follower's hold on a slot of the fan-out's turns (at most one)."""

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self.is_held = False

    async def take(self) -> None:
        if not self.is_held:
            await self.turns.take()
            self.is_held = True

    def give(self) -> None:
        if self.is_held:
            self.is_held = False
            self.turns.give()

    async def wait_for(self, tail: _Tail) -> None:
        """Until the tail moves; then this follower holds a slot (woken once, with it)."""
        self.give()  # (woken with nothing new for this follower)
        woken = asyncio.get_running_loop().create_future()
        tail.waiting.append(woken)  # no await since the follower's checks: no wake missed
        try:
            await self.turns.holding(woken)
        except BaseException:  # (it left): nothing of it stays on a tail that does not move
            if woken in tail.waiting:
                tail.waiting.remove(woken)
            raise
        self.is_held = True


def _final(record: JobRecord) -> pb.StreamMetricsResponse:
    return pb.StreamMetricsResponse(final=convert.job_to_proto(record))
