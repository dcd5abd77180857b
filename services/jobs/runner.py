"""JobRunner: trains one job on Ray, from its first step to a terminal state.

A plain class made a Ray actor by the job manager (threaded, so `poll` and `cancel`
answer while `run` trains). The driver (the API process) is not in the step loop, and
θ and g never pass through the runner. Which parameter server a job gets is
`colocated_cohort.is_colocated`'s choice:

- bsp (the default): N colocated workers, each holding one θ shard and its optimizer
  state (`ColocatedCohort`). The runner launches their step loop once and drains step
  statistics and checkpoint snapshots in batches every DRAIN_PERIOD_S; it is off the
  step path.
- bsp with S > 1 parameter-server actors or compression: each step passes θ's
  ObjectRefs to the workers and their gradient slices' ObjectRefs to the shards
  (`Cohort.step`), or, with one shard and `transport="graph"`, runs as a Ray compiled
  graph (`Cohort.compile_step`).
- asp/ssp: every worker has up to two gradients on the way, each pushed to the shards
  as soon as it exists (`Cohort.submit`); ssp holds a worker back while it is more
  than s gradients ahead of the slowest. A step is reported once every worker's
  gradient for it is applied.

Failures: a step that loses an actor (or waits past STEP_TIMEOUT_S) is repaired (the
lost actors replaced; with colocated workers or a compiled graph, all of them, from the
newest checkpoint at or before the last reported step) and continues; every step is
reported once. A repair that itself loses an actor (one killed while it is created) is
tried again, RECOVERY_ATTEMPTS times with a growing pause, before the job fails.
Checkpoints go to `checkpoint_dir` every `checkpoint_every` steps and at the end.

The resume rule: a runner resumes from the newest intact checkpoint at or before the
last step the store has recorded (`resume_at_most`); checkpoints past it are removed at
start (an earlier runner trained past what was recorded). The runner's lead over the
store is bounded (`lead.Lead`), and pruning keeps the checkpoint that rule needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayChannelError,
    RayTaskError,
)

from services.errors import InvalidSpecError
from services.jobs.checkpoints import CheckpointStore, join_shards
from services.jobs.cohort import Cohort, PlacementError
from services.jobs.colocated_cohort import ColocatedCohort, is_colocated
from services.jobs.early_stopping import EarlyStopper
from services.jobs.lead import MAX_LEAD_S, Lead
from services.jobs.records import JobState, MetricPoint
from services.jobs.spec import JobSpec
from services.jobs.training_data import DataError, TrainingData, prepare_data, total_steps
from services.paramserver.collective import PeerLost
from services.paramserver.colocated import ShardState
from services.paramserver.colocated_async import NotOneNode
from services.paramserver.server import StepStats
from worker.model import MLP

log = logging.getLogger(__name__)

# What a lost or stuck actor looks like to the step loop (a compiled graph's channels too).
_FAULTS = (RayActorError, GetTimeoutError, ObjectLostError, RayChannelError)
STEP_TIMEOUT_S = 60.0  # a BSP barrier waits this long for every worker, then repairs
DRAIN_PERIOD_S = 0.5  # colocated workers' statistics are drained this often (at once at the end)
# With no `checkpoint_every` in the spec, a checkpoint each epoch but at most this often
# (and always after the last step): a small job's epochs take milliseconds, and a
# checkpoint (two fsyncs) would cost more than the steps it protects.
DEFAULT_CHECKPOINT_MIN_INTERVAL_S = 1.0
TRANSPORTS = ("auto", "colocated", "graph", "tasks")
MAX_REPLACEMENTS = 1000  # lost actors a job survives before it gives up
RECOVERY_ATTEMPTS = 5  # one repair, tried this often while actors die under it
RECOVERY_BACKOFF_S = 0.25  # the pause before the second attempt, doubled after each
DIVERGENCE_FACTOR = 1e6
POINTS_PER_WAKE = 64  # while publishing a drained batch: wake `poll` this often


def is_diverged(loss: float, gradient_norms: tuple[float, ...], first_loss: float) -> bool:
    """A non-finite loss or gradient, or a loss grown DIVERGENCE_FACTOR-fold since step 1."""
    if not math.isfinite(loss) or not all(map(math.isfinite, gradient_norms)):
        return True
    return loss > DIVERGENCE_FACTOR * max(first_loss, 1e-3)


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class JobFailed(Exception):
    """The job cannot go on; the message is the reason users see."""


class StoppedEarly(Exception):
    """The spec's `stop_when` rule was met; the message is the reason users see."""


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


