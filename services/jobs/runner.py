"""JobRunner: trains one job on Ray: a parameter server, N gradient workers, the step loop.

A plain class made a Ray actor by the job manager (threaded, so `poll` and `cancel`
answer while `run` trains). The driver (the API process) is not in the step loop:
each step passes θ's ObjectRef from the parameter server to the workers and their
gradient ObjectRefs back to the parameter server; only a few scalars reach the runner.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from services.datasets import load_dataset, split_validation
from services.datasets.uploads import load_uploaded
from services.jobs.records import JobState, MetricPoint
from services.jobs.spec import UPLOADED, JobSpec
from services.paramserver.server import ParameterServer
from worker.gradient_worker import GradientWorker
from worker.model import MLP
from worker.sampling import BatchPlan

log = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 120.0


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class JobFailed(Exception):
    """The job cannot go on; the message is the reason users see."""


@dataclass(frozen=True)
class TrainingData:
    """A job's rows after the validation hold-out, and how they split over workers."""

    X_train: np.ndarray  # (N, D) float32
    y_train: np.ndarray  # (N,) labels or (N, K) targets
    X_val: np.ndarray
    y_val: np.ndarray
    plan: BatchPlan

    def shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, size = self.plan.shard_starts[i], self.plan.shard_sizes[i]
        return self.X_train[start : start + size], self.y_train[start : start + size]


def prepare_data(spec: JobSpec, datasets_dir: Path | None = None) -> TrainingData:
    """Load the dataset, hold out validation rows, plan the shards (all seeded by the spec).

    Uploaded datasets are read from `datasets_dir` (shared storage in a cluster).
    """
    if spec.dataset.name == UPLOADED:
        if datasets_dir is None:
            raise JobFailed("the runner was not told where uploaded datasets are stored")
        dataset_id = spec.dataset.dataset_id
        path = Path(datasets_dir) / f"{dataset_id}.npz"
        if not path.is_file():
            raise JobFailed(f"uploaded dataset {dataset_id} is missing from {datasets_dir}")
        dataset = load_uploaded(path, dataset_id)
    else:
        dataset = load_dataset(spec.dataset.name, spec.dataset.options)
    X_train, y_train, X_val, y_val = split_validation(
        dataset.X_train, dataset.y_train, spec.dataset.validation_fraction, spec.seed
    )
    try:
        plan = BatchPlan(n_train=len(X_train), batch_size=spec.batch_size, workers=spec.workers)
    except ValueError as error:
        raise JobFailed(str(error)) from None
    return TrainingData(X_train, y_train, X_val, y_val, plan)


def total_steps(spec: JobSpec, plan: BatchPlan) -> int:
    return spec.steps if spec.steps is not None else spec.epochs * plan.steps_per_epoch


@dataclass(frozen=True)
class RunnerUpdate:
    """What `poll` returns: the job's state and the points after the caller's cursor."""

    state: JobState
    reason: str
    total_steps: int
    started_at: float | None
    placement: tuple[dict, ...] = ()
    points: list[MetricPoint] = field(default_factory=list)


