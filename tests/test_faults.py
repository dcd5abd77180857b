"""Faults survived: real worker processes killed, the parameter server killed, divergence,
time limits. BSP is deterministic, so a job that recovers must end with exactly the θ of
the same job run without faults."""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest
import ray

from bptrain import Client
from bptrain.v1 import training_pb2 as pb
from services.jobs.monitor import runner_actor_name
from tests.conftest import digits_spec
from tests.processes import worker_actor_of_process

pytestmark = pytest.mark.slow

# Long enough that kills land mid-run: a digits step takes about a millisecond on
# colocated workers and their steps are reported in 0.5 s batches, so six epochs (138
# steps) end before a test can see step 30; the workers train on ahead of the report (a
# 1500-step job had ended its training by the time its step 60 was seen), and a test's
# second kill comes some thousand steps after its first.
LONG_EPOCHS = 150


def wait_for_step(client: Client, job_id: str, step: int, timeout_s: float = 120) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.step >= step or job.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED):
            return job
        time.sleep(0.02)
    raise AssertionError(f"{job_id} did not reach step {step}")


def streamed_steps(client: Client, job_id: str) -> list[int]:
    return [p.step for p in client.metrics(job_id)]


def ps_actor(job: pb.Job, shard: int = 0) -> ray.actor.ActorHandle:
    """The actor holding θ's shard `shard` of a running job: a parameter-server actor, or
    for a job on colocated workers the worker that holds that shard with its optimizer
    state."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    servers = [n for n in names if n.startswith(f"{job.job_id}/ps-{shard}.")]
    if servers:
        return ray.get_actor(servers[0], namespace="bptrain")
    return worker_actor_of_process(job.workers[shard].pid)


def trained_weights(server: tuple, spec: dict) -> dict[str, np.ndarray]:
    """θ of a fault-free job of `spec` on the module's server."""
    with Client(f"127.0.0.1:{server[0].port}") as client:
        job = client.submit(spec)
        assert job.wait().state == pb.SUCCEEDED
        return client.weights(job.job_id)


@pytest.fixture(scope="module")
def reference(server: tuple) -> Callable[..., dict[str, np.ndarray]]:
    """θ of the fault-free run every recovered run must equal: `reference(epochs)`,
    LONG_EPOCHS unless given (each length trained once)."""

    @functools.cache
    def after(epochs: int = LONG_EPOCHS) -> dict[str, np.ndarray]:
        return trained_weights(server, digits_spec(epochs=epochs, checkpoint_every=10))

    return after


def assert_same_weights(weights: dict, reference: dict) -> None:
    for name in ("W1", "b1", "W2", "b2"):
        np.testing.assert_allclose(weights[name], reference[name], rtol=0, atol=1e-6)


def test_a_killed_worker_is_replaced_and_the_job_ends_as_without_faults(
    client: Client, reference: Callable[..., dict]
) -> None:
    job = client.submit(digits_spec(epochs=LONG_EPOCHS, checkpoint_every=10))
    running = wait_for_step(client, job.job_id, 30)
    assert running.state == pb.RUNNING, "the job ended before the kill"
    victim = running.workers[1]
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    replaced = wait_for_step(client, job.job_id, running.step + 5)
    print(
        f"worker replaced and 5 more steps done {time.monotonic() - killed_at:.2f} s after the kill"
    )
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert final.workers[1].pid != victim.pid  # a new process took the shard
    assert replaced.step > running.step
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    assert_same_weights(client.weights(job.job_id), reference())


def test_a_killed_parameter_server_is_restored_from_its_checkpoint(
    client: Client, reference: Callable[..., dict]
) -> None:
    job = client.submit(digits_spec(epochs=LONG_EPOCHS, checkpoint_every=10))
    running = wait_for_step(client, job.job_id, 45)
    assert running.state == pb.RUNNING, "the job ended before the kill"
    killed_at = time.monotonic()
    ray.kill(ps_actor(running), no_restart=True)
    wait_for_step(client, job.job_id, running.step + 10)
    print(f"parameter server restored, 10 steps on, {time.monotonic() - killed_at:.2f} s after")
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    assert_same_weights(client.weights(job.job_id), reference())


def test_a_killed_parameter_server_shard_restores_every_shard_and_theta_is_unchanged(
    client: Client, reference: Callable[..., dict]
) -> None:
    # 20 epochs, 400 steps past the kill at step 45: the 2-shard task path reports each
    # step (about 7 ms).
    job = client.submit(digits_spec(epochs=20, checkpoint_every=10, ps_shards=2))
    running = wait_for_step(client, job.job_id, 45)
    assert running.state == pb.RUNNING, "the job ended before the kill"
    ray.kill(ps_actor(running, shard=1), no_restart=True)
    wait_for_step(client, job.job_id, running.step + 10)
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    assert_same_weights(client.weights(job.job_id), reference(20))  # the 1-shard run's θ


@pytest.mark.parametrize("mode", [{"consistency": "asp"}, {"consistency": "ssp", "staleness": 1}])
def test_an_async_job_survives_a_killed_worker_and_a_killed_parameter_server(
    client: Client, mode: dict
) -> None:
    job = client.submit(digits_spec(epochs=LONG_EPOCHS, checkpoint_every=10, **mode))
    running = wait_for_step(client, job.job_id, 30)
    victim = running.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    running = wait_for_step(client, job.job_id, running.step + 10)
    deadline = time.monotonic() + 30
    while running.workers[0].pid == victim.pid:  # the replacement's placement not stored yet
        assert time.monotonic() < deadline, "the killed worker's placement was never replaced"
        time.sleep(0.05)
        running = client.get(job.job_id)
    ray.kill(ps_actor(running), no_restart=True)
    wait_for_step(client, job.job_id, running.step + 10)
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert final.workers[0].pid != victim.pid
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    assert client.weights(job.job_id)["W1"].shape == (64, 64)


