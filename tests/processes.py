"""Real processes for the tests: a `ray start --head` cluster and `bptrain serve`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before by this process: the kernel may give
    two probes in a row the same port (each closes before the next binds), and Ray
    refuses to start when two of its components are given one port."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def ray_env() -> dict[str, str]:
    """The environment of a cluster with Ray's token auth on, and of its clients."""
    token = "bptrain-test-" + os.urandom(8).hex()
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def short_temp_dir() -> Path:
    """Ray's socket paths live under its temp dir and must stay under ~100 characters."""
    return Path(tempfile.mkdtemp(prefix="bpt-ray-", dir="/tmp"))


def start_head(port: int, temp_dir: Path, env: dict, *, num_cpus: int = 3) -> subprocess.Popen:
    """`ray start --head --block`; returns once its GCS port accepts connections."""
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        assert head.poll() is None, f"ray start --head exited with {head.returncode}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return head
        assert time.monotonic() < deadline, "the Ray head did not start"
        time.sleep(0.2)


def stop_head(head: subprocess.Popen, port: int, temp_dir: Path) -> None:
    """Stop that cluster and everything it started, and nothing else."""
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
    for pid, cmdline in processes():
        if f":{port}" in cmdline or f"={port}" in cmdline or str(temp_dir) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class WorkerNode:
    """A `ray start --address HEAD --block` node: its own process group and temp dir."""

    process: subprocess.Popen
    node_id: str  # as Ray reports it, hex; "" until the node is alive
    node_manager_port: int
    temp_dir: Path
    log: Path  # the output of `ray start`
    owns_temp_dir: bool  # start_worker_node made temp_dir, so stop_worker_node removes it
    nodes: dict[str, int] = field(default_factory=dict)  # alive_nodes once this one was up


def start_worker_node(
    head_address: str,
    *,
    num_cpus: int,
    env: dict,
    temp_dir: Path | None = None,
    timeout_s: float = 90.0,
) -> WorkerNode:
    """Join a second Ray node to the cluster at `head_address` (HOST:PORT), with `num_cpus`
    logical CPUs, in a process group of its own; returns once the cluster reports it alive.

    `env` is the head's (the same auth token). `temp_dir` must be this node's own, never
    the head's: stop_worker_node kills every process that names it.
    """
    owns_temp_dir = temp_dir is None
    temp_dir = temp_dir or short_temp_dir()
    node_manager_port = free_port()  # names this node in ray.nodes() and in its processes
    log = temp_dir / "ray-start.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", f"--address={head_address}", f"--num-cpus={num_cpus}",
             f"--node-manager-port={node_manager_port}", f"--temp-dir={temp_dir}",
             "--disable-usage-stats", "--block"],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    node = WorkerNode(process, "", node_manager_port, temp_dir, log, owns_temp_dir)
    try:
        nodes = alive_nodes(head_address, env, node_manager_port, timeout_s, watch=node)
    except BaseException:
        stop_worker_node(node)
        raise
    (node_id,) = [node_id for node_id, port in nodes.items() if port == node_manager_port]
    return replace(node, node_id=node_id, nodes=nodes)


def stop_worker_node(node: WorkerNode) -> None:
    """Stop that node and everything it started (the head and its other nodes live on)."""
    if node.process.poll() is None:
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=60)
    port_argument = f"={node.node_manager_port}"  # --node-manager-port=P, --node_manager_port=P
    for pid, cmdline in processes():
        arguments = cmdline.split()
        if any(a.endswith(port_argument) for a in arguments) or str(node.temp_dir) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if node.owns_temp_dir:
        shutil.rmtree(node.temp_dir, ignore_errors=True)


# Run by alive_nodes in a short-lived driver of its own, so the test process never joins
# Ray. argv: address, node manager port (0: any), deadline on the shared monotonic clock.
_ALIVE_NODES = """
import json, sys, time
import ray
address, port, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
while True:
    nodes = {n["NodeID"]: n["NodeManagerPort"] for n in ray.nodes() if n["Alive"]}
    if port in (0, *nodes.values()) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(nodes))
"""


