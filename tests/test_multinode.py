"""A job's gradient workers spread over the nodes of a real multi-node Ray cluster.

Two `ray start` nodes on this machine, a head and a worker node, one CPU each: a worker
takes one CPU (`--worker-cpus` 1.0) while the job runner and the parameter server take
none, so a two-worker job can only run with one worker on each node.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bptrain import Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec
from tests.processes import (
    free_port,
    ray_env,
    short_temp_dir,
    start_api,
    start_head,
    start_worker_node,
    stop_head,
    stop_worker_node,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes() -> Iterator[dict]:
    """A head and a worker node of 1 CPU each, token auth on; yields their address, env
    and node ids ({node id: node manager port})."""
    port, temp_dir, env = free_port(), short_temp_dir(), ray_env()
    address = f"127.0.0.1:{port}"
    head = start_head(port, temp_dir, env, num_cpus=1)
    try:
        worker_node = start_worker_node(address, num_cpus=1, env=env)
        try:
            nodes = worker_node.nodes  # listed once it was up: no second driver to ask
            assert len(nodes) == 2 and worker_node.node_id in nodes, nodes
            yield {"address": address, "env": env, "nodes": nodes}
        finally:
            stop_worker_node(worker_node)
    finally:
        stop_head(head, port, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def api_client(two_nodes: dict, tmp_path: Path) -> Iterator[Client]:
    """`bptrain serve --ray-address` on the head, and a client of it."""
    api, port = start_api(tmp_path, two_nodes["address"], two_nodes["env"])
    try:
        with Client(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        # Its exit status is test_api_restart's concern: under heavy load a SIGTERMed
        # `bptrain serve` has now and then ended with SIGABRT after "shutting down".
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=60)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()


def test_a_two_worker_job_runs_one_worker_on_each_node(two_nodes: dict, api_client: Client) -> None:
    client = api_client
    job = client.submit(digits_spec(epochs=3))
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason

    placed = sorted(final.workers, key=lambda worker: worker.index)
    assert [worker.index for worker in placed] == [0, 1]
    assert {worker.node_id for worker in placed} == set(two_nodes["nodes"])  # one on each node
    assert all(worker.hostname and worker.pid > 0 for worker in placed)

    weights = client.weights(job.job_id)
    shapes = {name: weights[name].shape for name in ("W1", "b1", "W2", "b2")}
    assert shapes == {"W1": (64, 64), "b1": (64,), "W2": (64, 10), "b2": (10,)}
    assert all(np.isfinite(weights[name]).all() for name in shapes)
    assert final.latest.validation_accuracy > 0.8  # it learned, gradients from both nodes

    # bsp's colocated shards talk over TCP across nodes; asp has no shared memory to use
    # there and falls back to parameter-server actors: it must train all the same.
    asp = client.submit(digits_spec(epochs=3, consistency="asp")).wait()
    assert asp.state == pb.SUCCEEDED, asp.reason
    assert {worker.node_id for worker in asp.workers} == set(two_nodes["nodes"])
    assert asp.latest.validation_accuracy > 0.8
    # ssp on the same fallback keeps its bound with the workers on two nodes.
    ssp = client.submit(digits_spec(epochs=3, consistency="ssp", staleness=1))
    points = list(client.metrics(ssp.job_id))
    final = ssp.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert {worker.node_id for worker in final.workers} == set(two_nodes["nodes"])
    assert [p.step for p in points] == list(range(1, final.total_steps + 1))
    assert max(p.clock_lead_max for p in points) <= 1  # the staleness bound
    assert final.latest.validation_accuracy > 0.8