def test_a_killed_runner_is_replaced_and_resumes_from_a_checkpoint(
    client: Client, reference: Callable[..., dict], server: tuple
) -> None:
    job = client.submit(digits_spec(epochs=LONG_EPOCHS, checkpoint_every=10))
    running = wait_for_step(client, job.job_id, 35)
    assert running.state == pb.RUNNING, "the job ended before the kill"
    killed_at = time.monotonic()
    runner = runner_actor_name(server[1].store.get(job.job_id))
    ray.kill(ray.get_actor(runner, namespace="bptrain"), no_restart=True)
    wait_for_step(client, job.job_id, running.step + 10)
    print(f"runner replaced, 10 steps on, {time.monotonic() - killed_at:.2f} s after the kill")
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    assert_same_weights(client.weights(job.job_id), reference())


# Slow enough steps (a wide network) that a kill lands between the metric's best and the
# end of its patience; validation accuracy on digits stops improving early.
PATIENT_SPEC = digits_spec(
    layers=[{"units": 512, "activation": "relu"}, {"units": 10, "activation": "identity"}],
    epochs=200,
    eval_every=10,
    checkpoint_every=10,
    stop_when={"metric": "validation_accuracy", "patience_evaluations": 30},
)


def test_a_replaced_runner_stops_where_the_lost_one_would_have(
    client: Client, server: tuple
) -> None:
    reference = client.submit(PATIENT_SPEC).wait()
    assert reference.state == pb.SUCCEEDED, reference.reason
    said = re.fullmatch(r".*\(best [\d.]+ at step (\d+)\); stopped at step (\d+)", reference.reason)
    assert said, reference.reason
    best, stop = map(int, said.groups())
    job = client.submit(PATIENT_SPEC)
    running = wait_for_step(client, job.job_id, best + (stop - best) // 3)
    assert running.state == pb.RUNNING, "the job ended before the kill"
    runner = runner_actor_name(server[1].store.get(job.job_id))
    ray.kill(ray.get_actor(runner, namespace="bptrain"), no_restart=True)
    print(f"best at {best}, stop at {stop}; runner killed at step {running.step}")
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert final.reason == reference.reason  # patience went on from the stored evaluations
    assert final.step == stop
    assert streamed_steps(client, job.job_id) == list(range(1, stop + 1))
    assert_same_weights(client.weights(job.job_id), client.weights(reference.job_id))


KILLS = 10


def test_chaos_ten_worker_kills_and_the_job_still_succeeds(client: Client, server: tuple) -> None:
    cpus = ray.cluster_resources().get("CPU", 0)
    # Long enough to outlast its kills: a kill round (a restart, then the next 0.5 s batch
    # of reported steps) moves the job on by a few hundred steps; with twenty kills the 20th
    # came at step 3268 to 9344 after 10 to 53 s (the more, the quieter the host), so 12,000
    # steps leave room for ten; past the last kill, each step only adds time. (`make chaos`,
    # in CI too, kills workers, runners, shards and API servers 100 times.)
    job = client.submit(digits_spec(steps=12_000, checkpoint_every=50))
    wait_for_step(client, job.job_id, 1)
    kills, rng = 0, random.Random(0)
    started = time.monotonic()
    while kills < KILLS:
        current = client.get(job.job_id)
        assert current.state == pb.RUNNING, f"ended after {kills} kills: {current.reason}"
        pid = rng.choice(current.workers).pid
        try:
            os.kill(pid, signal.SIGKILL)
            kills += 1
        except ProcessLookupError:
            pass  # already replaced: pick again
        wait_for_step(client, job.job_id, client.get(job.job_id).step + 3)
    at = client.get(job.job_id).step
    print(f"{KILLS} kills survived in {time.monotonic() - started:.1f} s, at step {at}")
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert streamed_steps(client, job.job_id) == list(range(1, final.total_steps + 1))
    server[1].runners.drop_workers()  # the workers a standby keeps for the next job
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus  # no leaked actor holds a CPU


def test_a_diverging_job_fails_with_the_step_in_its_reason(client: Client) -> None:
    spec = digits_spec(optimizer={"kind": "sgd", "learning_rate": 1e6}, epochs=100)
    final = client.submit(spec).wait()
    assert final.state == pb.FAILED
    assert final.reason.startswith("diverged at step ")
    step = int(final.reason.split()[3])
    assert step <= 20


def test_a_job_past_its_time_limit_fails_and_keeps_its_checkpoint(client: Client) -> None:
    # 1 s: the least a spec may give; a checkpoint every 5 steps (no minimum interval then)
    final = client.submit(digits_spec(epochs=5000, max_seconds=1, checkpoint_every=5)).wait()
    assert final.state == pb.FAILED
    assert final.reason.startswith("time limit of 1 s reached at step ")
    weights = client.weights(final.job_id, latest=True)  # the last checkpoint
    assert weights["W1"].shape == (64, 64)
