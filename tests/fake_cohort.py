"""In-process fake cohorts for the step loops' unit tests (no Ray; their object store is
tests/fake_ray.py):

- FakeCohort: parameter-server actors as the bsp and asp/ssp loops call them; each
  worker computes one gradient at a time, `durations[i]` ticks each;
- FakeColocatedCohort: colocated workers as the colocated loop calls them; at each drain
  worker i has trained `pace[i]` more steps, never past the lead's `allowed`;
- `make_run`: a TrainingRun over one of them with the real StepReporter, RunStatus,
  Lead and Recovery, the loop modules' `ray` replaced by the FakeRay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from services.jobs import async_loop, bsp_loop, colocated_loop, faults, run_status, step_report
from services.jobs.faults import Recovery
from services.jobs.lead import Lead
from services.jobs.run_status import RunStatus
from services.jobs.spec import DatasetSpec, JobSpec, LayerSpec
from services.jobs.step_report import StepReporter
from services.jobs.training_data import TrainingData
from services.jobs.training_run import TrainingOutput, TrainingRun
from services.paramserver.colocated_state import Drained, ShardState
from services.paramserver.step_stats import StepStats
from tests.fake_ray import HANG, FakeCheckpoints, FakeRay, FakeRef
from worker.model import MLP
from worker.sampling import BatchPlan

STEPS_PER_EPOCH = 5


def job_spec(**changes: object) -> JobSpec:
    """A small digits spec: 10 steps on 2 workers; `changes` replace its fields."""
    layers = (LayerSpec(units=4, activation="relu"), LayerSpec(units=10, activation="identity"))
    fields = {"layers": layers, "dataset": DatasetSpec(name="digits"), "steps": 10, **changes}
    return JobSpec(**fields)


def training_data(spec: JobSpec) -> TrainingData:
    """Zero rows, STEPS_PER_EPOCH batches an epoch, no validation rows."""
    n, width = STEPS_PER_EPOCH * spec.batch_size, spec.input_width
    plan = BatchPlan(n_train=n, batch_size=spec.batch_size, workers=spec.workers)
    empty = np.zeros((0, width), np.float32)
    return TrainingData(np.zeros((n, width), np.float32), np.zeros(n), empty, np.zeros(0), plan)


def stats(step: int, worker: int = -1, clock: int = -1, loss: float = 1.0) -> StepStats:
    return StepStats(
        version=step, samples=32, loss=loss, learning_rate=0.1, weight_squares=(1.0, 1.0),
        staleness=(0,), worker=worker, clock=clock,
    )  # fmt: skip


class FakeServer:
    """The first parameter-server shard, for a loop that reads its θ-read log at the end
    (`cohort.ps.read_log.remote()`, a test hook on its way out of the loops)."""

    def __init__(self, ray: FakeRay) -> None:
        self.read_log = self
        self.ray = ray

    def remote(self) -> FakeRef:
        return FakeRef([(0, 0, 0)], self.ray.now)


class FakeCohort:
    """`faults`: step (bsp) or (worker, clock) → the error its update raises, once (HANG:
    it never answers); one in `loses_server` also loses the parameter server, so the
    next repair restores the newest checkpoint. `repair_errors`: raised by the next
    repairs, one each. `loss(step)`: each update's loss."""

    def __init__(self, spec: JobSpec, ray: FakeRay, *, durations=None, faults=None) -> None:
        self.job_id, self.spec, self.data, self.ray = "job-test", spec, training_data(spec), ray
        self.checkpoints: FakeCheckpoints | None = FakeCheckpoints()
        self.replacements = 0
        self.durations = durations or [1.0] * spec.workers
        self.faults: dict = dict(faults or {})
        self.loses_server: set = set()
        self.repair_errors: list[Exception] = []
        self.loss: Callable[[int], float] = lambda step: 1.0
        self.issued: list = []  # bsp: steps issued; asp/ssp: Submission per gradient
        self.repairs: list[tuple[str, int]] = []  # ("repair" | "restart", at_most)
        self.published: list[int] = []  # the reporter's points' steps (make_run fills it)
        self.is_server_lost = False
        self.has_graph = True
        self.ps = FakeServer(ray)
        self.servers = [self.ps]
        self._busy_until = [0.0] * spec.workers
        self._theta = np.zeros(MLP.from_config(spec.model).layout.size, np.float32)

    def export(self) -> list[FakeRef]:
        """θ as the servers export it: (step, θ part) per shard."""
        return [FakeRef((self.published[-1], self._theta), self.ray.now)]

    def step(self, theta_refs: list[FakeRef], step: int) -> tuple[list, list]:
        self.issued.append(step)
        ref = self._update(step, stats(step, loss=self.loss(step)), range(self.spec.workers))
        return [ref], [FakeRef(self._theta, self.ray.now)]  # the next step's θ

    def compile_step(self) -> FakeGraph | None:
        return FakeGraph(self) if self.has_graph else None

    def submit(self, worker: int, clock: int) -> list[FakeRef]:
        fetched = [s for s in self.ray.fetched if isinstance(s, StepStats)]
        applied = frozenset((s.worker, s.clock) for s in fetched)
        self.issued.append(Submission(worker, clock, applied, self.ray.now))
        update = stats(clock + 1, worker, clock, self.loss(clock + 1))
        return [self._update((worker, clock), update, [worker])]

    def checkpoint(self) -> int:
        self.checkpoints.saved.append(self.published[-1])
        return self.published[-1]

    def repair(self, at_most: int) -> int | None:
        self.repairs.append(("repair", at_most))
        if self.repair_errors:
            raise self.repair_errors.pop(0)
        self.replacements += 1
        if not self.is_server_lost:
            return None
        self.is_server_lost = False
        return self.checkpoints.latest(at_most) or 0

    def restart(self, at_most: int) -> int:
        self.repairs.append(("restart", at_most))
        self.replacements += 1
        return self.checkpoints.latest(at_most) or 0

    def _update(self, key, value: StepStats, workers) -> FakeRef:
        """The ref of an update by `workers`, ready once each has computed its part."""
        start = max([self.ray.now, *(self._busy_until[i] for i in workers)])
        ready = start + max(self.durations[i] for i in workers)
        for i in workers:
            self._busy_until[i] = ready
        error = self.faults.pop(key, None)
        self.is_server_lost |= error is not None and key in self.loses_server
        if error is HANG:
            return FakeRef(value, None)
        return FakeRef(value, ready, error)


