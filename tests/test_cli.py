"""The `bptrain` command against a `bptrain serve` process, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import digits_spec

pytestmark = pytest.mark.slow

BPTRAIN = [sys.executable, "-m", "bptrain.cli"]


def bptrain(
    *args: str, server: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "BPTRAIN_SERVER": server} if server else None
    return subprocess.run(
        [*BPTRAIN, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bptrain serve` on a free port with an embedded Ray; yields "host:port"."""
    storage = tmp_path_factory.mktemp("served")
    port_file = storage / "port"
    log = open(storage / "server.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            *BPTRAIN,
            "serve",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--port-file",
            str(port_file),
            "--storage",
            str(storage),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        assert process.poll() is None, (storage / "server.log").read_text()
        assert time.monotonic() < deadline, "bptrain serve did not start"
        time.sleep(0.2)
    yield f"127.0.0.1:{port_file.read_text().strip()}"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, (storage / "server.log").read_text()
    log.close()


def write_spec(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump(digits_spec(**changes)))
    return path


def test_submit_follow_jobs_status_and_weights(served: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "job.yaml", epochs=2)
    submitted = bptrain("submit", str(spec), "--server", served, "--follow", "--output", "json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)[0]
    assert job["state"] == "SUCCEEDED"
    job_id = job["job_id"]
    assert f"submitted {job_id}" in submitted.stderr

    listed = bptrain("jobs", "--output", "json", server=served)  # server from $BPTRAIN_SERVER
    assert listed.returncode == 0, listed.stderr
    assert job_id in [j["job_id"] for j in json.loads(listed.stdout)]
    table = bptrain("jobs", "--server", served)
    assert job_id in table.stdout and "SUCCEEDED" in table.stdout

    status = bptrain("status", job_id, "--output", "json", "--server", served)
    assert json.loads(status.stdout)["state"] == "SUCCEEDED"

    out = tmp_path / "model.npz"
    fetched = bptrain("weights", job_id, "-o", str(out), "--server", served)
    assert fetched.returncode == 0, fetched.stderr
    with np.load(out, allow_pickle=False) as weights:
        assert weights["W1"].shape == (64, 64)
        assert json.loads(str(weights["architecture"]))["activations"] == ["relu", "identity"]


def test_follow_exits_1_when_the_job_fails(served: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "too-big.yaml", batch_size=5000)
    result = bptrain("submit", str(spec), "--server", served)
    assert result.returncode == 1
    assert "FAILED" in result.stdout


def test_no_wait_returns_at_once_and_cancel_stops_the_job(served: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "long.yaml", epochs=5000)
    submitted = bptrain("submit", str(spec), "--no-wait", "--output", "json", "--server", served)
    job_id = json.loads(submitted.stdout)[0]["job_id"]
    cancelled = bptrain("cancel", job_id, "--output", "json", "--server", served)
    assert json.loads(cancelled.stdout)[0]["state"] == "CANCELLED"
    watched = bptrain("watch", job_id, "--server", served)
    assert watched.returncode == 1 and "CANCELLED" in watched.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "job-nope"), "error: NOT_FOUND: unknown job 'job-nope'"),
        (("weights", "job-nope"), "error: NOT_FOUND"),
    ],
)
def test_errors_are_one_line_without_a_traceback(served: str, args: tuple, message: str) -> None:
    result = bptrain(*args, "--server", served)
    assert result.returncode == 1
    assert result.stderr.strip() == message or result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_bad_spec_files_are_reported_with_their_path(served: str, tmp_path: Path) -> None:
    unknown_field = tmp_path / "typo.yaml"
    unknown_field.write_text("layer: []\n")
    invalid = write_spec(tmp_path / "invalid.yaml", workers=0)
    for path, expected in [
        (unknown_field, f"error: {unknown_field}: "),
        (tmp_path / "missing.yaml", "cannot read"),
        (invalid, "error: INVALID_ARGUMENT: workers must be >= 1, got 0"),
    ]:
        result = bptrain("submit", str(path), "--server", served)
        assert result.returncode == 1
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


def test_no_server_is_a_clear_error() -> None:
    result = bptrain("jobs", "--server", "127.0.0.1:1", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE")


def test_datasets_upload_list_and_delete(served: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "points.npz"
    np.savez(path, X=rng.normal(size=(40, 3)).astype(np.float32), y=rng.integers(0, 2, size=40))
    uploaded = bptrain("datasets", "upload", str(path), "--output", "json", "--server", served)
    assert uploaded.returncode == 0, uploaded.stderr
    dataset = json.loads(uploaded.stdout)[0]
    assert (dataset["rows"], dataset["features"], dataset["outputs"]) == ("40", 3, 2)
    listed = bptrain("datasets", "list", "--server", served)
    assert dataset["dataset_id"] in listed.stdout
    deleted = bptrain("datasets", "delete", dataset["dataset_id"], "--server", served)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    missing = bptrain("datasets", "upload", str(tmp_path / "nope.npz"), "--server", served)
    assert missing.returncode == 1 and "is not a file" in missing.stderr


def test_dry_run_prints_the_spec_with_defaults(served: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "dry.yaml")
    result = bptrain("submit", str(spec), "--dry-run", "--server", served)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["workers"] == 2 and printed["optimizer"]["kind"] == "adam"


def test_gradcheck_prints_each_layer_and_passes(served: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "check.yaml")
    result = bptrain("gradcheck", str(spec), "--server", served)
    assert result.returncode == 0, result.stderr
    assert "layer 1: worst relative error" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("passed: worst")


@pytest.mark.parametrize("count", ["-1", "9"])
def test_serve_refuses_a_standby_runner_count_out_of_range(count: str) -> None:
    result = bptrain("serve", "--port", "0", "--standby-runners", count, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: standby_runners must be in [0, 8], got {count}"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-streams", "0", "max_streams must be in [1, max_concurrent_rpcs = 4096], got 0"),
        ("--threads", "0", "threads must be in [1, 1024], got 0"),
        ("--max-lead-s", "0.1", "max_lead_s must be in [0.5, 3600], got 0.1"),
        ("--quota-queued-jobs", "0", "quota queued_jobs must be >= 1 or unset, got 0"),
        ("--quota-dataset-bytes", "-5", "quota dataset_bytes must be >= 0 or unset, got -5"),
    ],
)
def test_serve_refuses_bad_stream_thread_and_quota_settings_in_one_line(
    option: str, value: str, message: str
) -> None:
    result = bptrain("serve", "--port", "0", option, value, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {message}"


def test_serve_refuses_a_tokens_file_with_a_bad_entry_without_quoting_it(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:user:alice-token-000000001\nbob:root:bob-secret-0000000002\n")
    result = bptrain("serve", "--port", "0", "--tokens-file", str(tokens), timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: tokens entry 2: must be NAME:ROLE:TOKEN")
    assert "bob-secret" not in result.stderr
