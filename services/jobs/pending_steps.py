"""PendingSteps: colocated workers' per-shard statistics and snapshots, held until a step
has them all, then handed out in step order."""

from __future__ import annotations

from collections.abc import Iterator

from services.paramserver.colocated import ShardState
from services.paramserver.server import StepStats


class PendingSteps:
    """A step is complete with one StepStats per worker and, on a snapshot step (a
    multiple of one of `snapshot_every`, or the last; none when `snapshot_every` is
    empty), one ShardState per worker."""

    def __init__(self, workers: int, snapshot_every: tuple[int, ...], last: int) -> None:
        self.workers, self.snapshot_every, self.last = workers, snapshot_every, last
        self.stats: dict[int, list[StepStats]] = {}
        self.states: dict[int, list[ShardState]] = {}

    def add(self, stats: list[StepStats], states: list[ShardState]) -> None:
        for s in stats:  # a bsp update's version is its step; a push's clock is step − 1
            self.stats.setdefault(s.version if s.clock < 0 else s.clock + 1, []).append(s)
        for state in states:
            self.states.setdefault(state.step, []).append(state)

    def _is_snapshot(self, step: int) -> bool:
        if not self.snapshot_every:  # the workers keep no snapshots
            return False
        return step == self.last or any(step % k == 0 for k in self.snapshot_every)

    def complete(
        self, after: int
    ) -> Iterator[tuple[int, list[StepStats], list[ShardState] | None]]:
        """(step, stats in shard order, shard states or None) for each step after `after`
        that is complete, in order, up to the first that is not; drops what they used
        and anything at or before `after` (steps computed again after a restart)."""
        for step in [s for s in self.stats if s <= after]:
            del self.stats[step]
        for step in [s for s in self.states if s <= after]:
            del self.states[step]
        step = after + 1
        while len(self.stats.get(step, ())) == self.workers:
            states = None
            if self._is_snapshot(step):
                if len(self.states.get(step, ())) < self.workers:
                    return
                states = sorted(self.states.pop(step), key=lambda s: s.shard)
            stats = sorted(self.stats.pop(step), key=lambda s: s.worker)
            yield step, stats, states
            step += 1
