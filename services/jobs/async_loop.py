"""The asp/ssp step loop: each worker pushes its gradients at its own pace
(`Cohort.submit`), and step t is reported once every worker's gradient number t − 1 is
applied.

A worker has up to two gradients on the way (the next is computed while the last is
pushed; so asp staleness is at least 1). Under ssp a worker starts gradient c only once
every worker has c − s applied.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError

from services.jobs.faults import FAULTS, STEP_TIMEOUT_S
from services.jobs.outcomes import JobFailed
from services.jobs.shards import merge_shards
from services.jobs.training_run import TrainingRun
from services.paramserver.server import StepStats


class GradientClocks:
    """Every worker's gradients by clock: those in flight, those applied, and the
    applied ones grouped into rounds (one gradient per worker at one clock)."""

    def __init__(self, workers: int, start: int, bound: int | None) -> None:
        self.workers, self.bound = workers, bound
        self.depth = 1 if bound == 0 else 2
        self.applied = [start] * workers  # per worker: every gradient below it is applied
        self.ahead: list[set[int]] = [set() for _ in range(workers)]  # applied above it
        self.next_clock = [start] * workers
        self.pending: dict[tuple[int, int], list[ray.ObjectRef]] = {}  # (worker, clock) → pushes
        self.rounds: dict[int, dict[int, StepStats]] = {}  # clock → worker → its push's stats

    def submit_ready(self, limit: int, submit: Callable[[int, int], list[ray.ObjectRef]]) -> None:
        """Start every gradient the bounds allow now, below clock `limit`."""
        applied, next_clock, bound = self.applied, self.next_clock, self.bound
        for i in range(self.workers):
            while (
                next_clock[i] < limit
                and next_clock[i] - applied[i] < self.depth
                and (bound is None or next_clock[i] - min(applied) <= bound)
            ):
                self.pending[(i, next_clock[i])] = submit(i, next_clock[i])
                next_clock[i] += 1

    def in_flight(self) -> list[ray.ObjectRef]:
        return [ref for shard_refs in self.pending.values() for ref in shard_refs]

    def collect(self, done: set[ray.ObjectRef]) -> None:
        """Account for every gradient whose pushes are all in `done`."""
        for key in [k for k, shard_refs in self.pending.items() if done.issuperset(shard_refs)]:
            stats = merge_shards(ray.get(self.pending.pop(key), timeout=STEP_TIMEOUT_S))
            worker, clock = key
            self.ahead[worker].add(clock)
            while self.applied[worker] in self.ahead[worker]:
                self.ahead[worker].remove(self.applied[worker])
                self.applied[worker] += 1
            self.rounds.setdefault(clock, {})[worker] = stats

    def take_round(self, clock: int) -> list[StepStats] | None:
        """Every worker's stats at `clock` once all are applied (then forgotten), else None."""
        if len(self.rounds.get(clock, ())) != self.workers:
            return None
        return list(self.rounds.pop(clock).values())

    def restart(self, resumed: int | None) -> None:
        """After a repair: nothing in flight; from `resumed` when the parameter server
        came back from a checkpoint (what was ahead is computed again; the server
        deduplicates)."""
        self.pending.clear()
        if resumed is not None:
            self.applied = [resumed] * self.workers
            self.rounds = {}
        self.ahead = [set() for _ in range(self.workers)]
        self.next_clock = list(self.applied)


def train_async(run: TrainingRun, start: int) -> None:
    """Train from `start` (done) to the last step, repairing what is lost on the way."""
    report, status, recovery = run.report, run.status, run.recovery
    cohort, spec = report.cohort, report.spec
    clocks = GradientClocks(spec.workers, start, spec.staleness_bound)
    reported = start
    while reported < report.steps:
        report.check_limits(reported)
        status.wait_for_room(reported, run.is_cancelled)
        # the last step (clock + 1) to start now
        clocks.submit_ready(status.lead.limit(reported), cohort.submit)
        refs = clocks.in_flight()
        if not refs:
            raise JobFailed(f"no gradient in flight at step {reported}")  # a bug, not a fault
        try:
            clocks.collect(_wait_for_gradients(refs))
            while (stats := clocks.take_round(reported)) is not None:
                reported += 1
                report.finish_step(reported, stats, None)
        except FAULTS as error:
            recovery.stop_if_cancelled()
            resumed = recovery.repair(cohort, reported, error)
            if resumed is not None:  # the parameter server came back from a checkpoint
                reported = resumed
                status.lead.start(reported)
            clocks.restart(resumed)


def _wait_for_gradients(refs: list[ray.ObjectRef]) -> set[ray.ObjectRef]:
    """The pushes in `refs` that are done, once one is (GetTimeoutError after
    STEP_TIMEOUT_S without one)."""
    ready, _ = ray.wait(refs, num_returns=1, timeout=STEP_TIMEOUT_S)
    if not ready:
        raise GetTimeoutError(f"no gradient arrived in {STEP_TIMEOUT_S:.0f} s")
    return set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
