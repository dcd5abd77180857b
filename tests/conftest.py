"""Shared fixtures: one embedded Ray per test session, a real gRPC server on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bptrain import Client

# `make test` runs whole modules in two processes, each taking the next module when it is
# done (xdist's loadfile, with --no-loadscope-reorder: in collection order). These take
# longest (seconds of a 2-core run on 2026-12-07: 114, 96, 68, 35, 31, 29, 24, 23, 22, 22,
# 21, 21, 20, 20), so they go first: longest first leaves no process alone with one at
# the end.
LONGEST_FIRST = (
    "test_faults",
    "test_server_faults",
    "test_recovery",
    "test_api_restart",
    "test_fuzz",
    "test_cli",
    "test_compose_topology",
    "test_api",
    "test_consistency",
    "test_engine_gradcheck",
    "test_bsp_equivalence",
    "test_distributed_bench",
    "test_multinode",
    "test_runner_pool",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: modules stay whole


# Small, quick jobs: digits with one hidden layer.
DIGITS_SPEC: dict = {
    "name": "digits-small",
    "dataset": {"name": "digits", "validation_fraction": 0.1},
    "layers": [{"units": 64, "activation": "relu"}, {"units": 10, "activation": "identity"}],
    "loss": "softmax_cross_entropy",
    "optimizer": {"kind": "adam", "learning_rate": 0.003},
    "batch_size": 64,
    "epochs": 8,
    "workers": 2,
    "seed": 3,
}


def digits_spec(**changes: object) -> dict:
    """DIGITS_SPEC with top-level fields replaced."""
    return {**DIGITS_SPEC, **changes}


@contextlib.contextmanager
def ray_cluster() -> Iterator[dict]:
    """A `ray start --head` cluster of its own (processes, token auth on): its port,
    temp_dir, env, address and head (a test that restarts the head puts the new one there)."""
    import shutil

    from tests.processes import free_port, ray_env, short_temp_dir, start_head, stop_head

    port, temp_dir, env = free_port(), short_temp_dir(), ray_env()
    state = {"port": port, "temp_dir": temp_dir, "env": env, "address": f"127.0.0.1:{port}"}
    state["head"] = start_head(port, temp_dir, env)
    try:
        yield state
    finally:
        stop_head(state["head"], port, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[dict]:
    """A cluster of the test's own (`ray_cluster`), for tests that run `bptrain serve`
    against a cluster. A module whose tests each start and stop their own API servers
    (each on its own storage) may share one: a module-scoped `cluster` of its own."""
    with ray_cluster() as state:
        yield state


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from services.cluster import RayConfig, connect

    # 4 logical CPUs on any machine, so two 2-worker jobs can overlap in tests.
    connect(RayConfig(num_cpus=4))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def server(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A running API server over a fresh store: yields (RunningServer, JobManager)."""
    from services.api.server import ServerConfig, create_server
    from services.jobs.manager import JobManager, JobsConfig

    storage: Path = tmp_path_factory.mktemp("storage")
    manager = JobManager(JobsConfig(storage=storage))
    running = create_server(ServerConfig(port=0), manager)
    yield running, manager
    running.stop(grace_s=1.0)
    manager.shutdown()


@pytest.fixture
def client(server: tuple) -> Iterator[Client]:
    running, _ = server
    with Client(f"127.0.0.1:{running.port}") as client:
        yield client
