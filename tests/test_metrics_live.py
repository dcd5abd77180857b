"""/metrics of a real server on a real embedded Ray: promtool-clean during a job, the
dashboard's metrics present, per-job series gone when jobs end, series bounded over many jobs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bptrain import Client
from bptrain.v1 import training_pb2 as pb
from services.jobs.records import JobState
from services.metrics import MetricsConfig, MetricsExporter, ServiceMetrics, build_registry
from tests.conftest import digits_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/dashboards/bptrain.json"
SHORT_JOB = {"steps": 3, "workers": 1, "batch_size": 32}
TERMINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
TRAINING_METHODS = pb.DESCRIPTOR.services_by_name["TrainingService"].methods_by_name
LONG_JOB = {"epochs": 5000, "eval_every": 1}  # validates every step, runs until cancelled


@dataclass
class MeteredServer:
    """An API server with its own registry and /metrics endpoint."""

    target: str
    metrics_url: str
    metrics: ServiceMetrics
    metrics_port: int

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@contextmanager
def metered_server(storage: Path) -> Iterator[MeteredServer]:
    """`bptrain serve`'s wiring in-process: manager, gRPC server and exporter on free ports."""
    from services.api.server import ServerConfig, create_server
    from services.jobs.manager import JobManager, JobsConfig
    from services.sweeps.manager import SweepManager

    metrics = ServiceMetrics(build_registry())
    manager = JobManager(JobsConfig(storage=storage), metrics=metrics)
    sweeps = SweepManager(manager)
    running = create_server(ServerConfig(port=0), manager, sweeps)
    exporter = MetricsExporter.start(MetricsConfig(port=0), metrics.registry)
    try:
        yield MeteredServer(
            target=f"127.0.0.1:{running.port}",
            metrics_url=f"http://127.0.0.1:{exporter.port}/metrics",
            metrics=metrics,
            metrics_port=exporter.port,
        )
    finally:
        exporter.stop()
        running.stop(grace_s=1.0)
        sweeps.shutdown()
        manager.shutdown()


@pytest.fixture(scope="module")
def metered(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredServer]:
    with metered_server(tmp_path_factory.mktemp("metered")) as server:
        yield server


def wait_for(condition, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def samples(exposition: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
    }


def sample_names(exposition: str) -> set[str]:
    return {name for name, _ in samples(exposition)}


def series(exposition: str) -> list[tuple[str, tuple]]:
    return [
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
    ]


def dashboard_metric_names() -> set[str]:
    """Every bptrain_* name in the dashboard's queries (panels and template variables)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    names = {name for q in queries for name in re.findall(r"\bbptrain_[a-z0-9_]+", q)}
    assert names, "the dashboard queries no bptrain metric"
    return names


def test_live_metrics_pass_promtool_and_carry_what_the_dashboard_queries(
    metered: MeteredServer,
) -> None:
    with Client(metered.target) as client:
        job = client.submit(digits_spec(**LONG_JOB))
        label = f'job_id="{job.job_id}"'
        try:
            # Wait for a validation pass to be exported, not only the loss.
            wait_for(
                lambda: f"bptrain_job_validation_accuracy_ratio{{{label}}}" in metered.scrape(),
                "the running job's validation accuracy on /metrics",
            )
            exposition = metered.scrape()
            assert client.get(job.job_id).state == pb.RUNNING
        finally:
            cancelled = client.cancel(job.job_id)
    assert cancelled.state == pb.CANCELLED

    live = samples(exposition)
    this_job = frozenset({("job_id", job.job_id)})
    assert live[("bptrain_job_loss", this_job)] > 0
    assert live[("bptrain_job_samples_per_second", this_job)] > 0
    assert 0 <= live[("bptrain_job_validation_accuracy_ratio", this_job)] <= 1
    assert live[("bptrain_jobs", frozenset({("state", "RUNNING")}))] >= 1
    submit = ("method", "bptrain.v1.TrainingService/SubmitJob")
    assert live[("bptrain_rpc_handled_total", frozenset({submit, ("code", "OK")}))] >= 1
    assert live[("bptrain_rpc_duration_seconds_count", frozenset({submit}))] >= 1
    assert live[("bptrain_training_steps_total", frozenset())] >= 1

    # The Grafana dashboard queries only metrics that a live server exports.
    missing = {
        name
        for name in dashboard_metric_names()
        if not {name, f"{name}_bucket", f"{name}_total"} & sample_names(exposition)
    }
    assert not missing, f"the dashboard queries metrics /metrics lacks: {sorted(missing)}"

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus; .ci/run does)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
        check.stdout + check.stderr
    )

    after = metered.scrape()
    assert label not in after  # the cancelled job's series are gone
    assert metered.value("bptrain_job_loss", job_id=job.job_id) is None
    assert metered.value("bptrain_jobs_finished_total", state="CANCELLED") >= 1


def test_series_stay_bounded_however_many_jobs_run(metered: MeteredServer) -> None:
    def run_jobs(count: int) -> None:
        # Polled with GetJob: unary calls end OK, where a stream's final code could race
        # the client's close (OK or CANCELLED: bounded too, but not the same count each run).
        with Client(metered.target) as client:
            ids = [client.submit(digits_spec(**SHORT_JOB)).job_id for _ in range(count)]
            finals = [
                wait_for(lambda i=i: (job := client.get(i)).state in TERMINAL and job, i)
                for i in ids
            ]
        assert [pb.JobState.Name(f.state) for f in finals] == ["SUCCEEDED"] * count

    steps_before = metered.value("bptrain_training_steps_total")
    samples_before = metered.value("bptrain_training_samples_total")
    succeeded_before = metered.value("bptrain_jobs_finished_total", state="SUCCEEDED")
    run_jobs(2)
    after_few = series(metered.scrape())
    run_jobs(6)
    after_many = series(metered.scrape())

    assert len(after_many) == len(after_few), set(after_many) ^ set(after_few)
    assert {name for name, _ in after_many} == {name for name, _ in after_few}
    assert not [s for s in after_many if "job_id" in dict(s[1])]
    # Every label value comes from a finite set, whatever the jobs were.
    codes = {code.name for code in grpc.StatusCode}
    methods = {f"bptrain.v1.TrainingService/{m}" for m in TRAINING_METHODS} | {
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
    for name, labels in after_many:
        labels = dict(labels)
        assert labels.get("code", "OK") in codes, (name, labels)
        assert labels.get("method", next(iter(methods))) in methods, (name, labels)
        assert labels.get("state", "QUEUED") in {s.value for s in JobState}, (name, labels)
    # The counters did move: 8 jobs of 3 steps of 32 rows each.
    assert metered.value("bptrain_jobs_finished_total", state="SUCCEEDED") - succeeded_before == 8
    assert metered.value("bptrain_training_steps_total") - steps_before == 8 * 3
    assert metered.value("bptrain_training_samples_total") - samples_before == 8 * 3 * 32
    assert metered.value("bptrain_jobs", state="SUCCEEDED") >= 8
