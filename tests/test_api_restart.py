"""The API server restarts mid-job on an external Ray cluster: the job keeps running in
its detached runner, the new server reattaches, and a client's resumed stream sees every
step exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bptrain import Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    """A `ray start --head` process of its own (token auth on); yields (address, env)."""
    port = free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "bptrain-restart-test-" + os.urandom(8).hex(),
    }
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=3",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    yield f"127.0.0.1:{port}", env
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    for pid, cmdline in processes():  # anything of this cluster left behind
        if f":{port}" in cmdline or f"={port}" in cmdline or str(temp_dir) in cmdline:
            os.kill(pid, signal.SIGKILL)


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


def start_api(storage: Path, address: str, env: dict) -> tuple[subprocess.Popen, int]:
    port_file = storage / "port"
    port_file.unlink(missing_ok=True)
    log = open(storage / "server.log", "a")  # noqa: SIM115
    command = [sys.executable, "-m", "bptrain.cli", "serve", "--port", "0",
               "--metrics-port", "0", "--port-file",
               str(port_file), "--storage", str(storage), "--ray-address", address]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        assert process.poll() is None, (storage / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "bptrain serve did not start"
        time.sleep(0.1)
    return process, int(port_file.read_text())


def test_a_killed_api_server_comes_back_and_the_stream_resumes_without_gaps(
    ray_cluster: tuple[str, dict], tmp_path: Path
) -> None:
    address, env = ray_cluster
    api, port = start_api(tmp_path, address, env)
    with Client(f"127.0.0.1:{port}") as client:
        job = client.submit(digits_spec(epochs=15, checkpoint_every=20))
        seen = []
        for point in client.metrics(job.job_id):
            seen.append(point.step)
            if point.step == 25:
                break
    api.send_signal(signal.SIGKILL)  # a crash: no graceful shutdown
    api.wait()
    killed_at = time.monotonic()
    api, port = start_api(tmp_path, address, env)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            resumed = [point.step for point in client.metrics(job.job_id, after_step=seen[-1])]
            print(f"API back and streaming {time.monotonic() - killed_at:.2f} s after the crash")
            final = client.get(job.job_id)
            assert final.state == pb.SUCCEEDED, final.reason
            assert seen + resumed == list(range(1, final.total_steps + 1))
            assert client.weights(job.job_id)["W1"].shape == (64, 64)
    finally:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0
