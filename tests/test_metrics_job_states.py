"""`bptrain_jobs{state}`: counted by the job store (JobStore.count_by_state) at scrape time,
handed to services.metrics as a callable so metrics never imports services.jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.jobs.records import JobRecord, JobState
from services.jobs.store import JobStore
from services.metrics import ServiceMetrics
from services.metrics.service import TERMINAL_STATES
from tests.test_store import SPEC

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics(CollectorRegistry())


def value(metrics: ServiceMetrics, **labels: str) -> float | None:
    return metrics.registry.get_sample_value("bptrain_jobs", labels)


def test_jobs_by_state_are_counted_in_the_store_at_scrape_time(
    metrics: ServiceMetrics, tmp_path: Path
) -> None:
    store = JobStore(tmp_path / "bptrain.db")
    states = [JobState.QUEUED, JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]
    for index, state in enumerate(states):
        store.create(JobRecord(job_id=f"job-{index}", spec=SPEC, created_at=1.0))
        store.update(f"job-{index}", state=state)
    metrics.track_job_states(store.count_by_state)
    assert value(metrics, state="RUNNING") == 2
    assert value(metrics, state="QUEUED") == 1
    assert value(metrics, state="FAILED") == 0
    store.update("job-1", state=JobState.FAILED)  # a later scrape sees the change
    assert value(metrics, state="RUNNING") == 1
    assert value(metrics, state="FAILED") == 1
    store.close()


def test_an_empty_store_counts_zero_jobs_in_every_state(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "bptrain.db")
    assert store.count_by_state() == dict.fromkeys(JobState, 0)
    store.close()


def test_tracking_again_replaces_the_counted_store(metrics: ServiceMetrics) -> None:
    metrics.track_job_states(lambda: {JobState.QUEUED: 3})
    metrics.track_job_states(lambda: {JobState.QUEUED: 5})
    assert value(metrics, state="QUEUED") == 5


def test_the_finished_counters_name_every_terminal_state() -> None:
    # services.metrics spells them out rather than import services.jobs.
    assert set(TERMINAL_STATES) == {state.value for state in JobState if state.is_terminal}


def test_services_metrics_imports_nothing_of_services_jobs() -> None:
    code = (
        "import sys, services.metrics; "
        "print(sorted(m for m in sys.modules if m.startswith('services.jobs')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
