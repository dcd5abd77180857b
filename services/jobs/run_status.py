"""RunStatus: what a runner's training thread shares with `poll`: the job's state, the
points `poll` has not acknowledged yet, and the lead bound that holds training back
while the store is behind (`lead.Lead`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services.jobs.lead import Lead
from services.jobs.outcomes import JobCancelled
from services.jobs.records import JobState, MetricPoint

# Colocated workers' statistics are drained this often by default (at once at the end); a
# step loop held back by its lead checks this often whether it was cancelled.
DRAIN_PERIOD_S = 0.5
POINTS_PER_WAKE = 64  # while publishing a drained batch: wake `poll` this often


@dataclass(frozen=True)
class RunnerUpdate:
    """What `poll` returns: the job's state and the points after the caller's cursor."""

    state: JobState
    reason: str
    total_steps: int
    started_at: float | None
    placement: tuple[dict, ...] = ()
    points: list[MetricPoint] = field(default_factory=list)
    restarts: int = 0  # actors replaced after a failure


class RunStatus:
    """One job's state and unacknowledged points, guarded by one condition that wakes
    `poll` when they change and the step loop when the store records more.
    `last_published`: the last step already reported (a step is published once)."""

    def __init__(
        self, lead: Lead, last_published: int, drain_period_s: float = DRAIN_PERIOD_S
    ) -> None:
        self.lead = lead
        self.drain_period_s = drain_period_s
        self.state = JobState.QUEUED
        self.reason = ""
        self.total_steps = 0
        self.started_at: float | None = None
        self._changed = threading.Condition()
        self._last_published = last_published
        self._is_run = False
        self._is_batching = False  # points published in a batch wake `poll` in groups
        self._unannounced = 0  # points published since `poll` was last woken
        self._points: list[MetricPoint] = []

    def begin(self) -> bool:
        """True the first time only: a job is run once per runner."""
        with self._changed:
            if self._is_run:
                return False
            self._is_run = True
            return True

    def start(self, total_steps: int) -> None:
        """Training starts: the job is RUNNING, `total_steps` long."""
        with self._changed:
            self.state = JobState.RUNNING
            self.total_steps = total_steps
            self.started_at = time.time()
            self._changed.notify_all()

    def finish(self, state: JobState, reason: str) -> None:
        with self._changed:
            self.state = state
            self.reason = reason
            self._changed.notify_all()

    def poll(
        self, after_step: int, timeout_s: float, on_recorded: Callable[[int], None]
    ) -> RunnerUpdate:
        """Points with step > after_step (waiting up to timeout_s for one), and the state;
        the points up to after_step are acknowledged (`on_recorded` is told the step the
        store now holds) and dropped."""
        with self._changed:
            self.lead.record(after_step)
            on_recorded(self.lead.recorded)
            self._changed.notify_all()  # a runner held back by its lead may go on
            state_at_call = self.state  # a new state (RUNNING) is news too
            self._changed.wait_for(
                lambda: (
                    self.state is not state_at_call
                    or self.state.is_terminal
                    or (self._points and self._points[-1].step > after_step)
                ),
                timeout=timeout_s,
            )
            self._points = [p for p in self._points if p.step > after_step]
            return RunnerUpdate(
                state=self.state,
                reason=self.reason,
                total_steps=self.total_steps,
                started_at=self.started_at,
                points=list(self._points),
            )

    def publish(self, point: MetricPoint) -> None:
        """Hand a step's point to `poll`; a step trained again after a restore (at or
        before the last published) is not published twice."""
        with self._changed:
            if point.step <= self._last_published:
                return
            self._last_published = point.step
            self._points.append(point)
            self._unannounced += 1
            if not self._is_batching or self._unannounced >= POINTS_PER_WAKE:
                self._unannounced = 0
                self._changed.notify_all()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Points published inside wake `poll` every POINTS_PER_WAKE points and at the
        end, not at every point: a drained batch of steps is a few poll answers, and the
        store still acknowledges it in pieces (so the runner's idea of the recorded step,
        which decides the checkpoints it keeps, stays close to the store's)."""
        self._is_batching = True
        try:
            yield
        finally:
            with self._changed:
                self._is_batching = False
                self._unannounced = 0
                self._changed.notify_all()

    def wait_for_room(self, reported: int, is_cancelled: Callable[[], bool]) -> None:
        """Hold the step loop while step reported + 1 is past the lead's limit (the
        store is behind); a poll that records more wakes it."""
        with self._changed:
            while reported + 1 > self.lead.limit(reported):
                if is_cancelled():
                    raise JobCancelled
                self._changed.wait(timeout=self.drain_period_s)

    def wait_for_record(
        self, reported: int, allowed: int, is_cancelled: Callable[[], bool]
    ) -> None:
        """Colocated workers wait at `allowed`: wait (up to a drain period) until a
        poll records enough for the limit to grow."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.lead.limit(reported) > allowed or is_cancelled(),
                timeout=self.drain_period_s,
            )
