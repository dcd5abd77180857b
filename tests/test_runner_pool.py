"""Standby runners: a job starts on a booted runner, the pool refills, strays and dead
standbys are handled (services/jobs/runner_pool.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from bptrain.specfile import spec_from_dict
from services.api.convert import spec_from_proto
from services.cluster import NAMESPACE
from services.jobs.manager import JobManager, JobsConfig
from services.jobs.records import JobState
from services.jobs.runner_options import RunnerOptions
from services.jobs.runner_pool import PREFIX, RunnerPool, StandbyRunner
from services.tenancy import LOCAL
from tests.conftest import digits_spec


def standby_names() -> set[str]:
    return {name for name in ray.util.list_named_actors() if name.startswith(PREFIX)}


def wait_for_standbys(count: int, timeout_s: float = 20) -> set[str]:
    """The standby names once there are `count` of them (killed ones go asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while len(names := standby_names()) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(names) == count, names
    return names


def wait_until_finished(manager: JobManager, job_id: str, timeout_s: float = 120) -> JobState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = manager.get(job_id, principal=LOCAL).state
        if state.is_terminal:
            return state
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


@pytest.fixture
def manager(ray_session: None, tmp_path: Path) -> Iterator[JobManager]:
    manager = JobManager(JobsConfig(storage=tmp_path, standby_runners=1))
    wait_for_standbys(1)  # the manager's (another module's server has closed its own)
    yield manager
    manager.shutdown()


def test_jobs_one_after_another_run_on_one_recycled_standby(manager: JobManager) -> None:
    (name,) = standby_names()  # booted when the manager started
    for epochs in (2, 3):
        job = manager.submit(
            spec_from_proto(spec_from_dict(digits_spec(epochs=epochs))), principal=LOCAL
        )
        assert wait_until_finished(manager, job.job_id) is JobState.SUCCEEDED
        record = manager.get(job.job_id, principal=LOCAL)
        assert record.runner == name  # the waiting standby, the same process both times
        assert record.step == record.total_steps > 0
        assert manager.weights_path(job.job_id).exists()
    assert wait_for_standbys(1) == {name}  # back in the pool; none other booted


def test_a_standby_lost_with_its_job_is_replaced_and_the_job_goes_on(
    manager: JobManager,
) -> None:
    (name,) = standby_names()
    # 150 epochs (3,450 steps, retrained from step 0: no checkpoints): the colocated
    # workers train on ahead of their 0.5 s reports, up to 1,500 steps by step 20's.
    job = manager.submit(spec_from_proto(spec_from_dict(digits_spec(epochs=150))), principal=LOCAL)
    deadline = time.monotonic() + 60
    while (running := manager.get(job.job_id, principal=LOCAL)).step < 20:
        assert time.monotonic() < deadline, f"the job never reached step 20: {running}"
        time.sleep(0.05)
    assert running.state is JobState.RUNNING, "the job ended before its standby was killed"
    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    assert wait_until_finished(manager, job.job_id) is JobState.SUCCEEDED
    record = manager.get(job.job_id, principal=LOCAL)
    assert record.runner not in ("", name)  # a new standby took over the job
    assert wait_for_standbys(1) == {record.runner}  # and came back when it ended


def test_a_standby_killed_before_its_job_gives_way_to_a_fresh_runner(
    manager: JobManager,
) -> None:
    (name,) = standby_names()
    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    job = manager.submit(spec_from_proto(spec_from_dict(digits_spec(epochs=2))), principal=LOCAL)
    assert wait_until_finished(manager, job.job_id) is JobState.SUCCEEDED
    assert manager.get(job.job_id, principal=LOCAL).runner == ""  # ran on "{job_id}/runner"


def test_strays_are_removed_and_idle_and_used_standbys_kept(ray_session: None) -> None:
    wait_for_standbys(0)  # an earlier test's manager closed its pool
    pool = RunnerPool(1)
    pool.fill()
    stray = ray.remote(StandbyRunner).options(name=PREFIX + "stray", lifetime="detached").remote()
    used = ray.remote(StandbyRunner).options(name=PREFIX + "used", lifetime="detached").remote()
    ray.get([stray.ready.remote(), used.ready.remote()])
    try:
        assert pool.remove_strays(in_use={PREFIX + "used"}) == [PREFIX + "stray"]
        names = standby_names()
        assert PREFIX + "stray" not in names and PREFIX + "used" in names
        assert len(names) == 2  # the used one and the pool's idle one
    finally:
        ray.kill(used, no_restart=True)
        pool.close()
    wait_for_standbys(0)  # close kills the idle standbys
    assert pool.take() is None  # and starts no more


def test_a_standby_runs_one_job_at_a_time_and_answers_only_for_it(ray_session: None) -> None:
    spec = spec_from_proto(spec_from_dict(digits_spec(epochs=1)))
    runner = StandbyRunner()
    runner.assign("job-a", spec, RunnerOptions(max_lead_s=None))
    with pytest.raises(RuntimeError, match="already runs job job-a"):
        runner.assign("job-b", spec)
    runner.cancel("job-b")  # a late cancel meant for an earlier job: ignored
    assert not runner._cancelled.is_set()
    with pytest.raises(LookupError, match="does not run job job-b"):
        runner.latest_weights("job-b")  # never another job's θ
    assert not runner.recycle(timeout_s=0.01)  # its job has not run yet: kept
    assert runner.run() is JobState.SUCCEEDED
    assert runner.recycle()  # forgets job-a ...
    assert not hasattr(runner, "job_id") and not hasattr(runner, "_cohort")
    runner.assign("job-b", spec, RunnerOptions(max_lead_s=None))  # ... and takes the next
    assert runner.run() is JobState.SUCCEEDED


def test_an_empty_pool_gives_nothing_and_bad_sizes_are_refused() -> None:
    assert RunnerPool(0).take() is None
    with pytest.raises(ValueError, match="size must be >= 0"):
        RunnerPool(-1)
    for bad in (-1, 9):
        with pytest.raises(ValueError, match="standby_runners must be in"):
            JobsConfig(standby_runners=bad)
