"""StepReporter: what every step does once its updates are applied: the limit and
divergence checks, the step's metric point, its checkpoint, and the `stop_when` rule."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import ray

from services.jobs.checkpoints import join_shards
from services.jobs.cohort import Cohort
from services.jobs.colocated_cohort import ColocatedCohort
from services.jobs.early_stopping import EarlyStopper
from services.jobs.faults import FAULTS
from services.jobs.outcomes import JobCancelled, JobFailed, StoppedEarly
from services.jobs.records import MetricPoint
from services.jobs.shards import joined
from services.jobs.weights import join_exported
from services.paramserver.colocated import ShardState
from services.paramserver.server import StepStats
from worker.model import MLP

log = logging.getLogger(__name__)

# With no `checkpoint_every` in the spec, a checkpoint each epoch but at most this often
# (and always after the last step): a small job's epochs take milliseconds, and a
# checkpoint (two fsyncs) would cost more than the steps it protects.
DEFAULT_CHECKPOINT_MIN_INTERVAL_S = 1.0
DIVERGENCE_FACTOR = 1e6


def is_diverged(loss: float, gradient_norms: tuple[float, ...], first_loss: float) -> bool:
    """A non-finite loss or gradient, or a loss grown DIVERGENCE_FACTOR-fold since step 1."""
    if not math.isfinite(loss) or not all(map(math.isfinite, gradient_norms)):
        return True
    return loss > DIVERGENCE_FACTOR * max(first_loss, 1e-3)


def is_checkpoint_due(
    step: int, last_step: int, every: int, min_interval_s: float, since_last_s: float
) -> bool:
    """A checkpoint after `step`: always after the last step; else at multiples of
    `every` once `min_interval_s` has passed since the previous checkpoint."""
    if step == last_step:
        return True
    return step % every == 0 and since_last_s >= min_interval_s


class StepReporter:
    """Reports the steps of one job's cohort, `steps` in all: each point goes to
    `publish`; `is_cancelled` ends the job at the next step's limit check."""

    def __init__(
        self,
        cohort: Cohort | ColocatedCohort,
        steps: int,
        *,
        publish: Callable[[MetricPoint], None],
        is_cancelled: Callable[[], bool],
    ) -> None:
        spec = cohort.spec
        self.cohort, self.spec, self.data, self.steps = cohort, spec, cohort.data, steps
        self.publish, self.is_cancelled = publish, is_cancelled
        self.checkpoints = cohort.checkpoints
        self.steps_per_epoch = self.data.plan.steps_per_epoch
        self.eval_every = spec.eval_every or self.steps_per_epoch
        self.checkpoint_every = spec.checkpoint_every or self.steps_per_epoch
        self.checkpoint_min_interval_s = (
            0.0 if spec.checkpoint_every else DEFAULT_CHECKPOINT_MIN_INTERVAL_S
        )
        self.last_checkpoint = time.monotonic()
        self.model = MLP.from_config(spec.model)
        itemsize = 8 if spec.dtype == "float64" else 4
        self.theta_bytes = self.model.layout.size * itemsize
        self.started = self.last = time.monotonic()
        self.first_loss: float | None = None
        self.reported = 0  # the last step published
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
        """JobCancelled once cancelled; JobFailed past the spec's `max_seconds`."""
        spec = self.spec
        if self.is_cancelled():
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
        the parameter server's export. Raises JobFailed when the loss diverged, StoppedEarly
        (θ after the step kept as the final θ) when the spec's `stop_when` is met; a Ray
        fault while checkpointing propagates (the step is reported)."""
        samples = sum(s.samples for s in stats)
        loss = sum(s.samples * s.loss for s in stats) / max(samples, 1)
        columns = zip(*(s.gradient_norms for s in stats), strict=True)  # per layer
        norms = tuple(_mean(column) for column in columns)
        self.first_loss = loss if self.first_loss is None else self.first_loss
        if is_diverged(loss, norms, self.first_loss):
            raise JobFailed(f"diverged at step {step} (loss {loss:.4g})")
        now = time.monotonic()
        ended = [s.finished_at for s in stats if s.finished_at is not None]
        if ended:  # reported in a batch: the step's own end, on this process's clock
            now = max(now - max(0.0, time.time() - max(ended)), self.last)
        is_evaluation = step % self.eval_every == 0 or step == self.steps
        validation: dict[str, float] = {}
        if len(self.data.X_val) and is_evaluation:
            validation, theta = self._validate(step, theta, theta_refs)
        self.publish(self._point(step, stats, now, loss, norms, validation))
        self.last, self.reported = now, step
        # After the point: a lost parameter server surfaces here as a fault the step
        # loop repairs, and the checkpoint never runs ahead of the reported steps.
        if self.checkpoints is not None and self.is_checkpoint_due(step):
            if states:
                self.checkpoints.save(join_shards(states))
            else:
                self.cohort.checkpoint()
            self.last_checkpoint = time.monotonic()
        if self._is_rule_step(step):
            measured = {"loss": loss, **{f"validation_{k}": v for k, v in validation.items()}}
            reason = self.stopper.observe(step, measured)
            if reason is not None:
                raise StoppedEarly(reason, self._theta(theta, theta_refs))

    def replay_evaluations(self, resumed: int, history: Sequence[tuple[int, float]]) -> None:
        """A runner that replaces a lost one, resuming after step `resumed`: the
        `stop_when` rule sees the evaluations up to it again from `history` ((step, value)
        of its metric as stored, step order), so its best and its patience go on where
        they were at that step; the steps after it are evaluated as they are trained.
        StoppedEarly (θ: the resumed one) if the rule was met at `resumed` itself: the
        lost runner reported the stop but did not end the job."""
        metric = self.spec.stop_when.metric
        for step, value in history:
            if step > resumed:
                break
            if self._is_rule_step(step):
                reason = self.stopper.observe(step, {metric: value})
                if reason is not None:
                    raise StoppedEarly(reason)

    def _is_rule_step(self, step: int) -> bool:
        """Whether `stop_when` looks at `step`: an evaluation step before the last (the
        last ends the job anyway)."""
        return step % self.eval_every == 0 and step < self.steps

    def _theta(self, theta: np.ndarray | None, theta_refs: list[ray.ObjectRef] | None):
        """θ after the step: `theta` if given, else from `theta_refs` or as the
        parameter server exports it now."""
        if theta is not None:
            return theta
        if theta_refs:
            return joined(ray.get(theta_refs, timeout=60))
        return join_exported(ray.get(self.cohort.export(), timeout=60))[1]

    def _validate(
        self, step: int, theta: np.ndarray | None, theta_refs: list[ray.ObjectRef] | None
    ) -> tuple[dict[str, float], np.ndarray | None]:
        """(validation metrics, θ after the step); none when θ could not be read."""
        validation: dict[str, float] = {}
        try:
            theta = self._theta(theta, theta_refs)
            validation = self.model.evaluate(theta, self.data.X_val, self.data.y_val)
        except FAULTS as error:
            job = self.cohort.job_id
            log.warning("job %s: no validation at step %d (%s)", job, step, error)
        return validation, theta

    def _point(
        self,
        step: int,
        stats: list[StepStats],
        now: float,
        loss: float,
        norms: tuple[float, ...],
        validation: dict[str, float],
    ) -> MetricPoint:
        """The step's metric point; `now`: its end (monotonic clock), `loss` and `norms`
        its updates' means."""
        samples = sum(s.samples for s in stats)
        staleness = [tau for s in stats for tau in s.staleness] or [0]
        lead = max((ahead for s in stats for ahead in s.clock_lead), default=0)
        pulls = sum(len(s.staleness) for s in stats)  # one θ per gradient
        pulled = [s.bytes_pulled for s in stats if s.bytes_pulled is not None]
        return MetricPoint(
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
            clock_lead_max=int(lead),
            bytes_pushed=sum(s.bytes_pushed for s in stats),
            bytes_pulled=sum(pulled) if pulled else pulls * self.theta_bytes,
            compute_seconds=_mean([s.compute_seconds for s in stats]),
        )


def _mean(values: Sequence[float]) -> float:
    """The mean of a few numbers, in plain Python (np.mean costs microseconds a call, and
    a step's point takes several)."""
    return float(sum(values)) / len(values)
