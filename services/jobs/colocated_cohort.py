"""ColocatedCohort: one bsp job's N colocated workers on Ray, each holding a θ shard.

The runner launches every worker's step loop once (`launch`) and then only drains their
statistics in batches; it is not on the step path. A lost worker breaks the mesh of
all of them (the others see `PeerLost` at their next exchange), so a fault restarts
every worker from the newest checkpoint at or before the last reported step, as a
compiled graph's restart does.

θ leaves the workers for use outside training through `export` only: an ObjectRef of
the first worker's (step, θ), which the runner hands on without fetching it.
"""

from __future__ import annotations

import logging
import uuid

import ray
from ray.exceptions import GetTimeoutError, RayTaskError

from services.cluster import remote_class
from services.jobs.checkpoints import CheckpointStore, split_shards
from services.jobs.cohort import PLACEMENT_TIMEOUT_S, PlacementError
from services.jobs.cohort_actors import actor_incarnation, actor_name, kill_strays
from services.jobs.faults import FAULTS
from services.jobs.kept_workers import KeptWorkers
from services.jobs.spec import JobSpec
from services.jobs.training_data import TrainingData
from services.paramserver.colocated import ColocatedWorker, Drained, ShardState
from services.paramserver.colocated_async import AsyncColocatedWorker, NotOneNode
from services.paramserver.server_config import ServerConfig
from worker.gradient_worker import GradientWorker
from worker.layout import ParamLayout
from worker.sampling import BatchPlan

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0


def is_colocated(spec: JobSpec) -> bool:
    """Which parameter server a job gets. Colocated shards (this cohort) when it asks
    for one parameter-server shard and no gradient compression; separate
    parameter-server actors (`Cohort`) for an explicit `ps_shards` > 1 and for
    compressed pushes (both are about a PS on other machines), for bsp with global-norm
    clipping over several workers (it needs the whole gradient in one place), and for
    asp/ssp whose workers land on several nodes (the runner falls back on `NotOneNode`)."""
    if spec.ps_shards != 1 or spec.compression != "none":
        return False
    return spec.consistency != "bsp" or spec.workers == 1 or not spec.optimizer.clip_norm


def worker_kind(spec: JobSpec) -> type[ColocatedWorker]:
    """The colocated worker class of a job: bsp's, or asp/ssp's shared parameter server."""
    return ColocatedWorker if spec.consistency == "bsp" else AsyncColocatedWorker


def worker_arguments(
    spec: JobSpec, server: ServerConfig, plan: BatchPlan, i: int, X: object, y: object
) -> dict:
    """Worker i's `worker_kind(spec)` arguments from step 0, on its shard X, y (arrays or
    their ObjectRefs)."""
    arguments = {
        "workers": spec.workers,
        "server": server,
        "worker": spec.worker_config(i, plan),
        "X": X,
        "y": y,
    }
    if spec.consistency != "bsp":
        arguments["staleness_bound"] = spec.staleness_bound
        arguments["staleness_aware_lr"] = spec.staleness_aware_lr
    return arguments


