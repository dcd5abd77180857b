"""The compose cluster for real: a job over the published gRPC port, across containers.

Run by `make cluster-test` (deploy/cluster/cluster.py test), which builds the images, brings
up ray-head, two ray-workers, the api and prometheus, waits for their health checks, runs
this module against that compose project and tears it down. Outside it (no
BPTRAIN_CLUSTER_PROJECT) the module is skipped; `make test` deselects it (`-m cluster`).

Faults are real: a worker container killed (`docker kill`) or crashed (its init process
SIGKILLed from the host, as an OOM kill would), the api container restarted. Each prints
its recovery time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("BPTRAIN_CLUSTER_PROJECT")
API_UID = 10001  # the Dockerfile's bptrain user
if PROJECT is None:
    pytest.skip("run by `make cluster-test` (a compose cluster)", allow_module_level=True)


def cluster_driver():
    """deploy/cluster/cluster.py, the driver that brought the cluster up (not a package)."""
    path = ROOT / "deploy" / "cluster" / "cluster.py"
    spec = importlib.util.spec_from_file_location("cluster_driver", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


DRIVER = cluster_driver()


@dataclass(frozen=True)
class ComposeCluster:
    project: str
    env: dict[str, str]  # .cluster/env: secrets and published ports

    def compose(self, *args: str) -> str:
        return DRIVER.Cluster(self.project).compose(*args)

    def containers(self, service: str) -> list[str]:
        """Full ids of the service's running containers, in a stable order."""
        return sorted(self.compose("ps", "--quiet", service).split())

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command).strip()

    def client(self, token: str | None = None) -> Client:
        token = self.env["BPTRAIN_TOKEN"] if token is None else token
        return Client(f"127.0.0.1:{self.env['BPTRAIN_API_PORT']}", token=token, timeout_s=60)

    def prometheus(self, query: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.env['PROMETHEUS_PORT']}/api/v1/query?"
        url += urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def ray_alive_nodes(self) -> int:
        script = "import ray; ray.init(address='auto'); print(sum(n['Alive'] for n in ray.nodes()))"
        return int(self.exec("ray-head", "python", "-c", script).splitlines()[-1])


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def state_of(container: str) -> tuple[str, int]:
    shown = docker("inspect", "-f", "{{.State.Status}} {{.RestartCount}}", container)
    status, restarts = shown.split()
    return status, int(restarts)


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 120.0) -> float:
    """Seconds until `condition()` held; AssertionError naming `what` after the timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def cluster() -> ComposeCluster:
    return ComposeCluster(PROJECT, DRIVER.read_env())


@dataclass
class Followed:
    """A job followed over StreamMetrics to its end: steps in arrival order, when each came."""

    job: pb.Job
    steps: list[int]
    arrivals: list[float]
    reconnects: list[tuple[str, int]]

    def pause_after(self, moment: float) -> float:
        """The longest wait between two points that arrived after `moment`: how long
        training (or the stream) stopped for the fault."""
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False) if b > moment]
        return max(gaps)


def train(
    cluster: ComposeCluster, spec: dict, fault: Callable[[Client, str], None] | None = None
) -> Followed:
    """Submit `spec`, follow its stream to the end (resuming after the last step seen when
    the stream drops), and call `fault(client, job_id)` once it has trained 2000 steps."""
    steps, arrivals, reconnects = [], [], []
    with cluster.client() as client:
        job_id = client.submit(spec).job_id
        final = None
        for event in client.events(job_id, on_reconnect=lambda s, n: reconnects.append((s, n))):
            if event.HasField("point"):
                steps.append(event.point.step)
                arrivals.append(time.monotonic())
                if fault is not None and event.point.step >= 2000:
                    fault(client, job_id)
                    fault = None
            if event.HasField("final"):
                final = event.final
    assert final is not None
    return Followed(final, steps, arrivals, reconnects)


def long_job(steps: int = 30_000) -> dict:
    return digits_spec(name="cluster-long", steps=steps, epochs=None, workers=2)


def worker_container(cluster: ComposeCluster, client: Client, job_id: str) -> str:
    """A ray-worker container that runs one of the job's GradientWorkers."""
    hostnames = {w.hostname for w in client.get(job_id).workers}
    hosting = [c for c in cluster.containers("ray-worker") if c[:12] in hostnames]
    assert hosting, (hostnames, cluster.containers("ray-worker"))
    return hosting[0]


def test_a_two_worker_job_trains_on_both_worker_containers_and_its_weights_load(
    cluster: ComposeCluster,
) -> None:
    followed = train(cluster, digits_spec(name="cluster-job", steps=12_000, epochs=None))

    assert followed.job.state == pb.SUCCEEDED, followed.job.reason
    assert followed.steps == list(range(1, 12_001))
    # Each GradientWorker ran in its own ray-worker container (host name = container id).
    hostnames = sorted(w.hostname for w in followed.job.workers)
    containers = cluster.containers("ray-worker")
    assert len(containers) == 2
    assert hostnames == sorted(c[:12] for c in containers)
    assert len({w.node_id for w in followed.job.workers}) == 2
    # The weights come back over the published port and predict digits.
    with cluster.client() as client:
        model = client.model(followed.job.job_id)
        arrays = client.weights(followed.job.job_id)
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    accuracy = float(np.mean(model.predict_classes(X / 16.0) == y))
    assert arrays["W1"].shape == (64, 64) and arrays["W2"].shape == (64, 10)
    assert accuracy > 0.9, accuracy
    # Prometheus (its own container) scraped the running job's loss from api:9464.
    series = f'bptrain_job_loss{{job_id="{followed.job.job_id}"}}'
    scraped = cluster.prometheus(f"count_over_time({series}[1h])")
    assert scraped and float(scraped[0]["value"][1]) >= 1, scraped
    print(
        f"\njob {followed.job.job_id}: 12000 steps on {hostnames}, accuracy {accuracy:.3f}, "
        f"{scraped[0]['value'][1]} loss samples in Prometheus"
    )


