"""Cohort: one job's actors on Ray (S parameter-server shards, N gradient workers) and repair.

A dead or unresponsive worker is replaced by a new actor that gets the same shard
(the shards stay in the object store, owned by the runner); a dead parameter-server
shard has every shard replaced by ones restored from the job's newest intact
checkpoint at or before the last reported step (so θ's parts never come from different
steps, and no step goes unreported).

θ leaves the parameter servers for use outside training through `export` only: one
ObjectRef per shard, which the runner hands on without fetching it.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import ray

from services.jobs.checkpoints import Checkpoint, CheckpointStore
from services.jobs.cohort_actors import (
    PING_TIMEOUT_S,
    PLACEMENT_TIMEOUT_S,
    PlacementError,
    actor_incarnation,
    actor_name,
    answers,
    kill,
    kill_strays,
    new_gradient_worker,
    new_parameter_servers,
    restore_parameter_servers,
    wait_placed,
)
from services.jobs.spec import JobSpec
from services.jobs.training_data import TrainingData
from services.paramserver.server import StepStats

log = logging.getLogger(__name__)


class Cohort:
    """The parameter server and workers of one job. Call from the job's runner."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        data: TrainingData,
        *,
        worker_cpus: float,
        checkpoints: CheckpointStore | None,
        total_steps: int,
    ) -> None:
        self.job_id = job_id
        self.spec = spec
        self.data = data
        self.schedule = spec.schedule.schedule(total_steps)
        self.worker_cpus = worker_cpus
        self.checkpoints = checkpoints
        self.servers: list[ray.actor.ActorHandle] = []  # one per θ shard
        self.workers: list[ray.actor.ActorHandle] = []
        self.placement: list[dict] = []
        self.replacements = 0  # actors replaced so far
        self.graph = None  # the compiled bsp step, while one is built (see compile_step)
        self._generation = 0  # with the incarnation, keeps a replacement's name unique
        self._incarnation = actor_incarnation()
        self._shards = []  # (X ref, y ref) per worker
        # bsp servers run calls in the order sent: an export sent between two steps'
        # calls finds every shard at the same step
        self._sending = threading.Lock()

    def start(self, resume_at_most: int | None = None) -> int:
        """Create every actor; returns the step to continue from (a checkpoint's, or 0).

        `resume_at_most` limits which checkpoint a new runner resumes from: steps after
        the last one whose metrics were stored must be trained (and reported) again.
        """
        self._shards = [
            tuple(ray.put(part) for part in self.data.shard(i)) for i in range(self.spec.workers)
        ]
        kill_strays(self.job_id, self._incarnation)
        resumed = self._start_ps(resume_at_most)
        self.workers = [self._new_worker(i) for i in range(self.spec.workers)]
        self.placement = wait_placed(self.workers, self.worker_cpus)
        return resumed

    @property
    def ps(self) -> ray.actor.ActorHandle:
        """The first parameter-server shard (the only one unless ps_shards > 1)."""
        return self.servers[0]

    def export(self) -> list[ray.ObjectRef]:
        """θ for use outside training (final or latest weights, evaluation): one
        ObjectRef per shard, in shard order, of its `ParameterServer.export` (step, θ
        part). Returns at once; whoever fetches them gets the bytes from the servers."""
        if not self.servers:
            raise RuntimeError(f"job {self.job_id} has no parameter server now")
        with self._sending:
            return [server.export.remote() for server in self.servers]

    def step(
        self, theta_refs: list[ray.ObjectRef] | None, step: int
    ) -> tuple[list[ray.ObjectRef], list[ray.ObjectRef]]:
        """Issue one BSP step at θ (`theta_refs`, one per shard; None: as the servers
        hold it for `step`): every worker's gradient slices, straight into the
        parameter-server shards. Returns (stats refs, θ-after refs), one per shard;
        nothing passes through the runner."""
        shards = len(self.servers)
        with self._sending:
            if theta_refs is None:
                theta_refs = [server.theta_at.remote(step) for server in self.servers]
            parts = [
                w.gradients.options(num_returns=shards).remote(step - 1, *theta_refs)
                for w in self.workers
            ]
            if shards == 1:
                parts = [[p] for p in parts]
            stats, thetas = [], []
            for s, server in enumerate(self.servers):
                slices = [worker_parts[s] for worker_parts in parts]
                update = server.apply_gradients.options(num_returns=2)
                stat, theta = update.remote(*slices, step=step)
                stats.append(stat)
                thetas.append(theta)
        return stats, thetas

    def compile_step(self):
        """bsp with one parameter-server shard: the step as a Ray compiled graph
        (step → θ → every worker's gradient → the averaged update → StepStats), which
        moves θ and g over Ray's shared-memory channels instead of one task and one
        object-store object per hop. None when it does not apply or cannot be built
        (the step then goes through `step`)."""
        if self.spec.consistency != "bsp" or len(self.servers) != 1:
            return None
        from ray.dag import InputNode

        try:
            with InputNode() as step:
                theta = self.ps.theta_at.bind(step)
                gradients = [w.step_gradient.bind(step, theta) for w in self.workers]
                stats = self.ps.apply_step.bind(step, *gradients)
            self.graph = stats.experimental_compile()
        except Exception as error:  # Ray's compile errors have no common base class
            log.warning("job %s: no compiled step graph (%s); using tasks", self.job_id, error)
            self.graph = None
        return self.graph

    def restart(self, at_most: int | None = None) -> int:
        """Replace every actor (a compiled graph's actors cannot rejoin one); the
        parameter server comes back from the newest checkpoint at or before step
        `at_most`. Returns its step."""
        self._drop_graph()
        for actor in [*self.servers, *self.workers]:
            kill(actor)
        resumed = self._start_ps(at_most)
        self.workers = [self._new_worker(i) for i in range(self.spec.workers)]
        self.placement = wait_placed(self.workers, self.worker_cpus)
        self.replacements += 1
        return resumed

    def submit(self, worker: int, clock: int) -> list[ray.ObjectRef]:
        """asp/ssp: worker `worker`'s gradient number `clock` at θ as the shards hold it
        now, pushed to every shard as soon as it exists. Returns the pushes' stats refs."""
        shards = len(self.servers)
        theta_refs = [server.read_theta.remote(worker, clock) for server in self.servers]
        parts = (
            self.workers[worker].gradients.options(num_returns=shards).remote(clock, *theta_refs)
        )
        parts = [parts] if shards == 1 else parts
        return [server.push.remote(part) for server, part in zip(self.servers, parts, strict=True)]

    def clocks(self) -> list[int]:
        """asp/ssp: gradients applied per worker (the first shard's count)."""
        return ray.get(self.ps.clocks.remote(), timeout=PLACEMENT_TIMEOUT_S)

    def checkpoint(self) -> int:
        """Save the parameter server's state (its shards joined); returns its step."""
        states = ray.get(
            [server.state_dict.remote() for server in self.servers], timeout=PLACEMENT_TIMEOUT_S
        )
        joined = {
            "step": min(state["step"] for state in states),
            "theta": np.concatenate([state["theta"] for state in states]),
            "optimizer_step": states[0]["optimizer_step"],
            "buffers": {
                name: np.concatenate([state["buffers"][name] for state in states])
                for name in states[0]["buffers"]
            },
        }
        self.checkpoints.save(Checkpoint(**joined))
        return joined["step"]

    def repair(self, at_most: int | None = None) -> int | None:
        """Replace every actor that does not answer. Returns the step to continue from
        when the parameter server had to be restored (from the newest checkpoint at or
        before step `at_most`), else None (retry the same step)."""
        resumed = None
        if not all(answers(server.ping) for server in self.servers):
            log.warning("job %s: parameter server lost; restoring it", self.job_id)
            for server in self.servers:
                kill(server)
            resumed = self._start_ps(at_most)
            self.replacements += 1
        for i, worker in enumerate(self.workers):
            if not answers(worker.placement):
                log.warning("job %s: worker %d lost; replacing it", self.job_id, i)
                kill(worker)
                self.workers[i] = self._new_worker(i)
                self.placement[i] = wait_placed([self.workers[i]], self.worker_cpus)[0]
                self.replacements += 1
        return resumed

    def release(self) -> None:
        self._drop_graph()
        for actor in [*self.servers, *self.workers]:
            kill(actor)
        self.servers, self.workers = [], []

    # --- helpers -------------------------------------------------------------------------

    def _start_ps(self, at_most: int | None = None) -> int:
        self._generation += 1
        self.servers = new_parameter_servers(
            self.job_id, self.spec, self.schedule, self._generation, self._incarnation
        )
        latest = self.checkpoints.latest(at_most) if self.checkpoints is not None else None
        if latest is None:
            return 0
        restore_parameter_servers(self.servers, self.spec, latest)
        log.info("job %s: parameter server restored from step %d", self.job_id, latest.step)
        return latest.step

    def _new_worker(self, i: int) -> ray.actor.ActorHandle:
        self._generation += 1
        return new_gradient_worker(
            name=actor_name(self.job_id, "worker", i, self._generation, self._incarnation),
            spec=self.spec,
            data=self.data,
            shard=self._shards[i],
            index=i,
            cpus=self.worker_cpus,
        )

    def _drop_graph(self) -> None:
        graph, self.graph = self.graph, None
        if graph is not None:
            try:
                graph.teardown(kill_actors=True)
            except Exception as error:  # an actor already gone: it is killed below anyway
                log.debug("job %s: graph teardown: %s", self.job_id, error)


__all__ = ["PING_TIMEOUT_S", "PLACEMENT_TIMEOUT_S", "Cohort", "PlacementError", "StepStats"]
