"""A real Prometheus (Debian's binary) scrapes a running server with the project's
deploy/prometheus.yml, and a running job's loss comes back through its HTTP query API."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bptrain import Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec
from tests.processes import free_port
from tests.test_metrics_live import MeteredServer, metered_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROJECT_CONFIG = ROOT / "deploy/prometheus.yml"


def config_for(target: str) -> dict:
    """deploy/prometheus.yml with only its scrape target replaced by `target`."""
    config = yaml.safe_load(PROJECT_CONFIG.read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "bptrain-api"]
    assert len(jobs) == 1 and jobs[0]["static_configs"] == [{"targets": ["api:9464"]}]
    jobs[0]["static_configs"] = [{"targets": [target]}]
    return config


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def metered(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredServer]:
    with metered_server(tmp_path_factory.mktemp("prometheus-api")) as server:
        yield server


@pytest.fixture
def prometheus(metered: MeteredServer, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping `metered` on a free loopback port; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "Debian's prometheus is not installed (apt-get install prometheus; .ci/run does)"
        )
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(config_for(f"127.0.0.1:{metered.metrics_port}")))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 (lives as long as the process)
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_prometheus_reads_back_a_running_jobs_loss(metered: MeteredServer, prometheus: str) -> None:
    with Client(metered.target) as client:
        job = client.submit(digits_spec(epochs=5000))
        try:
            deadline = time.monotonic() + 120
            result: list[dict] = []
            while not result:
                assert time.monotonic() < deadline, "Prometheus never had the job's loss"
                result = query(prometheus, f'bptrain_job_loss{{job_id="{job.job_id}"}}')
                time.sleep(0.5)
            assert client.get(job.job_id).state == pb.RUNNING
            up = query(prometheus, 'up{job="bptrain-api"}')
        finally:
            client.cancel(job.job_id)
        losses = [p.loss for p in client.metrics(job.job_id)]

    [series] = result
    assert series["metric"]["job_id"] == job.job_id
    assert series["metric"]["job"] == "bptrain-api"
    scraped = float(series["value"][1])
    # The scraped value is the loss of one of the job's steps, as the store recorded it.
    assert any(math.isclose(scraped, loss, rel_tol=1e-6) for loss in losses), (scraped, losses[:5])
    assert [float(u["value"][1]) for u in up] == [1.0]