class JobRunner:
    """Runs one job from start to a terminal state; see the module docstring."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        *,
        worker_cpus: float = 1.0,
        datasets_dir: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.spec = spec
        self.worker_cpus = worker_cpus
        self.datasets_dir = Path(datasets_dir) if datasets_dir else None
        self._changed = threading.Condition()
        self._points: list[MetricPoint] = []
        self._state = JobState.QUEUED
        self._reason = ""
        self._total_steps = 0
        self._started_at: float | None = None
        self._placement: tuple[dict, ...] = ()
        self._cancelled = threading.Event()
        self._actors: list[ray.actor.ActorHandle] = []
        self._theta: np.ndarray | None = None
        self._latest: tuple[int, ray.ObjectRef] | None = None  # (step, θ after it)

    # --- called by the job manager ---------------------------------------------------

    def run(self) -> JobState:
        """Trains to the end; returns the terminal state (also visible through `poll`)."""
        try:
            self._train()
            self._finish(JobState.SUCCEEDED, "")
        except JobCancelled:
            self._finish(JobState.CANCELLED, "cancelled by request")
        except JobFailed as error:
            self._finish(JobState.FAILED, str(error))
        except RayActorError as error:
            if self._cancelled.is_set():
                self._finish(JobState.CANCELLED, "cancelled by request")
            else:
                log.exception("job %s lost an actor", self.job_id)
                self._finish(JobState.FAILED, f"a Ray actor of the job died: {error.error_msg}")
        except Exception as error:
            log.exception("job %s failed", self.job_id)
            self._finish(JobState.FAILED, f"{type(error).__name__}: {error}"[:500])
        finally:
            self._release_actors()
        return self._state

    def poll(self, after_step: int, timeout_s: float) -> RunnerUpdate:
        """Points with step > after_step (waiting up to timeout_s for one), and the state.

        Points up to after_step are acknowledged (stored by the caller) and dropped here.
        """
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._state.is_terminal or (self._points and self._points[-1].step > after_step)
                ),
                timeout=timeout_s,
            )
            self._points = [p for p in self._points if p.step > after_step]
            return RunnerUpdate(
                state=self._state,
                reason=self._reason,
                total_steps=self._total_steps,
                started_at=self._started_at,
                placement=self._placement,
                points=list(self._points),
            )

    def cancel(self) -> None:
        """Stops the step loop and its actors; `run` then ends CANCELLED."""
        self._cancelled.set()
        self._release_actors()

    def final_theta(self) -> np.ndarray:
        """θ after the last step: (P,) float32. Only once the job SUCCEEDED."""
        if self._theta is None:
            raise RuntimeError("the job has no final θ")
        return self._theta

    def snapshot(self) -> tuple[int, np.ndarray]:
        """(step, θ after that step) while the job runs: (P,) float32."""
        latest = self._latest
        if latest is None:
            raise RuntimeError("the job has not finished a step yet")
        step, theta_ref = latest
        return step, ray.get(theta_ref)

    # --- training ----------------------------------------------------------------------

    def _train(self) -> None:
        spec = self.spec
        data = prepare_data(spec, self.datasets_dir)
        steps = total_steps(spec, data.plan)
        ps, workers = self._start_actors(data)
        model = MLP(spec.sizes, spec.activations, spec.loss)
        eval_every = spec.eval_every or data.plan.steps_per_epoch
        with self._changed:
            self._state = JobState.RUNNING
            self._total_steps = steps
            self._started_at = time.time()
            self._changed.notify_all()

        started = last = time.monotonic()
        theta_ref = ps.get_theta.remote()
        for step in range(1, steps + 1):
            if self._cancelled.is_set():
                raise JobCancelled
            epoch, index = divmod(step - 1, data.plan.steps_per_epoch)
            gradient_refs = [w.compute_gradients.remote(theta_ref, epoch, index) for w in workers]
            stats_ref, theta_ref = ps.apply_gradients.options(num_returns=2).remote(*gradient_refs)
            stats = ray.get(stats_ref)
            self._latest = (step, theta_ref)
            if not math.isfinite(stats.loss):
                raise JobFailed(f"diverged at step {step} (loss is {stats.loss})")
            now = time.monotonic()
            validation: dict[str, float] = {}
            if len(data.X_val) and (step % eval_every == 0 or step == steps):
                validation = model.evaluate(ray.get(theta_ref), data.X_val, data.y_val)
            self._publish(
                MetricPoint(
                    step=step,
                    epoch=epoch,
                    loss=stats.loss,
                    samples_per_second=stats.samples / max(now - last, 1e-9),
                    learning_rate=stats.learning_rate,
                    elapsed_seconds=now - started,
                    validation_loss=validation.get("loss"),
                    validation_accuracy=validation.get("accuracy"),
                    gradient_norms=stats.gradient_norms,
                )
            )
            last = now
        self._theta = ray.get(theta_ref)

    def _start_actors(self, data: TrainingData) -> tuple[ray.actor.ActorHandle, list]:
        spec = self.spec
        ps = (
            ray.remote(ParameterServer)
            .options(name=f"{self.job_id}/ps", num_cpus=0)
            .remote(
                sizes=spec.sizes,
                activations=spec.activations,
                optimizer=spec.optimizer,
                workers=spec.workers,
                seed=spec.seed,
            )
        )
        self._actors.append(ps)
        workers = []
        for i in range(spec.workers):
            X, y = data.shard(i)
            worker = (
                ray.remote(GradientWorker)
                .options(
                    name=f"{self.job_id}/worker-{i}",
                    num_cpus=self.worker_cpus,
                    scheduling_strategy="SPREAD",  # over the cluster's nodes
                )
                .remote(
                    sizes=spec.sizes,
                    activations=spec.activations,
                    loss=spec.loss,
                    X=ray.put(X),  # each shard travels once, by reference
                    y=ray.put(y),
                    local_batch=data.plan.local_batches[i],
                    seed=spec.seed,
                    worker_index=i,
                )
            )
            self._actors.append(worker)
            workers.append(worker)
        try:
            placement = ray.get(
                [w.placement.remote() for w in workers], timeout=PLACEMENT_TIMEOUT_S
            )
        except GetTimeoutError:
            cpus = ray.cluster_resources().get("CPU", 0)
            raise JobFailed(
                f"could not place {spec.workers} workers ({self.worker_cpus} CPU each) within "
                f"{PLACEMENT_TIMEOUT_S:.0f} s; the cluster has {cpus:g} CPUs"
            ) from None
        self._placement = tuple(placement)
        return ps, workers

    # --- state ---------------------------------------------------------------------------

    def _publish(self, point: MetricPoint) -> None:
        with self._changed:
            self._points.append(point)
            self._changed.notify_all()

    def _finish(self, state: JobState, reason: str) -> None:
        with self._changed:
            self._state = state
            self._reason = reason
            self._changed.notify_all()

    def _release_actors(self) -> None:
        actors, self._actors = self._actors, []
        for actor in actors:
            ray.kill(actor, no_restart=True)