class FakeGraph:
    def __init__(self, cohort: FakeCohort) -> None:
        self.cohort = cohort

    def execute(self, step: int) -> FakeRef:
        self.cohort.issued.append(step)
        return self.cohort._update(step, stats(step), range(self.cohort.spec.workers))


@dataclass(frozen=True)
class Submission:
    """One gradient started: its worker and clock, the (worker, clock) of every
    gradient the loop had collected by then, and the tick it started at."""

    worker: int
    clock: int
    applied: frozenset[tuple[int, int]]
    at: float


class FakeColocatedCohort:
    """`faults`: drain number (from 1) → the error that drain raises, once. `stop_at`:
    the step where the workers' loops end (default: the last)."""

    def __init__(self, spec: JobSpec, ray: FakeRay, *, pace=None, faults=None) -> None:
        self.job_id, self.spec, self.data, self.ray = "job-test", spec, training_data(spec), ray
        self.checkpoints = FakeCheckpoints()
        self.replacements = 0
        self.pace = pace or [1] * spec.workers
        self.faults: dict[int, Exception] = dict(faults or {})
        self.stop_at: int | None = None
        self.trained = [0] * spec.workers  # each worker's last trained step
        self.drains = 0
        self.launches: list[tuple[int, int | None]] = []  # (first trained step, allowed)
        self.restarts: list[int] = []  # each restart's `at_most`
        self.published: list[int] = []
        self._loops: list[FakeRef] = []
        self._stop = 0

    def launch(self, stop: int, snapshot_every: tuple[int, ...], total_steps: int, allowed):
        self._stop, self.snapshot_every = self.stop_at or stop, snapshot_every
        self.launches.append((min(self.trained), allowed))
        self._loops = [FakeRef(None, None) for _ in self.trained]
        return list(self._loops)

    def drain(self, period_s: float, allowed: int | None) -> list[Drained]:
        self.drains += 1
        if self.drains in self.faults:
            raise self.faults.pop(self.drains)
        return [self._drain_worker(i, allowed) for i in range(len(self.trained))]

    def _drain_worker(self, i: int, allowed: int | None) -> Drained:
        last = min(self.trained[i] + self.pace[i], self._stop, allowed or self._stop)
        steps = range(self.trained[i] + 1, last + 1)
        self.trained[i] = last
        is_async = self.spec.consistency != "bsp"
        updates = [stats(s, i, s - 1 if is_async else -1) for s in steps]
        snapshots = [] if is_async else [self._state(s, i) for s in steps if self._keeps(s)]
        if last == self._stop:
            self._loops[i].ready_at = self.ray.now  # its loop ended
        return Drained(updates, snapshots, is_held=last == allowed < self._stop)

    def _keeps(self, step: int) -> bool:
        return step == self._stop or any(step % k == 0 for k in self.snapshot_every)

    def _state(self, step: int, shard: int) -> ShardState:
        return ShardState(step, np.zeros(3, np.float32), step, {}, shard)

    def state_dict(self) -> ShardState:
        """asp/ssp: the shared parameter server's state."""
        return self._state(min(self.trained), 0)

    def restart(self, at_most: int) -> int:
        self.restarts.append(at_most)
        self.replacements += 1
        self.trained = [self.checkpoints.latest(at_most) or 0] * len(self.trained)
        return self.trained[0]

    def read_log(self) -> list[tuple[int, int, int]]:  # as FakeServer's
        return [(0, 0, 0)]

    def profiles(self) -> list[dict]:
        return [{"worker": i} for i in range(len(self.trained))]


