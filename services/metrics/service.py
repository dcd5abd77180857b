"""ServiceMetrics: every metric the API process exports, and the hooks that update them.

Names follow Prometheus conventions: the `bptrain_` prefix, base units (`_seconds`),
`_total` on counters, histograms for durations. Labels are bounded: `method` (the
registered RPCs), `code` (gRPC status codes), `state` (job states) and, only on the
per-job gauges, `job_id` of a RUNNING job; those series are removed when the job ends.

Training metrics are derived from the metric points the runner already reports
(one per optimizer step): a step's duration is the difference of consecutive
points' `elapsed_seconds`, its sample count `samples_per_second` times that duration.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.metrics.job_states import CountByState, JobStateCollector

if TYPE_CHECKING:  # for the type checker only: at run time metrics imports nothing of jobs
    from services.jobs.records import JobState, MetricPoint

# RPC latency: unary calls take milliseconds, StreamMetrics lasts as long as a job.
RPC_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
)  # fmt: skip
STEP_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
JOB_GAUGE_LABELS = ("job_id",)
# The terminal JobStates (services/jobs/records.py; tests/test_metrics.py checks they match).
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass
class _JobProgress:
    """The last point counted for a job: θ's version and the job's elapsed seconds."""

    step: int = 0
    elapsed_seconds: float = 0.0


class ServiceMetrics:
    """The service's metric families in one registry (a private one unless given).

    Tests pass a fresh `CollectorRegistry` and read `registry.get_sample_value(...)`.
    Thread-safe: RPC threads and one monitor thread per job call the hooks.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rpc_handled = Counter(
            "bptrain_rpc_handled_total",
            "RPCs completed, by method and final gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "bptrain_rpc_duration_seconds",
            "Time from receiving an RPC to its final status (a stream: to its last message).",
            ["method"],
            buckets=RPC_BUCKETS_S,
            registry=r,
        )
        self.jobs_submitted = Counter(
            "bptrain_jobs_submitted_total", "Jobs accepted by SubmitJob.", registry=r
        )
        self.jobs_finished = Counter(
            "bptrain_jobs_finished_total",
            "Jobs that reached a terminal state, by that state.",
            ["state"],
            registry=r,
        )
        for state in TERMINAL_STATES:
            self.jobs_finished.labels(state)  # present at 0 from the start
        self.training_steps = Counter(
            "bptrain_training_steps_total", "Optimizer steps run, over all jobs.", registry=r
        )
        self.training_samples = Counter(
            "bptrain_training_samples_total",
            "Training rows whose gradients were applied, over all jobs.",
            registry=r,
        )
        self.step_duration = Histogram(
            "bptrain_training_step_duration_seconds",
            "Wall time of one optimizer step as the runner saw it (pull, gradients, update).",
            buckets=STEP_BUCKETS_S,
            registry=r,
        )
        self.ps_updates = Counter(
            "bptrain_ps_updates_total",
            "Parameter-server updates: increments of θ's version, over all jobs.",
            registry=r,
        )
        self.job_loss = Gauge(
            "bptrain_job_loss",
            "Training loss at the latest step of a RUNNING job.",
            JOB_GAUGE_LABELS,
            registry=r,
        )
        self.job_samples_per_second = Gauge(
            "bptrain_job_samples_per_second",
            "Training throughput at the latest step of a RUNNING job.",
            JOB_GAUGE_LABELS,
            registry=r,
        )
        self.job_validation_loss = Gauge(
            "bptrain_job_validation_loss",
            "Validation loss at the latest validation pass of a RUNNING job.",
            JOB_GAUGE_LABELS,
            registry=r,
        )
        self.job_validation_accuracy = Gauge(
            "bptrain_job_validation_accuracy_ratio",
            "Validation accuracy (0..1) at the latest validation pass of a RUNNING job.",
            JOB_GAUGE_LABELS,
            registry=r,
        )
        self.job_staleness = Gauge(
            "bptrain_job_staleness",
            "Mean staleness (θ versions between a gradient's read and its apply) at the latest "
            "step of a RUNNING job; 0 under bsp.",
            JOB_GAUGE_LABELS,
            registry=r,
        )
        self.job_staleness_max = Gauge(
            "bptrain_job_staleness_max",
            "Largest staleness at the latest step of a RUNNING job.",
            JOB_GAUGE_LABELS,
            registry=r,
        )
        self.pushed_bytes = Counter(
            "bptrain_pushed_gradient_bytes_total",
            "Gradient bytes workers sent to parameter servers (after compression), all jobs.",
            registry=r,
        )
        self._per_job = (
            self.job_staleness,
            self.job_staleness_max,
            self.job_loss,
            self.job_samples_per_second,
            self.job_validation_loss,
            self.job_validation_accuracy,
        )
        self._lock = threading.Lock()
        self._progress: dict[str, _JobProgress] = {}
        self._state_collector: JobStateCollector | None = None

    # --- wiring ----------------------------------------------------------------------------

    def track_job_states(self, count_by_state: CountByState) -> None:
        """Export `bptrain_jobs{state}` from `count_by_state()` ({state: count}, e.g.
        `JobStore.count_by_state`), called at scrape time."""
        if self._state_collector is not None:
            self.registry.unregister(self._state_collector)
        self._state_collector = JobStateCollector(count_by_state)
        self.registry.register(self._state_collector)

    # --- hooks -----------------------------------------------------------------------------

    def rpc_completed(self, method: str, code: str, seconds: float) -> None:
        """One RPC ended with status `code` (e.g. "OK", "NOT_FOUND") after `seconds`."""
        self.rpc_handled.labels(method, code).inc()
        self.rpc_duration.labels(method).observe(seconds)

    def job_submitted(self) -> None:
        self.jobs_submitted.inc()

    def points_recorded(self, job_id: str, points: Sequence[MetricPoint]) -> None:
        """A RUNNING job's new metric points (in step order) were stored."""
        if not points:
            return
        with self._lock:
            progress = self._progress.get(job_id)
            if progress is None:
                first = points[0]
                # A job followed from its first step counts from θ version 0; one picked up
                # mid-way (after an API restart) only sets a baseline: the work before it
                # was counted by the previous process, and its duration is unknown here.
                is_from_start = first.step == 1
                progress = self._progress[job_id] = (
                    _JobProgress()
                    if is_from_start
                    else _JobProgress(first.step, first.elapsed_seconds)
                )
            for point in points:
                if point.step <= progress.step:
                    continue  # already counted
                duration = max(point.elapsed_seconds - progress.elapsed_seconds, 0.0)
                self.training_steps.inc()
                self.pushed_bytes.inc(point.bytes_pushed)
                self.ps_updates.inc(point.step - progress.step)
                self.training_samples.inc(round(point.samples_per_second * duration))
                self.step_duration.observe(duration)
                progress.step, progress.elapsed_seconds = point.step, point.elapsed_seconds
            latest = points[-1]
            self.job_loss.labels(job_id).set(latest.loss)
            self.job_samples_per_second.labels(job_id).set(latest.samples_per_second)
            self.job_staleness.labels(job_id).set(latest.staleness_mean)
            self.job_staleness_max.labels(job_id).set(latest.staleness_max)
            validated = [p for p in points if p.validation_loss is not None]
            if validated:
                self.job_validation_loss.labels(job_id).set(validated[-1].validation_loss)
            validated = [p for p in points if p.validation_accuracy is not None]
            if validated:
                self.job_validation_accuracy.labels(job_id).set(validated[-1].validation_accuracy)

    def job_finished(self, job_id: str, state: JobState) -> None:
        """The job reached `state` (terminal): count it and drop its per-job series."""
        self.jobs_finished.labels(state.value).inc()
        with self._lock:
            self._progress.pop(job_id, None)
            for gauge in self._per_job:
                with contextlib.suppress(KeyError):
                    gauge.remove(job_id)
