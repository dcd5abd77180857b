"""How far a job's runner may train past the last step the store has recorded.

The runner publishes each step's metrics; the API process stores them and, by its next
poll, tells the runner the last step it holds (`recorded`). If the API process stalls
(or dies), a runner that trained on would leave steps that only it knows of: a runner
that replaces it must resume at or before `recorded`, so everything past it is trained
again, and a checkpoint past it cannot be used. So the runner's lead is bounded: it may
start step t only while

    t ≤ recorded + max(min_steps, ⌈rate · max_s⌉)      rate: steps per second so far

which never slows a job whose store keeps up (the API records within a poll, well under
`max_s`), and holds a job about `max_s` of training past a stalled store. The limit never
goes down once given (colocated workers are told it and act on it on their own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX_LEAD_S = 5.0  # a runner trains at most about this long past the store's last step
MIN_LEAD_STEPS = 32


class Lead:
    """The lead bound of one runner; `max_s` None: unbounded (nobody records)."""

    def __init__(
        self,
        total_steps: int,
        *,
        max_s: float | None = MAX_LEAD_S,
        min_steps: int = MIN_LEAD_STEPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_s is not None and max_s <= 0:
            raise ValueError(f"max_s must be > 0 or None, got {max_s}")
        if min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps}")
        self.total_steps = total_steps
        self.max_s = max_s
        self.min_steps = min_steps
        self.recorded = 0
        self._clock = clock
        self._from_step = 0
        self._from_time = clock()
        self._limit = 0

    def start(self, step: int) -> None:
        """Training (re)starts after `step`: the rate counts from here."""
        self._from_step, self._from_time = step, self._clock()

    def record(self, step: int) -> None:
        """The store holds every step up to `step`."""
        self.recorded = max(self.recorded, step)

    def limit(self, reported: int) -> int:
        """The last step that may be trained now, `reported` steps being done."""
        if self.max_s is None:
            return self.total_steps
        elapsed = self._clock() - self._from_time
        rate = (reported - self._from_step) / elapsed if elapsed > 0 else 0.0
        lead = max(self.min_steps, math.ceil(rate * self.max_s))
        self._limit = min(self.total_steps, max(self._limit, self.recorded + lead))
        return self._limit
