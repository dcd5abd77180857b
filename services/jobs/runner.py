"""JobRunner: trains one job on Ray: a parameter server, N gradient workers, the step loop.

A plain class made a Ray actor by the job manager (threaded, so `poll` and `cancel`
answer while `run` trains). The driver (the API process) is not in the step loop:
each step passes θ's ObjectRef from the parameter server to the workers and their
gradient ObjectRefs back to the parameter server; only a few scalars reach the runner.

Failures: a step that loses an actor (or waits past STEP_TIMEOUT_S) is repaired by
the Cohort and retried; the parameter server applies each step once, so a retried
push is not applied twice. Checkpoints go to `checkpoint_dir` every
`checkpoint_every` steps and at the end.
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
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError

from services.errors import InvalidSpecError
from services.jobs.checkpoints import CheckpointStore
from services.jobs.cohort import Cohort, PlacementError
from services.jobs.records import JobState, MetricPoint
from services.jobs.spec import JobSpec
from services.jobs.training_data import DataError, prepare_data, total_steps
from worker.model import MLP

log = logging.getLogger(__name__)

STEP_TIMEOUT_S = 60.0  # a BSP barrier waits this long for every worker, then repairs
MAX_REPLACEMENTS = 1000  # lost actors a job survives before it gives up
DIVERGENCE_FACTOR = 1e6


def is_diverged(loss: float, gradient_norms: tuple[float, ...], first_loss: float) -> bool:
    """A non-finite loss or gradient, or a loss grown DIVERGENCE_FACTOR-fold since step 1."""
    if not math.isfinite(loss) or not all(map(math.isfinite, gradient_norms)):
        return True
    return loss > DIVERGENCE_FACTOR * max(first_loss, 1e-3)


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class JobFailed(Exception):
    """The job cannot go on; the message is the reason users see."""


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
    ) -> None:
        """`resume_at_most`: the last step whose metrics are stored; a resumed job starts
        from the newest checkpoint at or before it, so no step goes unreported."""
        self.job_id = job_id
        self.spec = spec
        self.worker_cpus = worker_cpus
        self.datasets_dir = Path(datasets_dir) if datasets_dir else None
        self.checkpoints = CheckpointStore(Path(checkpoint_dir)) if checkpoint_dir else None
        self.resume_at_most = resume_at_most
        self._changed = threading.Condition()
        self._points: list[MetricPoint] = []
        self._state = JobState.QUEUED
        self._reason = ""
        self._total_steps = 0
        self._started_at: float | None = None
        self._cancelled = threading.Event()
        self._cohort: Cohort | None = None
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
            self._changed.wait_for(
                lambda: (
                    self._state.is_terminal or (self._points and self._points[-1].step > after_step)
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
        steps_per_epoch = data.plan.steps_per_epoch
        eval_every = spec.eval_every or steps_per_epoch
        checkpoint_every = spec.checkpoint_every or steps_per_epoch
        model = MLP(spec.sizes, spec.activations, spec.loss, **spec.model_options)
        try:
            self._cohort = cohort = Cohort(
                self.job_id,
                spec,
                data,
                worker_cpus=self.worker_cpus,
                checkpoints=self.checkpoints,
                total_steps=steps,
            )
        except InvalidSpecError as error:  # a schedule that does not fit the step count
            raise JobFailed(str(error.under("schedule"))) from None
        step = cohort.start(self.resume_at_most)  # > 0 when resuming from a checkpoint
        with self._changed:
            self._state = JobState.RUNNING
            self._total_steps = steps
            self._started_at = time.time()
            self._changed.notify_all()

        started = last = time.monotonic()
        first_loss: float | None = None
        theta_ref = cohort.ps.get_theta.remote()
        while step < steps:
            if self._cancelled.is_set():
                raise JobCancelled
            if spec.max_seconds is not None and time.monotonic() - started > spec.max_seconds:
                raise JobFailed(
                    f"time limit of {spec.max_seconds:g} s reached at step {step}; "
                    "its last checkpoint is kept"
                )
            try:
                stats_ref, next_theta_ref = cohort.step(theta_ref, step + 1)
                stats = ray.get(stats_ref, timeout=STEP_TIMEOUT_S)
            except (RayActorError, GetTimeoutError, ObjectLostError) as error:
                if self._cancelled.is_set():
                    raise JobCancelled from None
                step, theta_ref = self._recover(cohort, step, error)
                continue
            step += 1
            theta_ref = next_theta_ref
            self._latest = (step, theta_ref)
            first_loss = stats.loss if first_loss is None else first_loss
            if is_diverged(stats.loss, stats.gradient_norms, first_loss):
                raise JobFailed(f"diverged at step {step} (loss {stats.loss:.4g})")
            if self.checkpoints is not None and (step % checkpoint_every == 0 or step == steps):
                cohort.checkpoint()
            now = time.monotonic()
            validation: dict[str, float] = {}
            if len(data.X_val) and (step % eval_every == 0 or step == steps):
                validation = model.evaluate(ray.get(theta_ref), data.X_val, data.y_val)
            self._publish(
                MetricPoint(
                    step=step,
                    epoch=(step - 1) // steps_per_epoch,
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

    def _recover(self, cohort: Cohort, step: int, error: Exception) -> tuple[int, ray.ObjectRef]:
        """Replace the actors that died; returns (step to continue from, θ ref at it)."""
        if cohort.replacements >= MAX_REPLACEMENTS:
            raise JobFailed(f"gave up after replacing {cohort.replacements} lost actors") from error
        log.warning("job %s: step %d failed (%s); repairing", self.job_id, step + 1, error)
        resumed = cohort.repair()
        if resumed is not None:
            step = resumed  # the parameter server came back from a checkpoint
        return step, cohort.ps.get_theta.remote()

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
        if self._cohort is not None:
            self._cohort.release()
