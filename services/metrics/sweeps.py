"""The sweeps' metrics: `bptrain_sweeps{state}` (asked of the sweep store at scrape time)
and `bptrain_sweep_trials_finished_total{outcome}`. Labels are bounded: the job states,
and the four outcomes of a trial."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.metrics.job_states import CountByState, JobStateCollector

TRIAL_OUTCOMES = ("completed", "stopped", "failed", "cancelled")


class SweepMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.trials_finished = Counter(
            "bptrain_sweep_trials_finished_total",
            "Sweep trials that ended, by outcome: completed (a metric told to the search), "
            "stopped (by the scheduler), failed, cancelled.",
            ["outcome"],
            registry=registry,
        )
        for outcome in TRIAL_OUTCOMES:
            self.trials_finished.labels(outcome=outcome)
        self._collector: JobStateCollector | None = None

    def track_sweep_states(self, count_by_state: CountByState) -> None:
        """Export `bptrain_sweeps{state}` from `count_by_state()` (once per registry)."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = JobStateCollector(
            count_by_state, name="bptrain_sweeps", help="Sweeps in the store, by state."
        )
        self.registry.register(self._collector)

    def trial_ended(self, outcome: str) -> None:
        if outcome not in TRIAL_OUTCOMES:
            raise ValueError(f"unknown trial outcome {outcome!r}")
        self.trials_finished.labels(outcome=outcome).inc()