class ColocatedCohort:
    """The colocated workers of one job (bsp, or asp/ssp on one node). Call from the
    job's runner."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        data: TrainingData,
        *,
        worker_cpus: float,
        checkpoints: CheckpointStore | None,
        total_steps: int,
        kept: KeptWorkers | None = None,
    ) -> None:
        """`kept`: idle workers of an earlier job; the first start renews those that fit
        (and kills the others) instead of starting as many processes."""
        self.job_id = job_id
        self.spec = spec
        self.data = data
        self.worker_cpus = worker_cpus
        self.checkpoints = checkpoints
        self.server = spec.server_config(spec.schedule.schedule(total_steps))
        self.workers: list[ray.actor.ActorHandle] = []
        self.placement: list[dict] = []
        self.transport = ""
        self.replacements = 0
        self._generation = 0  # with the incarnation, keeps a replacement's name unique
        self._incarnation = actor_incarnation()
        self._shards: list[tuple[ray.ObjectRef, ray.ObjectRef]] = []
        self._kept = kept

    def start(self, resume_at_most: int | None = None) -> int:
        """Create and connect every worker; returns the step they continue from."""
        n = self.spec.workers
        self._shards = [tuple(ray.put(part) for part in self.data.shard(i)) for i in range(n)]
        kill_strays(self.job_id, self._incarnation)
        return self._start(resume_at_most)

    def _start(self, at_most: int | None) -> int:
        latest = self.checkpoints.latest(at_most) if self.checkpoints is not None else None
        n = self.spec.workers
        resumes: list[ShardState | None] = [None] * n
        theta_ref = None
        if latest is not None:
            resumes = split_shards(latest, ParamLayout(self.spec.sizes).shard_bounds(n))
            theta_ref = ray.put(latest.theta)
        self._generation += 1
        kept, self._kept = self._kept, None  # only the first start renews kept workers
        renewed = (
            kept.take(worker_kind(self.spec), self.worker_cpus, self.spec.device, n) if kept else []
        )
        created = [self._new_worker(i, resumes[i], theta_ref) for i in range(len(renewed), n)]
        self.workers = renewed + created
        try:
            ray.get(
                [
                    w.renew.remote(**self._arguments(i, resumes[i], theta_ref))
                    for i, w in enumerate(renewed)
                ],
                timeout=PLACEMENT_TIMEOUT_S,
            )
            endpoints = ray.get(
                [w.endpoint.remote() for w in self.workers], timeout=PLACEMENT_TIMEOUT_S
            )
        except GetTimeoutError:
            raise PlacementError.for_workers(n, self.worker_cpus) from None
        if self.spec.consistency != "bsp" and len({e.node_id for e in endpoints}) > 1:
            self.release()
            raise NotOneNode(f"the {n} workers landed on several nodes")
        tag = uuid.uuid4().hex  # names the mesh's shared-memory file
        try:
            transports = ray.get(
                [w.join.remote(endpoints, tag) for w in self.workers], timeout=PLACEMENT_TIMEOUT_S
            )
        except RayTaskError as error:
            if isinstance(error.cause, NotOneNode):  # no room in shared memory (asp/ssp)
                self.release()
                raise NotOneNode(str(error.cause)) from None
            raise
        self.transport = transports[0]
        self.placement = ray.get(
            [w.placement.remote() for w in self.workers], timeout=PLACEMENT_TIMEOUT_S
        )
        step = latest.step if latest is not None else 0
        if latest is not None:
            log.info("job %s: restored from the checkpoint of step %d", self.job_id, step)
        return step

    def _new_worker(
        self, i: int, resume: ShardState | None, theta_ref: ray.ObjectRef | None
    ) -> ray.actor.ActorHandle:
        """Worker i in a new process; see `_arguments`."""
        return (
            remote_class(worker_kind(self.spec))
            .options(
                name=actor_name(self.job_id, "worker", i, self._generation, self._incarnation),
                num_cpus=self.worker_cpus,
                max_concurrency=4,  # train, and drain / state_dict / export beside it
                scheduling_strategy="SPREAD",
                **GradientWorker.actor_options(self.spec.device),
            )
            .remote(**self._arguments(i, resume, theta_ref))
        )

    def _arguments(
        self, i: int, resume: ShardState | None, theta_ref: ray.ObjectRef | None
    ) -> dict:
        """Worker i's arguments; from `resume` (its shard) and `theta_ref` (the whole θ)
        when given."""
        X, y = self._shards[i]
        arguments = worker_arguments(self.spec, self.server, self.data.plan, i, X, y)
        return {**arguments, "resume": resume, "resume_theta": theta_ref}

    def launch(
        self,
        stop: int,
        snapshot_every: tuple[int, ...],
        total_steps: int,
        allowed: int | None = None,
    ) -> list[ray.ObjectRef]:
        """Start every worker's step loop up to step `stop`, held before any step past
        `allowed` (None: none held) until a `drain` allows more; returns their task refs."""
        return [w.train.remote(stop, snapshot_every, total_steps, allowed) for w in self.workers]

    def drain(self, period_s: float = 0.0, allowed: int | None = None) -> list[Drained]:
        """Every worker's statistics and snapshots since its last drain, after waiting
        up to `period_s` (less once a worker's loop has ended or is held); steps up to
        `allowed` may then be trained."""
        refs = [w.drain.remote(period_s, allowed) for w in self.workers]
        return ray.get(refs, timeout=DRAIN_TIMEOUT_S + period_s)

    def export(self) -> list[ray.ObjectRef]:
        """θ for use outside training (final or latest weights): one ObjectRef, of the
        first worker's `export` (step, the whole θ) taken between two steps. Returns at
        once; whoever fetches it gets the bytes from the worker."""
        if not self.workers:
            raise RuntimeError(f"job {self.job_id} has no workers now")
        return [self.workers[0].export.remote()]

    def state_dict(self) -> ShardState:
        """asp/ssp: the whole shared parameter server's state for a checkpoint."""
        return ray.get(self.workers[0].state_dict.remote(), timeout=DRAIN_TIMEOUT_S)

    def profiles(self) -> list[dict]:
        return ray.get([w.profile.remote() for w in self.workers], timeout=DRAIN_TIMEOUT_S)

    def restart(self, at_most: int) -> int:
        """Replace every worker; they continue from the newest checkpoint at or before
        step `at_most` (0 without one). Returns that step."""
        self.release()
        self.replacements += 1
        return self._start(at_most)

    def release(self) -> None:
        for actor in self.workers:
            ray.kill(actor, no_restart=True)
        self.workers = []
        if self._kept is not None:  # never started
            self._kept.drop()

    def keep(self) -> KeptWorkers | None:
        """Detach the workers, idle and out of this job (`forget`), for another job;
        None (and they are killed) if one does not answer."""
        workers, self.workers = self.workers, []
        try:
            ray.get([w.forget.remote() for w in workers], timeout=DRAIN_TIMEOUT_S)
        except (*FAULTS, RayTaskError) as error:
            log.info("job %s: workers not kept (%s)", self.job_id, error)
            self.workers = workers
            self.release()
            return None
        return KeptWorkers(workers, worker_kind(self.spec), self.worker_cpus, self.spec.device)
