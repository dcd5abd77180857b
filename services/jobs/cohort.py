"""Cohort: one job's actors on Ray (a parameter server, N gradient workers) and their repair.

A dead or unresponsive worker is replaced by a new actor that gets the same shard
(the shards stay in the object store, owned by the runner); a dead parameter server
is replaced by one restored from the job's newest intact checkpoint.
"""

from __future__ import annotations

import logging

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from services.jobs.checkpoints import Checkpoint, CheckpointStore
from services.jobs.spec import JobSpec
from services.jobs.training_data import TrainingData
from services.paramserver.server import ParameterServer, StepStats
from worker.gradient_worker import GradientWorker

log = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 120.0
PING_TIMEOUT_S = 5.0


class PlacementError(Exception):
    """The cluster could not place the job's actors in time."""


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
        self.ps: ray.actor.ActorHandle | None = None
        self.workers: list[ray.actor.ActorHandle] = []
        self.placement: list[dict] = []
        self.replacements = 0  # actors replaced so far
        self._generation = 0  # suffix that keeps a replacement's name unique
        self._shards = []  # (X ref, y ref) per worker

    def start(self, resume_at_most: int | None = None) -> int:
        """Create every actor; returns the step to continue from (a checkpoint's, or 0).

        `resume_at_most` limits which checkpoint a new runner resumes from: steps after
        the last one whose metrics were stored must be trained (and reported) again.
        """
        self._shards = [
            tuple(ray.put(part) for part in self.data.shard(i)) for i in range(self.spec.workers)
        ]
        resumed = self._start_ps(resume_at_most)
        self.workers = [self._new_worker(i) for i in range(self.spec.workers)]
        self.placement = self._wait_placed(self.workers)
        return resumed

    def step(self, theta_ref: ray.ObjectRef, step: int) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Issue one BSP step at θ: every worker's gradient, straight into the parameter
        server. Returns (stats ref, θ-after ref); nothing passes through the runner."""
        epoch, index = divmod(step - 1, self.data.plan.steps_per_epoch)
        gradients = [w.compute_gradients.remote(theta_ref, epoch, index) for w in self.workers]
        return self.ps.apply_gradients.options(num_returns=2).remote(*gradients, step=step)

    def checkpoint(self) -> int:
        """Save the parameter server's state; returns its step."""
        state = ray.get(self.ps.state_dict.remote(), timeout=PLACEMENT_TIMEOUT_S)
        self.checkpoints.save(Checkpoint(**state))
        return state["step"]

    def repair(self) -> int | None:
        """Replace every actor that does not answer. Returns the step to continue from
        when the parameter server had to be restored, else None (retry the same step)."""
        resumed = None
        if not self._answers(self.ps.ping):
            log.warning("job %s: parameter server lost; restoring it", self.job_id)
            self._kill(self.ps)
            resumed = self._start_ps()
            self.replacements += 1
        for i, worker in enumerate(self.workers):
            if not self._answers(worker.placement):
                log.warning("job %s: worker %d lost; replacing it", self.job_id, i)
                self._kill(worker)
                self.workers[i] = self._new_worker(i)
                self.placement[i] = self._wait_placed([self.workers[i]])[0]
                self.replacements += 1
        return resumed

    def release(self) -> None:
        for actor in [self.ps, *self.workers]:
            if actor is not None:
                self._kill(actor)
        self.ps, self.workers = None, []

    # --- helpers -------------------------------------------------------------------------

    def _start_ps(self, at_most: int | None = None) -> int:
        spec = self.spec
        self._generation += 1
        self.ps = (
            ray.remote(ParameterServer)
            .options(name=f"{self.job_id}/ps.{self._generation}", num_cpus=0)
            .remote(
                sizes=spec.sizes,
                activations=spec.activations,
                optimizer=spec.optimizer,
                workers=spec.workers,
                seed=spec.seed,
                schedule=self.schedule,
                dtype=spec.dtype,
                init=spec.init,
            )
        )
        latest = self.checkpoints.latest(at_most) if self.checkpoints is not None else None
        if latest is None:
            return 0
        ray.get(
            self.ps.restore.remote(
                step=latest.step,
                theta=latest.theta,
                optimizer_step=latest.optimizer_step,
                buffers=latest.buffers,
            ),
            timeout=PLACEMENT_TIMEOUT_S,
        )
        log.info("job %s: parameter server restored from step %d", self.job_id, latest.step)
        return latest.step

    def _new_worker(self, i: int) -> ray.actor.ActorHandle:
        self._generation += 1
        X, y = self._shards[i]
        return (
            ray.remote(GradientWorker)
            .options(
                name=f"{self.job_id}/worker-{i}.{self._generation}",
                num_cpus=self.worker_cpus,
                scheduling_strategy="SPREAD",  # over the cluster's nodes
                **GradientWorker.actor_options(self.spec.device),
            )
            .remote(
                sizes=self.spec.sizes,
                activations=self.spec.activations,
                loss=self.spec.loss,
                X=X,  # the shard travels by reference, once per actor
                y=y,
                local_batch=self.data.plan.local_batches[i],
                seed=self.spec.seed,
                worker_index=i,
                device=self.spec.device,
                **self.spec.model_options,
            )
        )

    def _wait_placed(self, workers: list) -> list[dict]:
        try:
            return ray.get([w.placement.remote() for w in workers], timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            cpus = ray.cluster_resources().get("CPU", 0)
            raise PlacementError(
                f"could not place {len(workers)} workers ({self.worker_cpus} CPU each) within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; the cluster has {cpus:g} CPUs"
            ) from None

    @staticmethod
    def _answers(method) -> bool:
        try:
            ray.get(method.remote(), timeout=PING_TIMEOUT_S)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    @staticmethod
    def _kill(actor: ray.actor.ActorHandle) -> None:
        ray.kill(actor, no_restart=True)  # a no-op for an actor that is already dead


__all__ = ["Cohort", "PlacementError", "StepStats"]