def test_the_api_runs_as_a_user_without_root_and_writes_its_volume(cluster: ComposeCluster) -> None:
    assert cluster.exec("api", "id", "-u") == str(API_UID)
    owner = cluster.exec("api", "stat", "-c", "%u", "/data/bptrain/bptrain.db")
    assert owner == str(API_UID)
    # The store is the one the API writes: a job submitted now is in it.
    with cluster.client() as client:
        job = client.submit(digits_spec(name="volume-check", steps=5, epochs=None, workers=1))
        client.wait(job.job_id)
    script = (
        "import sqlite3; c = sqlite3.connect('file:/data/bptrain/bptrain.db?mode=ro', uri=True);"
        f"print(c.execute(\"select count(*) from jobs where job_id='{job.job_id}'\").fetchone()[0])"
    )
    assert cluster.exec("api", "python", "-c", script) == "1"


def test_a_wrong_token_is_unauthenticated(cluster: ComposeCluster) -> None:
    intruder = cluster.client(token="not-the-token-not-the-token")
    with intruder, pytest.raises(BptrainError) as caught:
        intruder.get("job-0123456789ab")
    assert caught.value.code == "UNAUTHENTICATED"


def test_a_killed_worker_container_is_replaced_and_the_job_succeeds_with_every_step_once(
    cluster: ComposeCluster,
) -> None:
    victims: list[str] = []
    killed_at: list[float] = []

    def kill(client: Client, job_id: str) -> None:
        victims.append(worker_container(cluster, client, job_id))
        docker("kill", victims[0])
        killed_at.append(time.monotonic())

    followed = train(cluster, long_job(), fault=kill)

    assert followed.job.state == pb.SUCCEEDED, followed.job.reason
    assert followed.steps == list(range(1, 30_001)), "every step streamed exactly once"
    # `docker kill` is a manual stop: no restart policy brings it back; the job's lost worker
    # was replaced on the other worker container.
    assert state_of(victims[0])[0] == "exited"
    survivor = next(c for c in cluster.containers("ray-worker") if c != victims[0])
    assert {w.hostname for w in followed.job.workers} == {survivor[:12]}
    pause = followed.pause_after(killed_at[0])
    print(f"\nworker container killed at step 2000: the stream paused {pause:.1f} s at most")
    docker("start", victims[0])  # back for the tests after this one
    wait_for("the restarted worker node in Ray", lambda: cluster.ray_alive_nodes() == 4)


def test_a_crashed_worker_container_is_restarted_by_its_policy_and_the_job_succeeds(
    cluster: ComposeCluster,
) -> None:
    victims: list[str] = []
    restarts_before: list[int] = []
    crashed_at: list[float] = []

    def crash(client: Client, job_id: str) -> None:
        victim = worker_container(cluster, client, job_id)
        victims.append(victim)
        restarts_before.append(state_of(victim)[1])
        pid = docker("inspect", "-f", "{{.State.Pid}}", victim).strip()
        subprocess.run(["kill", "-KILL", pid], check=True)  # as the kernel's OOM killer would
        crashed_at.append(time.monotonic())

    followed = train(cluster, long_job(), fault=crash)

    assert followed.job.state == pb.SUCCEEDED, followed.job.reason
    assert followed.steps == list(range(1, 30_001)), "every step streamed exactly once"
    pause = followed.pause_after(crashed_at[0])
    victim, restarted = victims[0], ("running", restarts_before[0] + 1)
    back = wait_for("the container restarted", lambda: state_of(victim) == restarted)
    rejoined = wait_for("its Ray node back", lambda: cluster.ray_alive_nodes() == 4)
    print(
        f"\nworker container crashed at step 2000: the stream paused {pause:.1f} s at most; "
        f"restarted by its policy, its Ray node back {back + rejoined:.1f} s after the job"
    )


def test_an_api_restart_mid_job_resumes_the_job_and_the_stream_after_its_last_step(
    cluster: ComposeCluster,
) -> None:
    restarted_at: list[float] = []
    restarts: list[threading.Thread] = []

    def restart_api(client: Client, job_id: str) -> None:
        restarted_at.append(time.monotonic())  # in the background: the stream reads on
        restarts.append(threading.Thread(target=cluster.compose, args=("restart", "api")))
        restarts[0].start()

    followed = train(cluster, long_job(), fault=restart_api)
    restarts[0].join()

    assert followed.job.state == pb.SUCCEEDED, followed.job.reason
    assert followed.steps == list(range(1, 30_001)), "every step streamed exactly once"
    assert followed.reconnects, "the stream dropped with the api and was resumed"
    assert all(step >= 2000 for _, step in followed.reconnects)  # resumed after_step
    pause = followed.pause_after(restarted_at[0])
    print(
        f"\napi restarted at step 2000: the stream resumed after_step "
        f"{followed.reconnects[-1][1]}, {pause:.1f} s without a point "
        f"({len(followed.reconnects)} reconnect attempts)"
    )
