"""docker-compose.yml's own commands, run as local processes: a Ray head, two Ray worker
nodes and the API; a job submitted over gRPC succeeds with a worker on each worker node.

There is no Docker engine here, so the containers are collapsed onto this machine:
- each service's `command` is taken from the compose file and interpolated as compose
  does (`${VAR:-default}`, `${VAR:?error}`) with RAY_WORKER_CPUS=1 and fresh secrets;
- the compose hostnames (ray-head, api) and the bind-all address 0.0.0.0 become
  127.0.0.1, every port the file declares becomes a free port, /data a temporary folder;
- flags a container never needs, because it has its own network namespace, are added
  per node so three nodes can share one: distinct dashboard-agent and Ray-client ports
  and OS-chosen worker ports;
- the readiness gates are the services' own compose healthchecks, rewritten the same way.
Everything started is stopped at the end, by process session, never with `ray stop`
(which would also stop the test session's embedded Ray).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec
from tests.processes import free_port

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
HOSTNAMES = ("ray-head", "api", "prometheus", "grafana")
BIN = Path(sys.executable).parent

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over a loaded YAML document (strings, lists, maps)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        current, op, arg = env.get(name), match["op"], match["arg"]
        is_unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if is_unset else current
        if op in (":?", "?"):
            if is_unset:
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""

    return _VARIABLE.sub(replace, value)


def load_compose(env: Mapping[str, str]) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def declared_ports(compose: dict) -> set[int]:
    """Container ports the file names: `expose`, the container side of `ports`, and the
    `--*port=N` flags of the commands."""
    ports: set[int] = set()
    for service in compose["services"].values():
        ports |= {int(str(p)) for p in service.get("expose", [])}
        ports |= {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
        for arg in service.get("command", []):
            match = re.fullmatch(r"--[a-z-]*port=(\d+)", str(arg))
            if match and int(match[1]) > 0:
                ports.add(int(match[1]))
    return ports


@dataclass
class Localizer:
    """Rewrites a container's argument for this machine (see the module docstring)."""

    ports: dict[int, int]
    data_dir: Path

    def arg(self, arg: str) -> str:
        for host in (*HOSTNAMES, "0.0.0.0"):
            arg = re.sub(rf"(?<![\w.-]){re.escape(host)}(?=:\d|$)", "127.0.0.1", arg)
        arg = re.sub(r"(?<![\w.])/data(?=/|$)", str(self.data_dir), arg)
        return re.sub(r"(?<!\d)(\d{2,5})(?!\d)", lambda m: self.port(m[1]), arg)

    def port(self, text: str) -> str:
        return str(self.ports.get(int(text), text))

    def command(self, args: list[str]) -> list[str]:
        local = [self.arg(str(a)) for a in args]
        executable = BIN / local[0]
        return [str(executable) if executable.exists() else local[0], *local[1:]]

    def healthcheck(self, service: dict) -> list[str]:
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"a healthcheck in exec form: {test}"
        command = self.command(test[1:])
        if command[0] == "python":
            command[0] = sys.executable
        return command