def is_checkpoint_due(
    step: int, last_step: int, every: int, min_interval_s: float, since_last_s: float
) -> bool:
    """A checkpoint after `step`: always after the last step; else at multiples of
    `every` once `min_interval_s` has passed since the previous checkpoint."""
    if step == last_step:
        return True
    return step % every == 0 and since_last_s >= min_interval_s


class JobRunner:
    """Runs one job from start to a terminal state; see the module docstring."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        *,
        worker_cpus: float = 1.0,
        datasets_dir: str | None = None,
        checkpoint_dir: str | None = None,
        resume_at_most: int = 0,
        transport: str = "auto",
        max_lead_s: float | None = MAX_LEAD_S,
    ) -> None:
        """`resume_at_most`: the last step whose metrics are stored; a resumed job starts
        from the newest checkpoint at or before it, so no step goes unreported.
        `transport` (bsp): "auto" picks colocated workers where `is_colocated` says so,
        else tasks; "graph" runs steps with a parameter-server actor as a Ray compiled
        graph, "tasks" as one task per hop (both kept for comparison and for what the
        colocated workers do not cover). `max_lead_s`: how far (in seconds of
        training) the runner may run past the last step a `poll` acknowledged; None
        when nobody polls (the runner then trains straight to the end)."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if transport == "colocated" and not is_colocated(spec):
            raise ValueError("this job cannot run on colocated workers (see is_colocated)")
        self.job_id = job_id
        self.spec = spec
        self.worker_cpus = worker_cpus
        self.datasets_dir = Path(datasets_dir) if datasets_dir else None
        self.checkpoints = CheckpointStore(Path(checkpoint_dir)) if checkpoint_dir else None
        self.resume_at_most = resume_at_most
        self.transport = transport
        self.max_lead_s = max_lead_s
        self._lead = Lead(0, max_s=max_lead_s)
        self._lead.record(resume_at_most)
        self._last_published = resume_at_most  # a step is published once
        self._changed = threading.Condition()
        self._is_batching = False  # points published in a batch wake `poll` in groups
        self._unannounced = 0  # points published since `poll` was last woken
        self._points: list[MetricPoint] = []
        self._state = JobState.QUEUED
        self._reason = ""
        self._total_steps = 0
        self._started_at: float | None = None
        self._cancelled = threading.Event()
        self._is_run = False
        self._cohort: Cohort | ColocatedCohort | None = None
        self._theta: np.ndarray | None = None
        self._latest: tuple[int, list | None] | None = None  # (step, θ's shard refs after it)
        self.profiles: list[dict] = []  # colocated workers' `profile()`, once trained
        # asp/ssp, once trained: the parameter server's θ reads as (worker, clock, slowest
        # worker's clock at the read), for checking the staleness bound.
        self.read_log: list[tuple[int, int, int]] = []

    # --- called by the job manager ---------------------------------------------------

    def run(self) -> JobState:
        """Trains to the end; returns the terminal state (also visible through `poll`).

        Once per runner: a later call (an API process that reattached and cannot know
        whether its predecessor's call reached this actor) returns the state at once."""
        with self._changed:
            if self._is_run:
                return self._state
            self._is_run = True
        try:
            self._train()
            self._finish(JobState.SUCCEEDED, "")
        except StoppedEarly as stopped:
            self._finish(JobState.SUCCEEDED, str(stopped))
        except JobCancelled:
            self._finish(JobState.CANCELLED, "cancelled by request")
        except (JobFailed, DataError, PlacementError) as error:
            self._finish(JobState.FAILED, str(error))
        except Exception as error:
            if self._cancelled.is_set():
                self._finish(JobState.CANCELLED, "cancelled by request")
            else:
                log.exception("job %s failed", self.job_id)
                self._finish(JobState.FAILED, f"{type(error).__name__}: {error}"[:500])
        finally:
            self._release_actors()
        return self._state

    def poll(self, after_step: int, timeout_s: float) -> RunnerUpdate:
        """Points with step > after_step (waiting up to timeout_s for one), and the state.

        Points up to after_step are acknowledged (stored by the caller) and dropped here.
        After a parameter server is restored from a checkpoint, the steps after the
        checkpoint are computed again; those at or below `after_step` are not sent
        again (BSP recomputes them exactly), so every step reaches the store once.
        """
        with self._changed:
            self._lead.record(after_step)
            if self.checkpoints is not None:
                self.checkpoints.recorded = self._lead.recorded
            self._changed.notify_all()  # a runner held back by its lead may go on
            state_at_call = self._state  # a new state (RUNNING) is news too
            self._changed.wait_for(
                lambda: (
                    self._state is not state_at_call
                    or self._state.is_terminal
                    or (self._points and self._points[-1].step > after_step)
                ),
                timeout=timeout_s,
            )
            self._points = [p for p in self._points if p.step > after_step]
            placement = tuple(self._cohort.placement) if self._cohort is not None else ()
            return RunnerUpdate(
                state=self._state,
                reason=self._reason,
                total_steps=self._total_steps,
                started_at=self._started_at,
                placement=placement,
                points=list(self._points),
                restarts=self._cohort.replacements if self._cohort is not None else 0,
            )

    def cancel(self, job_id: str | None = None) -> None:
        """Stops the step loop and its actors; `run` then ends CANCELLED. With `job_id`,
        only if that is this runner's job (a recycled runner may run another by now)."""
        if job_id is not None and job_id != getattr(self, "job_id", None):
            return
        self._cancelled.set()
        self._release_actors()

    def final_theta(self) -> np.ndarray:
        """θ after the last step: (P,) float32. Only once the job SUCCEEDED."""
        if self._theta is None:
            raise RuntimeError("the job has no final θ")
        return self._theta

    def snapshot(self, job_id: str | None = None) -> tuple[int, np.ndarray]:
        """(step, θ after that step) while the job runs: (P,) float32. With `job_id`,
        LookupError unless that is this runner's job."""
        if job_id is not None and job_id != getattr(self, "job_id", None):
            raise LookupError(f"this runner does not run job {job_id}")
        latest = self._latest
        if latest is None:
            raise RuntimeError("the job has not finished a step yet")
        if isinstance(self._cohort, ColocatedCohort):
            return self._cohort.latest_theta()
        step, theta_refs = latest
        if theta_refs is None:  # θ lives in the parameter server(s): as it is now
            if len(self._cohort.servers) == 1:
                snapshot = self._cohort.ps.snapshot.remote()
                version, theta = ray.get(snapshot, timeout=STEP_TIMEOUT_S)
                return (version if self.spec.consistency == "bsp" else step), theta
            theta_refs = self._cohort.theta_refs()
        return step, _joined(ray.get(theta_refs, timeout=STEP_TIMEOUT_S))

    def process_ids(self) -> dict[str, list[int]]:
        """Process ids of this job's runner, workers and parameter-server actors, for
        per-process CPU figures (bench/distributed.py reads them from /proc)."""
        cohort = self._cohort
        servers = getattr(cohort, "servers", [])
        placements = ray.get([s.placement.remote() for s in servers], timeout=STEP_TIMEOUT_S)
        return {
            "runner": [os.getpid()],
            "workers": [p["pid"] for p in (cohort.placement if cohort else [])],
            "servers": [p["pid"] for p in placements],
        }

    # --- training ----------------------------------------------------------------------

    def _train(self) -> None:
        spec = self.spec
        data = prepare_data(spec, self.datasets_dir)
        steps = total_steps(spec, data.plan)
        colocated = self.transport == "colocated" or (
            self.transport == "auto" and is_colocated(spec)
        )

        def new_cohort(kind: type[Cohort] | type[ColocatedCohort]) -> Cohort | ColocatedCohort:
            try:
                self._cohort = kind(
                    self.job_id,
                    spec,
                    data,
                    worker_cpus=self.worker_cpus,
                    checkpoints=self.checkpoints,
                    total_steps=steps,
                )
            except InvalidSpecError as error:  # a schedule that does not fit the step count
                raise JobFailed(str(error.under("schedule"))) from None
            return self._cohort

        if self.checkpoints is not None:
            self.checkpoints.recorded = self.resume_at_most
            dropped = self.checkpoints.discard_after(self.resume_at_most)
            if dropped:
                log.info(
                    "job %s: checkpoints %s are past the recorded step %d; removed",
                    self.job_id, dropped, self.resume_at_most,
                )  # fmt: skip
        self._lead = Lead(steps, max_s=self.max_lead_s)
        self._lead.record(self.resume_at_most)
        at_most = self.resume_at_most
        cohort = new_cohort(ColocatedCohort if colocated else Cohort)
        try:  # > 0 when resuming from a checkpoint
            step = self._recovered(lambda: cohort.start(at_most), lambda: cohort.restart(at_most))
        except NotOneNode as error:  # asp/ssp over several nodes: parameter-server actors
            log.info("job %s: %s; using parameter-server actors", self.job_id, error)
            colocated = False
            cohort = new_cohort(Cohort)
            step = self._recovered(lambda: cohort.start(at_most), lambda: cohort.restart(at_most))
        self._lead.start(step)
        with self._changed:
            self._state = JobState.RUNNING
            self._total_steps = steps
            self._started_at = time.time()
            self._changed.notify_all()
        loop = _Loop(self, cohort, data, steps)
        if colocated:
            self._train_colocated(loop, step)
            return
        if spec.consistency == "bsp":
            self._train_bsp(loop, step)
        else:
            self._train_async(loop, step)
        self._theta = _joined(ray.get(cohort.theta_refs()))

    def _train_colocated(self, loop: _Loop, step: int) -> None:
        """Colocated workers: launch their loop, then drain and report in batches. bsp
        workers keep shard snapshots at checkpoint and evaluation steps; asp/ssp ones
        share one parameter server, snapshot here when such a step is reported."""
        cohort: ColocatedCohort = loop.cohort
        snapshot_every = (loop.eval_every, loop.checkpoint_every)
        is_async = self.spec.consistency != "bsp"
        waits_for = () if is_async else snapshot_every
        pending = _PendingSteps(self.spec.workers, waits_for, loop.steps)
        reported = step
        loop.start_clock()  # before the launch: step 1's end is after it
        allowed = self._lead.limit(reported)
        running = cohort.launch(loop.steps, snapshot_every, loop.steps, allowed)
        while reported < loop.steps:
            loop.check_limits(reported)
            try:
                batches = cohort.drain(DRAIN_PERIOD_S if running else 0.0, allowed)
                for drained in batches:
                    pending.add(drained.stats, drained.snapshots)
                with self._batch():  # the drained steps reach `poll` together
                    for done_step, stats, states in pending.complete(after=reported):
                        if is_async:
                            is_snapshot = done_step == loop.steps or any(
                                done_step % k == 0 for k in snapshot_every
                            )
                            states = [cohort.snapshot()] if is_snapshot else None
                        else:
                            stats = [_merge_shards(stats)]
                        theta = _joined([s.theta for s in states]) if states else None
                        reported = done_step
                        self._latest = (reported, None)
                        loop.finish_step(reported, stats, None, theta, states)
                        if reported == loop.steps:
                            self._theta = theta
                if not running and reported < loop.steps:  # drained after every loop ended
                    raise JobFailed(f"the workers stopped at step {reported}")  # a bug
                if any(drained.is_held for drained in batches):  # at the lead's limit
                    self._wait_for_record(reported, allowed)
                allowed = self._lead.limit(reported)
                finished, _ = ray.wait(running, num_returns=len(running), timeout=0)
                ray.get(finished, timeout=STEP_TIMEOUT_S)  # a worker's error surfaces here
                if running and len(finished) == len(running):
                    running = []  # every loop ended: the next drain has the rest
            except (*_FAULTS, RayTaskError) as error:
                if isinstance(error, RayTaskError) and not isinstance(error.cause, PeerLost):
                    raise
                if self._cancelled.is_set():
                    raise JobCancelled from None
                if cohort.replacements >= MAX_REPLACEMENTS:
                    raise JobFailed(
                        f"gave up after replacing {cohort.replacements} lost actors"
                    ) from error
                log.warning(
                    "job %s: step %d failed (%s); restarting", self.job_id, reported + 1, error
                )
                self._recovered(lambda at_most=reported: cohort.restart(at_most))
                pending = _PendingSteps(self.spec.workers, waits_for, loop.steps)
                running = cohort.launch(loop.steps, snapshot_every, loop.steps, allowed)
        try:
            if is_async:
                self.read_log = cohort.read_log()
            self.profiles = cohort.profiles()
        except _FAULTS as error:  # a worker lost after the last step: no profile then
            log.info("job %s: no worker profiles (%s)", self.job_id, error)

    def _train_bsp(self, loop: _Loop, step: int) -> None:
        """One global batch per step: every worker's gradient at the same θ, averaged."""
        cohort = loop.cohort
        graph = cohort.compile_step() if self.transport == "graph" else None
        loop.start_clock()  # compiling is set-up, not training time
        warming = graph is not None  # a graph's first run starts its actors' channel loops
        theta_refs = cohort.theta_refs()
        while step < loop.steps:
            loop.check_limits(step)
            self._wait_for_room(step)
            try:
                if graph is not None:
                    stats = [ray.get(graph.execute(step + 1), timeout=STEP_TIMEOUT_S)]
                    next_theta_refs = None  # θ stays in the parameter server
                    if warming:  # seconds on a slow host (more where torch is installed)
                        loop.start_clock()
                        warming = False
                else:
                    stats_refs, next_theta_refs = cohort.step(theta_refs, step + 1)
                    stats = ray.get(stats_refs, timeout=STEP_TIMEOUT_S)
                step += 1
                theta_refs = next_theta_refs
                self._latest = (step, theta_refs)
                loop.finish_step(step, [_merge_shards(stats)], theta_refs)
            except _FAULTS as error:
                if self._cancelled.is_set():
                    raise JobCancelled from None
                if graph is not None:  # its actors are tied to it: all start again
                    step = self._restart(cohort, step, error)
                    graph = cohort.compile_step()
                else:
                    resumed = self._repair(cohort, step, error)
                    step = step if resumed is None else resumed
                theta_refs = cohort.theta_refs()
                self._lead.start(step)

    def _train_async(self, loop: _Loop, start: int) -> None:
        """asp/ssp: each worker pushes its gradients at its own pace; step t is reported
        once every worker's gradient number t − 1 is applied.

        A worker has up to two gradients on the way (the next is computed while the last
        is pushed; so asp staleness is at least 1). Under ssp a worker starts gradient c
        only once every worker has c − s applied.
        """
        cohort, spec, n = loop.cohort, self.spec, self.spec.workers
        bound = spec.staleness_bound
        depth = 1 if bound == 0 else 2
        applied = [start] * n  # per worker: every gradient below this clock is applied
        ahead: list[set[int]] = [set() for _ in range(n)]  # applied above it (out of order)
        next_clock = [start] * n
        pending: dict[tuple[int, int], list[ray.ObjectRef]] = {}  # (worker, clock) → pushes
        rounds: dict[int, dict[int, StepStats]] = {}  # clock → worker → its push's stats
        reported = start
        while reported < loop.steps:
            loop.check_limits(reported)
            self._wait_for_room(reported)
            limit = self._lead.limit(reported)  # the last step (clock + 1) to start now
            for i in range(n):
                while (
                    next_clock[i] < limit
                    and next_clock[i] - applied[i] < depth
                    and (bound is None or next_clock[i] - min(applied) <= bound)
                ):
                    pending[(i, next_clock[i])] = cohort.submit(i, next_clock[i])
                    next_clock[i] += 1
            refs = [ref for shard_refs in pending.values() for ref in shard_refs]
            if not refs:
                raise JobFailed(f"no gradient in flight at step {reported}")  # a bug, not a fault
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=STEP_TIMEOUT_S)
                if not ready:
                    raise GetTimeoutError(f"no gradient arrived in {STEP_TIMEOUT_S:.0f} s")
                done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
                for key in [k for k, shard_refs in pending.items() if done.issuperset(shard_refs)]:
                    stats = _merge_shards(ray.get(pending.pop(key), timeout=STEP_TIMEOUT_S))
                    worker, clock = key
                    ahead[worker].add(clock)
                    while applied[worker] in ahead[worker]:
                        ahead[worker].remove(applied[worker])
                        applied[worker] += 1
                    rounds.setdefault(clock, {})[worker] = stats
                while len(rounds.get(reported, ())) == n:
                    reported += 1
                    self._latest = (reported, None)
                    loop.finish_step(reported, list(rounds.pop(reported - 1).values()), None)
            except _FAULTS as error:
                if self._cancelled.is_set():
                    raise JobCancelled from None
                resumed = self._repair(cohort, reported, error)
                pending.clear()
                if resumed is not None:  # the parameter server came back from a checkpoint
                    reported = resumed
                    self._lead.start(reported)
                    applied = [resumed] * n
                    rounds = {}
                ahead = [set() for _ in range(n)]  # computed again (the server deduplicates)
                next_clock = list(applied)
        self.read_log = ray.get(cohort.ps.read_log.remote(), timeout=STEP_TIMEOUT_S)

    def _restart(self, cohort: Cohort, step: int, error: Exception) -> int:
        """Start every actor again from the newest checkpoint at or before `step` (the
        last reported); returns its step."""
        if cohort.replacements >= MAX_REPLACEMENTS:
            raise JobFailed(f"gave up after replacing {cohort.replacements} lost actors") from error
        log.warning("job %s: step %d failed (%s); restarting", self.job_id, step + 1, error)
        return self._recovered(lambda: cohort.restart(step))

    def _repair(self, cohort: Cohort, step: int, error: Exception) -> int | None:
        """Replace the actors that died; returns the restored parameter server's step
        (None when it survived), from a checkpoint at or before `step` (the last
        reported)."""
        if cohort.replacements >= MAX_REPLACEMENTS:
            raise JobFailed(f"gave up after replacing {cohort.replacements} lost actors") from error
        log.warning("job %s: step %d failed (%s); repairing", self.job_id, step + 1, error)
        restored: list[int] = []  # a later attempt may find the server alive again

        def attempt() -> int | None:
            resumed = cohort.repair(step)
            if resumed is not None:
                restored.append(resumed)
            return min(restored, default=None)

        return self._recovered(attempt)

    def _recovered(self, action: Callable[[], object], again: Callable[[], object] | None = None):
        """`action()`'s result; while it fails because an actor died under it (one
        killed while it was created or restored), `again()` (default: `action`) after
        a pause that doubles from RECOVERY_BACKOFF_S, up to RECOVERY_ATTEMPTS tries."""
        attempt, pause = action, RECOVERY_BACKOFF_S
        for tries in range(1, RECOVERY_ATTEMPTS + 1):
            if self._cancelled.is_set():
                raise JobCancelled
            try:
                return attempt()
            except (*_FAULTS, RayTaskError) as error:
                if isinstance(error, RayTaskError) and not isinstance(error.cause, PeerLost):
                    raise
                if self._cancelled.is_set():
                    raise JobCancelled from None
                if tries == RECOVERY_ATTEMPTS:
                    raise JobFailed(
                        f"recovery failed {RECOVERY_ATTEMPTS} times in a row "
                        f"(actors lost while being replaced); last: {type(error).__name__}: "
                        f"{error}"[:500]
                    ) from error
                log.warning(
                    "job %s: recovery attempt %d lost an actor (%s); again in %.2f s",
                    self.job_id, tries, error, pause,
                )  # fmt: skip
                time.sleep(pause)
                attempt, pause = again or action, pause * 2
        raise AssertionError("unreachable")

    def _wait_for_room(self, reported: int) -> None:
        """Hold the step loop while step reported + 1 is past the lead's limit (the
        store is behind); a poll that records more wakes it."""
        with self._changed:
            while reported + 1 > self._lead.limit(reported):
                if self._cancelled.is_set():
                    raise JobCancelled
                self._changed.wait(timeout=DRAIN_PERIOD_S)

    def _wait_for_record(self, reported: int, allowed: int) -> None:
        """Colocated workers wait at `allowed`: wait (up to a drain period) until a
        poll records enough for the limit to grow."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._lead.limit(reported) > allowed or self._cancelled.is_set(),
                timeout=DRAIN_PERIOD_S,
            )

    # --- state ---------------------------------------------------------------------------

    def _publish(self, point: MetricPoint) -> None:
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
    def _batch(self) -> Iterator[None]:
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

    def _finish(self, state: JobState, reason: str) -> None:
        with self._changed:
            self._state = state
            self._reason = reason
            self._changed.notify_all()

    def _release_actors(self) -> None:
        if self._cohort is not None:
            self._cohort.release()


class _Loop:
    """What every step does once its gradients are in: checks, checkpoints, a point."""

    def __init__(self, runner: JobRunner, cohort: Cohort, data: TrainingData, steps: int) -> None:
        spec = runner.spec
        self.runner, self.cohort, self.data, self.steps = runner, cohort, data, steps
        self.steps_per_epoch = data.plan.steps_per_epoch
        self.eval_every = spec.eval_every or self.steps_per_epoch
        self.checkpoint_every = spec.checkpoint_every or self.steps_per_epoch
        self.checkpoint_min_interval_s = (
            0.0 if spec.checkpoint_every else DEFAULT_CHECKPOINT_MIN_INTERVAL_S
        )
        self.last_checkpoint = time.monotonic()
        self.model = MLP(spec.sizes, spec.activations, spec.loss, **spec.model_options)
        itemsize = 8 if spec.dtype == "float64" else 4
        self.theta_bytes = self.model.layout.size * itemsize
        self.started = self.last = time.monotonic()
        self.first_loss: float | None = None
        self.stopper = EarlyStopper(spec.stop_when)

    def start_clock(self) -> None:
        """Training starts now: elapsed time and `max_seconds` count from here."""
        self.started = self.last = self.last_checkpoint = time.monotonic()

    def is_checkpoint_due(self, step: int) -> bool:
        return is_checkpoint_due(
            step,
            self.steps,
            self.checkpoint_every,
            self.checkpoint_min_interval_s,
            time.monotonic() - self.last_checkpoint,
        )

    def check_limits(self, step: int) -> None:
        spec = self.runner.spec
        if self.runner._cancelled.is_set():
            raise JobCancelled
        if spec.max_seconds is not None and time.monotonic() - self.started > spec.max_seconds:
            raise JobFailed(
                f"time limit of {spec.max_seconds:g} s reached at step {step}; "
                "its last checkpoint is kept"
            )

    def finish_step(
        self,
        step: int,
        stats: list[StepStats],
        theta_refs: list[ray.ObjectRef] | None,
        theta: np.ndarray | None = None,
        states: list[ShardState] | None = None,
    ) -> None:
        """Checks, publishes and checkpoints a step whose updates are applied. `stats`: its
        updates (one for bsp, one per worker otherwise). θ after the step comes as
        `theta` with its shards' `states` (colocated workers), else from `theta_refs` or
        the parameter server. Raises JobFailed when the loss diverged, StoppedEarly
        (θ after the step kept as the final θ) when the spec's `stop_when` is met; a Ray
        fault while checkpointing propagates (the step is reported)."""
        samples = sum(s.samples for s in stats)
        loss = sum(s.samples * s.loss for s in stats) / max(samples, 1)
        columns = zip(*(s.gradient_norms for s in stats), strict=True)  # per layer
        norms = tuple(_mean(column) for column in columns)
        staleness = [tau for s in stats for tau in s.staleness] or [0]
        self.first_loss = loss if self.first_loss is None else self.first_loss
        if is_diverged(loss, norms, self.first_loss):
            raise JobFailed(f"diverged at step {step} (loss {loss:.4g})")
        now = time.monotonic()
        ended = [s.finished_at for s in stats if s.finished_at is not None]
        if ended:  # reported in a batch: the step's own end, on this process's clock
            now = max(now - max(0.0, time.time() - max(ended)), self.last)
        validation: dict[str, float] = {}
        is_evaluation = step % self.eval_every == 0 or step == self.steps
        if len(self.data.X_val) and is_evaluation:
            try:
                if theta is None:
                    theta = _joined(ray.get(theta_refs or self.cohort.theta_refs(), timeout=60))
                validation = self.model.evaluate(theta, self.data.X_val, self.data.y_val)
            except _FAULTS as error:
                job = self.runner.job_id
                log.warning("job %s: no validation at step %d (%s)", job, step, error)
        pulls = sum(len(s.staleness) for s in stats)  # one θ per gradient
        pulled = [s.bytes_pulled for s in stats if s.bytes_pulled is not None]
        self.runner._publish(
            MetricPoint(
                step=step,
                epoch=(step - 1) // self.steps_per_epoch,
                loss=loss,
                samples_per_second=samples / max(now - self.last, 1e-9),
                learning_rate=stats[-1].learning_rate,
                elapsed_seconds=now - self.started,
                validation_loss=validation.get("loss"),
                validation_accuracy=validation.get("accuracy"),
                gradient_norms=norms,
                staleness_mean=_mean(staleness),
                staleness_max=int(max(staleness)),
                bytes_pushed=sum(s.bytes_pushed for s in stats),
                bytes_pulled=sum(pulled) if pulled else pulls * self.theta_bytes,
                compute_seconds=_mean([s.compute_seconds for s in stats]),
            )
        )
        self.last = now
        # After the point: a lost parameter server surfaces here as a fault the step
        # loop repairs, and the checkpoint never runs ahead of the reported steps.
        if self.runner.checkpoints is not None and self.is_checkpoint_due(step):
            if states:
                self.runner.checkpoints.save(join_shards(states))
            else:
                self.cohort.checkpoint()
            self.last_checkpoint = time.monotonic()
        if is_evaluation and step < self.steps:
            measured = {"loss": loss, **{f"validation_{k}": v for k, v in validation.items()}}
            reason = self.stopper.observe(step, measured)
            if reason is not None:
                if theta is None:
                    theta = _joined(ray.get(theta_refs or self.cohort.theta_refs(), timeout=60))
                self.runner._theta = theta
                raise StoppedEarly(reason)


class _PendingSteps:
    """Colocated workers' per-shard statistics and snapshots until a step has them all.

    A step is complete with one StepStats per worker and, on a snapshot step (a
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

    def complete(self, after: int):
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


def _merge_shards(parts: list[StepStats]) -> StepStats:
    """One update's stats from its shards' (they share loss, samples and staleness)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return dataclasses.replace(
        first,
        weight_squares=tuple(map(sum, zip(*(p.weight_squares for p in parts), strict=True))),
        square=sum(p.square for p in parts),
        bytes_pushed=sum(p.bytes_pushed for p in parts),
        bytes_pulled=None if first.bytes_pulled is None else sum(p.bytes_pulled for p in parts),
        finished_at=max((p.finished_at for p in parts if p.finished_at), default=None),
    )


def _mean(values: Sequence[float]) -> float:
    """The mean of a few numbers, in plain Python (np.mean costs microseconds a call, and
    a step's point takes several)."""
    return float(sum(values)) / len(values)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
