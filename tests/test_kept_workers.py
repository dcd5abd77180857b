"""Kept workers: a standby runner keeps its last job's colocated workers and the next job
of the same shape renews them instead of starting processes; they are dropped when they
do not fit, when told, after their time, when the job did not succeed, and when another
job may need their CPUs (services/jobs/kept_workers.py, services/jobs/runner_pool.py)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import ray

from bptrain.specfile import spec_from_dict
from services.api.convert import spec_from_proto
from services.jobs.config import JobsConfig
from services.jobs.records import JobState
from services.jobs.runner import JobRunner
from services.jobs.runner_options import RunnerOptions
from services.jobs.runner_pool import RunnerPool, StandbyRunner
from services.jobs.spec import JobSpec
from services.jobs.weights import join_exported
from tests.conftest import digits_spec
from tests.processes import is_alive

pytestmark = pytest.mark.usefixtures("ray_session")

UNPOLLED = RunnerOptions(max_lead_s=None)  # run here: no store to stay close to


def spec(**changes: object) -> JobSpec:
    return spec_from_proto(spec_from_dict(digits_spec(**changes)))


BSP = spec(epochs=2, workers=2)


def wait_dead(pids: list[int], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while any(map(is_alive, pids)):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if is_alive(p)]}"
        time.sleep(0.05)


def run_job(runner: StandbyRunner, job_id: str, job: JobSpec) -> list[int]:
    """Run `job` on the in-process standby `runner`; its workers' process ids."""
    runner.assign(job_id, job, UNPOLLED)
    assert runner.run() is JobState.SUCCEEDED
    return runner.process_ids()["workers"]


def test_the_next_job_of_the_same_shape_renews_the_kept_workers_and_trains_the_same() -> None:
    runner = StandbyRunner()
    first = run_job(runner, "job-a", BSP)
    assert runner.recycle(keep_workers_s=30)
    assert all(map(is_alive, first))  # idle, waiting for the next job
    other = dataclasses.replace(BSP, seed=7)  # another job of the same shape
    assert run_job(runner, "job-b", other) == first  # no new process
    renewed = join_exported(ray.get(runner.final_weights()))
    fresh = JobRunner("job-c", other, UNPOLLED)  # the same job on new workers
    assert fresh.run() is JobState.SUCCEEDED
    _, fresh_theta = join_exported(ray.get(fresh.final_weights()))
    assert renewed[0] == fresh.poll(0, 0.0).total_steps  # exported after the last step
    np.testing.assert_array_equal(renewed[1], fresh_theta)
    assert runner.recycle(keep_workers_s=0)
    wait_dead(first)


@pytest.mark.parametrize(
    "changes",
    [{"consistency": "asp"}, {"workers": 1}],
    ids=["another-worker-class", "fewer-workers"],
)
def test_kept_workers_that_do_not_fit_the_next_job_are_killed(changes: dict) -> None:
    runner = StandbyRunner()
    first = run_job(runner, "job-a", BSP)
    assert runner.recycle(keep_workers_s=30)
    after = run_job(runner, "job-b", dataclasses.replace(BSP, **changes))
    wait_dead([pid for pid in first if pid not in after])
    if "workers" in changes:  # one of the two fits and is renewed
        assert after == first[:1]
    else:
        assert not set(after) & set(first)
    runner.recycle()


def test_kept_workers_are_dropped_after_their_time_and_when_told() -> None:
    runner = StandbyRunner()
    first = run_job(runner, "job-a", BSP)
    assert runner.recycle(keep_workers_s=0.5)
    time.sleep(0.2)
    assert all(map(is_alive, first))
    wait_dead(first)  # half a second on
    second = run_job(runner, "job-b", BSP)
    assert not set(second) & set(first)
    assert runner.recycle(keep_workers_s=30)
    runner.drop_workers()
    wait_dead(second)


def test_a_job_that_did_not_succeed_leaves_no_workers_behind() -> None:
    runner = StandbyRunner()
    runner.assign("job-a", spec(epochs=1000, workers=2), UNPOLLED)
    result: list[JobState] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()))
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.poll(0, 0.1).points:
        assert time.monotonic() < deadline, "the job never made a step"
    pids = runner.process_ids()["workers"]
    runner.cancel("job-a")
    thread.join(timeout=60)
    assert result == [JobState.CANCELLED]
    assert runner.recycle(keep_workers_s=30)
    wait_dead(pids)


def on_standby(actor: ray.actor.ActorHandle, job_id: str, job: JobSpec) -> list[int]:
    ray.get(actor.assign.remote(job_id, job, UNPOLLED))
    assert ray.get(actor.run.remote()) is JobState.SUCCEEDED
    return ray.get(actor.process_ids.remote())["workers"]


def test_the_pool_keeps_workers_only_while_no_other_job_may_need_their_cpus() -> None:
    others = {"running": True}
    pool = RunnerPool(2, keep_workers_s=30, others_running=lambda: others["running"])
    pool.fill()
    try:
        a, b = pool.take(), pool.take()
        pids = on_standby(a.actor, "job-a", BSP)
        assert pool.give_back(a, is_reusable=True)  # another job runs: dropped at once
        wait_dead(pids)
        others["running"] = False
        a = pool.take()
        pids = on_standby(a.actor, "job-b", BSP)
        assert pool.give_back(a, is_reusable=True)  # alone: kept
        assert pool.give_back(b, is_reusable=True)  # the idle line is now b, a
        time.sleep(0.5)
        assert all(map(is_alive, pids))
        assert pool.take() == b  # a job on b: a's workers give way to it
        wait_dead(pids)
    finally:
        pool.close()


def test_bad_keep_times_are_refused() -> None:
    for bad in (-1, 86_401):
        with pytest.raises(ValueError, match="keep_workers_s must be in"):
            JobsConfig(keep_workers_s=bad)
