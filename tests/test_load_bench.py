"""bench/load.py on a real server, small: its followers' process and its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL_RUN_TIMEOUT_S = 240  # about 20 s on a quiet 2-core machine


@pytest.mark.parametrize("batched", [False, True], ids=["one-per-point", "batched"])
def test_a_small_run_reports_every_follower_exact_and_each_process_cpu(
    tmp_path: Path, batched: bool
) -> None:
    out = tmp_path / "load.json"
    small = ["--followers", "12", "--clients", "2", "--channels", "3", "--steps", "12"]
    small += ["--batched"] if batched else []
    run = subprocess.run(
        [sys.executable, "bench/load.py", *small, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMALL_RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["job_state"] == "SUCCEEDED" and result["batched"] is batched
    assert result["grpcio"] == grpc.__version__  # the server's accept loop depends on it
    assert result["stored_points"] == 12
    assert result["followers_exact"] == 12  # every step once, then the final job, in each
    assert result["follower_errors"] == [] and result["errors"] == {}
    latency = result["latency"]
    assert set(latency) == {
        "health",
        "get_job",
        "submit_validate",
        "client_loop_lag",
        "fan_out_lag",
    }
    assert latency["fan_out_lag"]["calls"] == 12 * 12
    assert latency["get_job"]["calls"] > 0 and latency["health"]["calls"] > 0
    assert result["cpu"]["followers_cpu_s"] > 0  # measured in the followers' own process
    assert "the followers' process" in run.stdout
