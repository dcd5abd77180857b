"""Colocated bsp workers without Ray: threads over real sockets and a shared file."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time

import numpy as np
import pytest

from services.paramserver.collective import PeerLost
from services.paramserver.colocated import ColocatedWorker, ServerConfig, ShardState
from services.paramserver.colocated_state import thread_runqueue_seconds
from services.paramserver.optimizers import LRSchedule, OptimizerConfig
from tests.test_collective import run_all
from worker.configs import LocalBatches, ModelConfig, WorkerConfig
from worker.gradient_worker import GradientWorker

SIZES = [12, 10, 3]
ACTIVATIONS = ["tanh", "identity"]
ETA = 0.2
BATCH = 5  # per worker; 24 rows per shard: the epoch's last batch is short (4)


def data(workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(24 * workers, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], len(X))
    return [(X[i * 24 : (i + 1) * 24], y[i * 24 : (i + 1) * 24]) for i in range(workers)]


def worker_args(i: int) -> WorkerConfig:
    model = ModelConfig(SIZES, ACTIVATIONS, "softmax_cross_entropy")
    return WorkerConfig(model, LocalBatches(BATCH, seed=3, worker_index=i))


SERVER = ServerConfig(
    optimizer=OptimizerConfig(kind="momentum", learning_rate=ETA, momentum=0.9),
    schedule=LRSchedule(),
    activations=tuple(ACTIVATIONS),
    seed=3,
)


def cohort(workers: int, *, tcp: bool = False, resume: list | None = None, theta=None):
    shards = data(workers)
    members = [
        ColocatedWorker(
            workers=workers,
            server=SERVER,
            worker=worker_args(i),
            X=shards[i][0],
            y=shards[i][1],
            resume=resume[i] if resume else None,
            resume_theta=theta,
        )
        for i in range(workers)
    ]
    endpoints = [m.endpoint() for m in members]
    if tcp:  # as if every worker ran on a node of its own
        endpoints = [dataclasses.replace(e, node_id=f"node-{e.index}") for e in endpoints]
    transports = run_all([lambda m=m: m.join(endpoints, f"test-{id(members)}") for m in members])
    return members, transports


def train(members, stop: int, every=(4,), total: int = 12) -> None:
    run_all([lambda m=m: m.train(stop, every, total) for m in members])


def reference_theta(workers: int, steps: int) -> np.ndarray:
    """The parameter-server way: every worker's gradient at θ, weighted by its rows,
    one momentum update of the whole θ per step."""
    shards = data(workers)
    engines = [GradientWorker(worker_args(i), *shards[i]) for i in range(workers)]
    layout = engines[0].model.layout
    theta = layout.init_theta(ACTIVATIONS, 3)
    velocity = np.zeros_like(theta)
    for step in range(steps):
        results = [e.compute_gradients(theta, *divmod(step, e.steps_per_epoch)) for e in engines]
        n = sum(r.samples for r in results)
        g = sum((r.samples / n) * r.gradient for r in results)
        velocity = 0.9 * velocity + g
        theta = theta - ETA * velocity
    return theta


@pytest.mark.parametrize(
    ("workers", "tcp"), [(1, False), (2, False), (3, False), (2, True), (3, True)]
)
def test_colocated_bsp_equals_the_parameter_server_update(workers: int, tcp: bool) -> None:
    members, transports = cohort(workers, tcp=tcp)
    assert set(transports) == {"local" if workers == 1 else ("tcp" if tcp else "shm")}

    train(members, 12)

    expected = reference_theta(workers, 12)
    for m in members:  # every worker holds the whole θ after the all-gather
        np.testing.assert_allclose(m.theta, expected, rtol=1e-5, atol=1e-6)


def test_every_step_is_drained_once_with_snapshots_where_asked() -> None:
    members, _ = cohort(2)
    train(members, 6)
    first = [m.drain() for m in members]
    train(members, 12)
    second = [m.drain() for m in members]

    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert [s.version for s in a.stats + b.stats] == list(range(1, 13))
        assert all(s.worker == i for s in a.stats + b.stats)
        assert [s.samples for s in a.stats + b.stats][:5] == [10, 10, 10, 10, 8]  # both shards
        assert [s.step for s in a.snapshots + b.snapshots] == [4, 8, 12]  # every 4, and the last
        assert all(s.shard == i for s in a.snapshots + b.snapshots)
    assert [m.drain().stats for m in members] == [[], []]


def test_a_run_resumed_from_shard_states_ends_where_one_run_ends() -> None:
    whole, _ = cohort(2)
    train(whole, 12)
    interrupted, _ = cohort(2)
    train(interrupted, 8)
    states = [m.shard_state() for m in interrupted]
    theta = np.concatenate([s.theta for s in states])

    resumed, _ = cohort(2, resume=states, theta=theta)
    assert [m.step for m in resumed] == [8, 8]
    train(resumed, 12)

    np.testing.assert_array_equal(resumed[0].theta, whole[0].theta)


def test_a_lost_peer_stops_the_others_with_peer_lost() -> None:
    members, _ = cohort(2)
    members[1].close()
    with pytest.raises(PeerLost):
        members[0].train(3, (), 3)


def test_the_export_between_runs_is_the_current_step_and_theta() -> None:
    members, _ = cohort(2)
    train(members, 5)
    step, theta = members[0].export()
    assert step == 5
    np.testing.assert_array_equal(theta, members[1].theta)


def test_a_shard_state_that_does_not_fit_is_refused() -> None:
    wrong = ShardState(step=3, theta=np.zeros(7, np.float32), optimizer_step=3, buffers={})
    with pytest.raises(ValueError, match="does not fit"):
        ColocatedWorker(
            workers=1,
            server=SERVER,
            worker=worker_args(0),
            X=data(1)[0][0],
            y=data(1)[0][1],
            resume=wrong,
        )


def test_profiles_split_a_step_into_its_phases() -> None:
    members, _ = cohort(2)
    train(members, 6)
    profile = members[0].profile()
    assert profile["steps"] == 6
    assert profile["compute_s"] > 0 and profile["update_s"] > 0
    assert profile["waiting_s"] >= 0 and profile["communication_s"] >= 0
    if sys.platform == "linux":  # the step loop's wait for a CPU, from its schedstat
        assert profile["preempted_s"] is not None and profile["preempted_s"] >= 0


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/thread-self/schedstat is Linux's")
def test_runqueue_seconds_count_the_time_a_thread_waits_for_its_cpu() -> None:
    """This thread and a busy process on one CPU: this thread is ready to run for the
    whole window but holds the CPU about half of it, and the other half is counted."""
    cpu = min(os.sched_getaffinity(0))
    allowed = os.sched_getaffinity(0)
    rival = multiprocessing.get_context("fork").Process(target=_spin_on, args=(cpu, 5.0))
    os.sched_setaffinity(0, {cpu})
    try:
        rival.start()
        time.sleep(0.2)  # the rival runs
        before, wall = thread_runqueue_seconds(), time.perf_counter()
        while time.perf_counter() - wall < 0.4:
            pass  # ready to run all along
        waited = thread_runqueue_seconds() - before
    finally:
        rival.kill()
        rival.join()
        os.sched_setaffinity(0, allowed)
    assert 0.05 < waited < 0.6  # at most the window and the slice that ends it


def _spin_on(cpu: int, seconds: float) -> None:
    os.sched_setaffinity(0, {cpu})
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_runqueue_seconds_is_none_where_the_kernel_does_not_say(monkeypatch) -> None:
    def missing(*args, **kwargs):
        raise FileNotFoundError("/proc/thread-self/schedstat")

    monkeypatch.setattr("builtins.open", missing)
    assert thread_runqueue_seconds() is None


@pytest.mark.parametrize(
    ("changes", "colocated"),
    [
        ({}, True),  # bsp, one parameter-server shard: the default
        ({"consistency": "asp"}, True),
        ({"consistency": "ssp", "staleness": 1}, True),
        ({"ps_shards": 2}, False),  # asked for parameter-server actors
        ({"compression": "fp16"}, False),  # compressing only pays across a network
        ({"optimizer": {"kind": "sgd", "learning_rate": 0.1, "clip_norm": 1.0}}, False),
        (
            {"optimizer": {"kind": "sgd", "learning_rate": 0.1, "clip_norm": 1.0}, "workers": 1},
            True,
        ),
    ],
)
def test_the_service_picks_colocated_shards_unless_the_spec_needs_actors(
    changes: dict, colocated: bool
) -> None:
    from bptrain.specfile import spec_from_dict
    from services.api.convert import spec_from_proto
    from services.jobs.colocated_cohort import is_colocated
    from tests.conftest import digits_spec

    assert is_colocated(spec_from_proto(spec_from_dict(digits_spec(**changes)))) is colocated


def test_a_runner_refuses_a_transport_it_cannot_use() -> None:
    from bptrain.specfile import spec_from_dict
    from services.api.convert import spec_from_proto
    from services.jobs.runner import JobRunner
    from services.jobs.runner_options import RunnerOptions
    from tests.conftest import digits_spec

    sharded = spec_from_proto(spec_from_dict(digits_spec(ps_shards=2)))
    with pytest.raises(ValueError, match="cannot run on colocated workers"):
        JobRunner("sharded", sharded, RunnerOptions(transport="colocated"))
    with pytest.raises(ValueError, match="transport must be one of"):
        JobRunner("unknown", sharded, RunnerOptions(transport="pigeons"))


def test_no_room_in_shared_memory_falls_back_to_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", full)  # as a container's 64 MB /dev/shm
    members, transports = cohort(2)
    assert transports == ["tcp", "tcp"]

    train(members, 12)

    np.testing.assert_allclose(members[0].theta, reference_theta(2, 12), rtol=1e-5, atol=1e-6)