@dataclass
class Node:
    """One started service: its process (its own session) and its log."""

    name: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Topology:
    compose: dict
    localizer: Localizer
    env: dict[str, str]
    workdir: Path
    nodes: list[Node] = field(default_factory=list)

    def start(self, name: str, service: str, extra: list[str] = ()) -> Node:
        command = [*self.localizer.command(self.compose["services"][service]["command"]), *extra]
        environment = {**self.env, **self.compose["services"][service].get("environment", {})}
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "w") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: str(v) for k, v in environment.items()},
                cwd=self.workdir,
                start_new_session=True,  # one session per node: stopped as one at the end
            )
        log.info("%s: %s", name, " ".join(command))
        node = Node(name, process, log_path)
        self.nodes.append(node)
        return node

    def wait_until(self, node: Node, ready: callable, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert node.process.poll() is None, f"{node.name} exited:\n{node.output()}"
            assert time.monotonic() < deadline, f"{node.name}: no {what}:\n{node.output()}"
            time.sleep(0.5)

    def healthy(self, service: str) -> bool:
        check = self.localizer.healthcheck(self.compose["services"][service])
        environment = {**self.env, **self.compose["services"][service].get("environment", {})}
        result = subprocess.run(
            check, env=environment, cwd=self.workdir, capture_output=True, timeout=60
        )
        return result.returncode == 0

    def stop(self) -> None:
        """SIGTERM each node, the last started first (`ray start --block` stops its own
        children; a worker node stops at once while the head's GCS is still there, and
        waits out GCS reconnection when it is not), then SIGKILL whatever is left in the
        nodes' sessions."""
        sessions = {node.process.pid for node in self.nodes}
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while processes_in_sessions(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in processes_in_sessions(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()


def processes_in_sessions(sessions: set[int]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) in sessions:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def raylet_node_id(session: int) -> str:
    """The Ray node id of the raylet started in `session` (one node per session)."""
    for pid in processes_in_sessions({session}):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet"):
            for arg in args:
                if arg.startswith(b"--node_id="):
                    return arg.split(b"=", 1)[1].decode()
    raise AssertionError(f"no raylet in session {session}")


@pytest.fixture
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if sys.platform != "linux":
        pytest.skip("the topology test reads /proc")
    # Ray's socket paths must stay under 107 bytes: a short folder of our own.
    workdir = Path(tempfile_short())
    env = {
        **os.environ,
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "BPTRAIN_TOKEN": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8),
        "RAY_WORKER_CPUS": "1",
        "RAY_TMPDIR": str(workdir),  # this cluster's sessions, apart from any other Ray
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("RAY_ADDRESS", "RAY_NAMESPACE"):
        env.pop(name, None)
    compose = load_compose(env)
    ports = {port: free_port() for port in declared_ports(compose)}
    data = workdir / "data"
    data.mkdir()
    cluster = Topology(compose, Localizer(ports, data), env, workdir)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def tempfile_short() -> str:
    return tempfile.mkdtemp(prefix="bpt-", dir="/tmp")


def per_node_flags() -> list[str]:
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]


def test_the_compose_commands_run_a_job_across_two_worker_nodes(topology: Topology) -> None:
    compose = topology.compose
    assert compose["services"]["ray-head"]["command"][:4] == ["ray", "start", "--head", "--block"]

    head = topology.start(
        "ray-head", "ray-head", [*per_node_flags(), f"--ray-client-server-port={free_port()}"]
    )
    topology.wait_until(head, lambda: topology.healthy("ray-head"), "healthy GCS")

    workers = []
    for index in (1, 2):  # one at a time: two raylets starting at once can race for a port
        worker = topology.start(f"ray-worker-{index}", "ray-worker", per_node_flags())
        topology.wait_until(
            worker, lambda w=worker: "Ray runtime started" in w.output(), "Ray runtime"
        )
        assert topology.healthy("ray-worker")
        workers.append(worker)

    api = topology.start("api", "api")
    topology.wait_until(api, lambda: topology.healthy("api"), "SERVING health check")

    api_port = topology.localizer.ports[50051]
    token = topology.env["BPTRAIN_TOKEN"]
    with Client(f"127.0.0.1:{api_port}", token=token) as client:
        final = client.submit(digits_spec(steps=20, workers=2)).wait()
    intruder = Client(f"127.0.0.1:{api_port}", token="not-the-token-not-the-token")
    with intruder, pytest.raises(BptrainError, match="UNAUTHENTICATED"):
        intruder.get(final.job_id)

    assert final.state == pb.SUCCEEDED, (final.reason, api.output())
    worker_nodes = {raylet_node_id(w.process.pid) for w in workers}
    used_nodes = {w.node_id for w in final.workers}
    assert len(final.workers) == 2
    assert used_nodes == worker_nodes, (used_nodes, worker_nodes)
    # The API kept its store in the shared volume's folder, as the compose file says.
    assert (topology.localizer.data_dir / "bptrain" / "bptrain.db").is_file()
    # ... and serves /metrics on the port its --metrics-port names (what Prometheus scrapes).
    metrics_port = topology.localizer.ports[9464]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        exposition = r.read().decode()
    assert 'bptrain_jobs_finished_total{state="SUCCEEDED"} 1.0' in exposition
    assert "bptrain_training_steps_total 20.0" in exposition
