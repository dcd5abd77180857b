"""Recovery that is itself safe: a runner never trains far past what the store recorded,
and replacing actors survives actors killed while they are being created.

- An unpolled runner (its API stalled) holds its loop at the lead's limit, without
  spinning, and goes on when its steps are recorded; on colocated bsp and asp workers
  and on the parameter-server path.
- Actors killed while the runner creates their replacements (PENDING_CREATION): the
  repair is tried again and the job ends exactly as without faults; when every attempt
  is killed, the job fails and says why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray

from bptrain import Client
from bptrain.specfile import spec_from_dict
from bptrain.v1 import training_pb2 as pb
from services.api.convert import spec_from_proto
from services.jobs.cohort_actors import kill_strays
from services.jobs.records import JobState
from services.jobs.runner import RECOVERY_ATTEMPTS, JobRunner
from services.jobs.runner_options import RunnerOptions
from tests.conftest import digits_spec
from tests.processes import worker_actor_of_process
from tests.test_faults import (
    assert_same_weights,
    streamed_steps,
    trained_weights,
    wait_for_step,
)

pytestmark = pytest.mark.slow

NAMESPACE = "bptrain"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# LEAD_S: a held runner trains up to LEAD_S of its steps past the recorded step, and at
# least 32 (MIN_LEAD_STEPS): colocated workers (about 1 ms a step) held at steps 39 to 66
# here, parameter-server tasks (about 7 ms) at 32. steps: over twice that; a runner that
# did not hold would stop only at its last step. Past the hold, steps are recorded a lead
# at a time, about twice a second, so each step more costs: 3000 steps at a 0.5 s lead
# (held at 190 to 530) took 25 to 50 s on two busy cores.
LEAD_S = 0.05


@pytest.mark.parametrize(
    ("mode", "transport", "steps"),
    [({}, "auto", 400), ({"consistency": "asp"}, "auto", 400), ({}, "tasks", 200)],
    ids=["bsp-colocated", "asp-colocated", "bsp-parameter-server"],
)
def test_an_unpolled_runner_holds_at_its_lead_without_spinning_and_goes_on_when_recorded(
    ray_session: None, mode: dict, transport: str, steps: int
) -> None:
    spec = spec_from_proto(spec_from_dict(digits_spec(steps=steps, **mode)))
    runner = (
        ray.remote(JobRunner)
        .options(max_concurrency=4, namespace=NAMESPACE)
        .remote(
            "lead-" + transport + str(len(mode)),
            spec,
            RunnerOptions(transport=transport, max_lead_s=LEAD_S),
        )
    )
    done = runner.run.remote()
    # poll(0) reads without recording anything: the store is "stalled" at step 0.
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 120
    while last <= 0 or time.monotonic() - since < 1.5:  # (start-up may take long on a busy host)
        update = ray.get(runner.poll.remote(0, 0.2))
        step = update.points[-1].step if update.points else 0
        if step != last:
            last, since = step, time.monotonic()
        assert time.monotonic() < deadline, "the runner never held"
    assert update.state is JobState.RUNNING
    assert 0 < last < steps // 2  # held: unbounded, it would be at the end by now
    pids = ray.get(runner.process_ids.remote())
    pids = [*pids["workers"], *pids["servers"], *pids["runner"]]
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(1.0)
    spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
    assert max(spent.values()) < 0.3, f"CPU seconds in 1 s while held: {spent}"

    recorded: list[int] = []
    while True:  # record as the API would: everything goes on, every step once
        update = ray.get(runner.poll.remote(recorded[-1] if recorded else 0, 0.5))
        recorded += [p.step for p in update.points]
        if update.state.is_terminal:
            break
    assert ray.get(done) is JobState.SUCCEEDED, update.reason
    assert recorded == list(range(1, steps + 1))


# --- kills while replacements are created -----------------------------------------------


def named(job_id: str, role: str) -> set[str]:
    prefix = f"{job_id}/{role}-"
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    }


def generation(name: str) -> int:
    # "{job}/worker-1.3-5e0f1a": the 3rd set of actors of the cohort object 5e0f1a
    return int(name.rsplit(".", 1)[1].split("-")[0])


def kill_new_actors(job_id: str, role: str, known: set[str], count: int) -> list[str]:
    """Kill one actor of each of the next `count` generations named `{job_id}/{role}-…`
    the moment it appears (while it is still being created, mostly): `count` repair
    attempts in a row lose an actor. Returns their names."""
    killed: list[str] = []
    newest = max(map(generation, known), default=0)  # none: workers kept from another job
    deadline = time.monotonic() + 120
    while len(killed) < count:
        assert time.monotonic() < deadline, f"only {len(killed)} new {role} actors appeared"
        for name in sorted(named(job_id, role) - known):
            known.add(name)
            if generation(name) <= newest:
                continue
            try:
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            except ValueError:  # gone already
                continue
            killed.append(name)
            newest = generation(name)
            if len(killed) == count:
                break
        time.sleep(0.002)
    return killed


@pytest.fixture(scope="module")
def reference(server: tuple) -> Callable[[int], dict[str, np.ndarray]]:
    """θ after `steps` steps of a job without faults (colocated; each count trained once)."""

    @functools.cache
    def after(steps: int) -> dict[str, np.ndarray]:
        return trained_weights(server, digits_spec(steps=steps, checkpoint_every=25))

    return after


# steps: past the fault at step 60 and its repairs. Colocated workers report in 0.5 s
# batches and train on ahead of the report, so they may be 1,500 steps on when step 60 is
# seen (a 1500-step job had ended its training there: no repair); the parameter-server
# actors' task path reports each step (about 7 ms).
@pytest.mark.parametrize(
    ("changes", "role", "steps"),
    [({}, "worker", 3000), ({"ps_shards": 2}, "ps", 300)],
    ids=["colocated-workers", "parameter-server-actors"],
)
def test_replacements_killed_while_created_are_created_again_and_nothing_changes(
    client: Client,
    reference: Callable[[int], dict[str, np.ndarray]],
    changes: dict,
    role: str,
    steps: int,
) -> None:
    job = client.submit(digits_spec(steps=steps, checkpoint_every=25, **changes))
    running = wait_for_step(client, job.job_id, 60)
    assert running.state == pb.RUNNING, "the job ended before its fault"
    known = named(job.job_id, role)
    if role == "worker":  # by process: workers kept from an earlier job keep its names
        victim = worker_actor_of_process(running.workers[0].pid)
    else:
        victim = ray.get_actor(sorted(known)[0], namespace=NAMESPACE)
    ray.kill(victim, no_restart=True)  # the fault; then the first two repairs' actors
    killed = kill_new_actors(job.job_id, role, known, count=2)
    print(f"fault at step {running.step}; killed while created: {killed}")
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    assert_same_weights(client.weights(job.job_id), reference(steps))


def test_a_repair_killed_every_time_fails_the_job_and_says_so(client: Client) -> None:
    job = client.submit(digits_spec(steps=100_000, checkpoint_every=50))
    running = wait_for_step(client, job.job_id, 30)
    known = named(job.job_id, "worker")
    stop = threading.Event()

    def keep_killing() -> None:
        while not stop.is_set():
            for name in named(job.job_id, "worker") - known:
                known.add(name)
                with contextlib.suppress(ValueError):  # gone already
                    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            time.sleep(0.002)

    killer = threading.Thread(target=keep_killing, daemon=True)
    killer.start()
    try:
        os.kill(running.workers[0].pid, signal.SIGKILL)
        final = job.wait()
    finally:
        stop.set()
        killer.join()
    assert final.state == pb.FAILED
    assert final.reason.startswith(f"recovery failed {RECOVERY_ATTEMPTS} times in a row")
    steps = streamed_steps(client, job.job_id)
    assert steps == list(range(1, len(steps) + 1))  # what was reported is intact


# --- a runner whose run() never arrived --------------------------------------------------


def test_a_runner_left_unstarted_by_a_dead_api_is_started_by_the_next_monitor(
    ray_session: None, tmp_path: Path
) -> None:
    """An API process killed while its runner was still being created never delivered
    `run` to it; the next API process finds the (detached) runner and must start it."""
    from services.jobs.monitor import JobSetup, MonitorCallbacks, RunnerMonitor
    from services.jobs.records import JobRecord
    from services.jobs.store import JobStore

    job_id = "job-never-run"
    spec = spec_from_proto(spec_from_dict(digits_spec(steps=300)))
    store = JobStore(tmp_path / "jobs.db")
    store.create(JobRecord(job_id=job_id, spec=spec, created_at=time.time()))
    store.update(job_id, state=JobState.RUNNING)
    ray.remote(JobRunner).options(
        name=f"{job_id}/runner", namespace=NAMESPACE, lifetime="detached", max_concurrency=4,
        num_cpus=0,
    ).remote(job_id, spec, RunnerOptions(checkpoint_dir=tmp_path / "checkpoints"))  # fmt: skip
    monitor = RunnerMonitor(
        job_id=job_id,
        spec=spec,
        store=store,
        setup=JobSetup(
            weights_path=tmp_path / "weights.npz",
            checkpoint_dir=tmp_path / "checkpoints",
            datasets_dir=tmp_path / "datasets",
            worker_cpus=1.0,
        ),
        callbacks=MonitorCallbacks(on_change=lambda: None),
    )
    monitor.start()
    deadline = time.monotonic() + 120
    while monitor.is_alive and time.monotonic() < deadline:
        time.sleep(0.1)
    record = store.get(job_id)
    assert record.state is JobState.SUCCEEDED, record.reason
    assert [p.step for p in store.metrics_after(job_id, 0)] == list(range(1, 301))


def test_run_called_twice_trains_once(ray_session: None) -> None:
    spec = spec_from_proto(spec_from_dict(digits_spec(steps=200)))
    runner = (
        ray.remote(JobRunner)
        .options(max_concurrency=4)
        .remote("twice", spec, RunnerOptions(max_lead_s=None))
    )
    first, second = runner.run.remote(), runner.run.remote()
    assert ray.get(first) is JobState.SUCCEEDED or ray.get(second) is JobState.SUCCEEDED
    update = ray.get(runner.poll.remote(0, 0.0))
    assert update.state is JobState.SUCCEEDED
    assert [p.step for p in update.points] == list(range(1, 201))


@ray.remote(num_cpus=0)
class _Named:
    def ping(self) -> bool:
        return True


def test_a_new_cohort_kills_what_the_runner_it_replaces_left_and_nothing_else(
    ray_session: None,
) -> None:
    """A runner whose node vanished leaves its actors on other nodes alive (holding their
    CPUs) until Ray declares that node dead; the next cohort of the job kills them when it
    starts: only that job's workers and parameter servers of other incarnations."""
    job = "job-0000strays"
    strays = [f"{job}/worker-0.1-aaaaaa", f"{job}/ps-1.2-aaaaaa"]
    kept = [f"{job}/worker-0.1-bbbbbb", f"{job}/runner", "job-0000others/worker-0.1-aaaaaa"]
    actors = {name: _Named.options(name=name).remote() for name in strays + kept}
    assert all(ray.get([actor.ping.remote() for actor in actors.values()], timeout=60))

    assert sorted(kill_strays(job, "bbbbbb")) == sorted(strays)

    for name in strays:  # ray.kill returns before the kill: a call sent at once may pass
        deadline = time.monotonic() + 60
        with pytest.raises(ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                ray.get(actors[name].ping.remote(), timeout=60)
                time.sleep(0.1)
    assert all(ray.get([actors[name].ping.remote() for name in kept], timeout=60))
    for actor in actors.values():
        ray.kill(actor)