def alive_nodes(
    address: str,
    env: dict,
    node_manager_port: int = 0,
    timeout_s: float = 60.0,
    *,
    watch: WorkerNode | None = None,
) -> dict[str, int]:
    """The alive nodes of the cluster at `address` as {node id: node manager port}, once
    the node whose node manager listens on `node_manager_port` is among them (0: now).

    Fails when that node is not alive within `timeout_s`, or when `watch` (the node being
    waited for) exits first; the failure shows the tail of `watch`'s `ray start` output.
    """
    deadline = time.monotonic() + timeout_s
    driver = subprocess.Popen(
        [sys.executable, "-c", _ALIVE_NODES, address, str(node_manager_port), str(deadline - 3)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while True:
            try:
                stdout, stderr = driver.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if watch is not None and watch.process.poll() is not None:
                raise AssertionError(
                    f"ray start --address {address} exited with {watch.process.returncode}:\n"
                    + watch.log.read_text()[-3000:]
                )
            if time.monotonic() > deadline:  # ray.init itself can hang on a missing head
                driver.kill()
                stdout, stderr = driver.communicate()
                break
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    started = f"\nray start --address output:\n{watch.log.read_text()[-3000:]}" if watch else ""
    answers = stdout.strip().splitlines()
    assert driver.returncode == 0 and answers, (
        f"Ray at {address} did not list its nodes within {timeout_s:.0f} s:\n"
        f"{stderr[-3000:]}{started}"
    )
    nodes = json.loads(answers[-1])
    assert node_manager_port in (0, *nodes.values()), (
        f"no alive node with node manager port {node_manager_port} within {timeout_s:.0f} s;"
        f" Ray at {address} reports {len(nodes)} alive: {nodes}{started}"
    )
    return nodes


def processes() -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield (
                    int(entry.name),
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(),
                )
            except OSError:
                continue


def start_api(
    storage: Path,
    address: str | None,
    env: dict,
    *,
    port: int = 0,
    num_cpus: int | None = None,
    standby_runners: int | None = None,
    max_lead_s: float | None = None,
) -> tuple[subprocess.Popen, int]:
    """`bptrain serve --ray-address ADDRESS` (address None: on an embedded Ray with
    `num_cpus`) on `port` (0: a free one); returns (process, port). `standby_runners`
    0 lets a test tell the job's runner by its process title (no idle standby beside it);
    a short `max_lead_s` holds a runner past a stalled API sooner (fewer steps needed)."""
    port_file = storage / "port"
    port_file.unlink(missing_ok=True)
    log = open(storage / "server.log", "a")  # noqa: SIM115
    command = [sys.executable, "-m", "bptrain.cli", "serve", "--port", str(port), "--metrics-port",
               "0", "--port-file", str(port_file), "--storage", str(storage)]  # fmt: skip
    if address is not None:
        command += ["--ray-address", address]
    elif num_cpus is not None:
        command += ["--num-cpus", str(num_cpus)]
    if standby_runners is not None:
        command += ["--standby-runners", str(standby_runners)]
    if max_lead_s is not None:
        command += ["--max-lead-s", str(max_lead_s)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        assert process.poll() is None, (storage / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "bptrain serve did not start"
        time.sleep(0.1)
    return process, int(port_file.read_text())


def is_alive(pid: int) -> bool:
    """Whether process `pid` exists (Ray's raylet reaps the workers it starts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_actor_of_process(pid: int, timeout_s: float = 10.0):  # -> ray.actor.ActorHandle
    """The named colocated-worker actor running in process `pid` (a job's `workers[i].pid`).
    By process, not by name: a worker kept from an earlier job keeps that job's name."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if "/worker-" not in entry["name"]:
                continue
            with contextlib.suppress(ValueError, RayActorError, GetTimeoutError):
                actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
                if ray.get(actor.placement.remote(), timeout=2)["pid"] == pid:
                    return actor
        time.sleep(0.05)
    raise AssertionError(f"no worker actor runs in process {pid}")
