"""Real processes for the tests: a `ray start --head` cluster and `bptrain serve`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """The environment of a cluster with Ray's token auth on, and of its clients."""
    token = "bptrain-test-" + os.urandom(8).hex()
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def short_temp_dir() -> Path:
    """Ray's socket paths live under its temp dir and must stay under ~100 characters."""
    return Path(tempfile.mkdtemp(prefix="bpt-ray-", dir="/tmp"))


def start_head(port: int, temp_dir: Path, env: dict) -> subprocess.Popen:
    """`ray start --head --block`; returns once its GCS port accepts connections."""
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=3",
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
    """`bptrain serve --ray-address ADDRESS` on a free port; returns (process, port)."""
    port_file = storage / "port"
    port_file.unlink(missing_ok=True)
    log = open(storage / "server.log", "a")  # noqa: SIM115
    command = [sys.executable, "-m", "bptrain.cli", "serve", "--port", "0", "--metrics-port",
               "0", "--port-file", str(port_file), "--storage", str(storage),
               "--ray-address", address]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        assert process.poll() is None, (storage / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "bptrain serve did not start"
        time.sleep(0.1)
    return process, int(port_file.read_text())
