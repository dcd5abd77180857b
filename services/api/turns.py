"""Turns: at most `slots` holders at once, the others in one first-come line.

An asyncio.Semaphore, with one thing more: `line_up(future)` puts a waiter that is not
a coroutine in the line, and resolves its future once it holds a slot. The followers'
fan-out uses it so that a follower woken by new points is woken once, already holding
its slot, instead of being woken by the points, then parked on a semaphore, then woken
again (two event-loop turns per follower and burst, a thousand followers deep).

Everything runs on one event loop; a holder gives its slot back with `give`.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = slots
        self._line: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Waiters in line (a cancelled one counts until its turn comes)."""
        return len(self._line)

    def line_up(self, future: asyncio.Future[None]) -> None:
        """Resolve `future` when a slot is free for it (at once if one is and nobody
        waits). Whoever awaits it then holds that slot: see `holding`."""
        if self._free > 0 and not self._line:
            self._free -= 1
            future.set_result(None)
        else:
            self._line.append(future)

    async def holding(self, future: asyncio.Future[None]) -> None:
        """Await a lined-up `future`; on return the caller holds a slot. Cancelled while
        waiting, the caller holds none: a slot its future was already given goes on."""
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give()
            raise

    async def take(self) -> None:
        """Wait in line for a slot."""
        future = asyncio.get_running_loop().create_future()
        self.line_up(future)
        await self.holding(future)

    def give(self) -> None:
        """Give a held slot back: to the first live waiter in line, else to the pool."""
        while self._line:
            future = self._line.popleft()
            if not future.done():  # a waiter that left was cancelled: skip it
                future.set_result(None)
                return
        self._free += 1