class RecordingReporter(StepReporter):
    """A StepReporter that also keeps (step, its updates' (worker, clock)) per step."""

    finished: list[tuple[int, list[tuple[int, int]]]]

    def finish_step(self, step: int, stats: list[StepStats], *args, **kwargs) -> None:
        self.finished.append((step, [(s.worker, s.clock) for s in stats]))
        super().finish_step(step, stats, *args, **kwargs)


@dataclass
class Harness:
    run: TrainingRun
    cohort: FakeCohort | FakeColocatedCohort
    report: RecordingReporter

    def stored(self) -> list[int]:
        """The steps of the points `poll` hands the store (each published once)."""
        return [p.step for p in self.run.status.poll(0, 0.0, lambda recorded: None).points]


def make_run(
    monkeypatch: pytest.MonkeyPatch,
    cohort: FakeCohort | FakeColocatedCohort,
    *,
    lead: Lead | None = None,
    is_cancelled: Callable[[], bool] = lambda: False,
    is_waiting_cancelled: Callable[[], bool] | None = None,
    transport: str = "tasks",
) -> Harness:
    """A TrainingRun over `cohort` (its `ray` in every loop module); `is_waiting_cancelled`
    (default `is_cancelled`) is what a loop held by its lead asks."""
    for module in (async_loop, bsp_loop, colocated_loop, step_report):
        monkeypatch.setattr(module, "ray", cohort.ray)
    monkeypatch.setattr(faults, "RECOVERY_BACKOFF_S", 0.0)
    monkeypatch.setattr(run_status, "DRAIN_PERIOD_S", 0.001)
    steps = cohort.spec.steps
    status = RunStatus(lead or Lead(steps, max_s=None), last_published=0)
    status.start(steps)

    def publish(point) -> None:
        status.publish(point)
        cohort.published.append(point.step)

    report = RecordingReporter(cohort, steps, publish=publish, is_cancelled=is_cancelled)
    report.finished = []
    recovery = Recovery(cohort.job_id, is_cancelled)
    waiting = is_waiting_cancelled or is_cancelled
    run = TrainingRun(report, status, recovery, TrainingOutput(), transport, waiting)
    return Harness(run, cohort, report)
