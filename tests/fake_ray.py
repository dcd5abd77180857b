"""A fake object store for the step loops' unit tests: FakeRay's `get` and `wait` over
FakeRefs on a simulated clock (a `wait` with a timeout moves the clock to when enough
refs are ready; a ref that is never ready times out), and FakeCheckpoints."""

from __future__ import annotations

import math

from ray.exceptions import GetTimeoutError

HANG = object()  # a fault that never answers: the loop's wait times out


class FakeRef:
    """An object-store value, ready from tick `ready_at` (None: never); `error` is
    raised instead of returning it."""

    def __init__(self, value: object = None, ready_at: float | None = 0.0, error=None) -> None:
        self.value, self.ready_at, self.error = value, ready_at, error

    def is_ready(self, now: float) -> bool:
        return self.ready_at is not None and self.ready_at <= now


class FakeRay:
    """`ray.get` and `ray.wait` over FakeRefs; `fetched`: every value `get` returned."""

    def __init__(self) -> None:
        self.now = 0.0
        self.fetched: list[object] = []

    def get(self, refs, timeout: float | None = None):
        if isinstance(refs, list):
            return [self.get(ref, timeout) for ref in refs]
        limit = math.inf if timeout is None else timeout
        if refs.ready_at is None or refs.ready_at > self.now + limit:
            self.now += limit
            raise GetTimeoutError("fake: not ready in time")
        self.now = max(self.now, refs.ready_at)
        if refs.error is not None:
            raise refs.error
        self.fetched.append(refs.value)
        return refs.value

    def wait(self, refs: list[FakeRef], num_returns: int = 1, timeout: float | None = None):
        times = sorted(r.ready_at for r in refs if r.ready_at is not None)
        due = times[num_returns - 1] if 0 < num_returns <= len(times) else math.inf
        deadline = self.now + (math.inf if timeout is None else timeout)
        if min(due, deadline) < math.inf:  # enough are ready then, or the wait times out
            self.now = max(self.now, min(due, deadline))
        ready = [r for r in refs if r.is_ready(self.now)]
        return ready, [r for r in refs if not r.is_ready(self.now)]


class FakeCheckpoints:
    """The steps of the checkpoints saved, in order."""

    def __init__(self) -> None:
        self.saved: list[int] = []

    def save(self, checkpoint) -> None:
        self.saved.append(checkpoint.step)

    def latest(self, at_most: int | None = None) -> int | None:
        return max((s for s in self.saved if at_most is None or s <= at_most), default=None)
