"""The image and the dashboards: the Dockerfile's promises, what .dockerignore lets in, the
Grafana dashboard naming only exported metrics, and the container health probes."""

from __future__ import annotations

import fnmatch
import json
import re
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services import probe
from services.jobs.records import MetricPoint
from services.jobs.store import JobStore
from services.metrics import ServiceMetrics, build_registry

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/bptrain.json").read_text())
DATASOURCES = yaml.safe_load(
    (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
)["datasources"]


def instructions(name: str) -> list[str]:
    """The arguments of every `name` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m[1] for m in re.finditer(rf"^{name}\s+(.*)$", joined, flags=re.MULTILINE)]


def test_the_image_builds_in_two_stages_from_a_pinned_base() -> None:
    stages = instructions("FROM")
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    [base] = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base)
    # The runtime stage takes only the virtual environment from the build stage.
    assert [a for a in instructions("COPY") if "--from" in a] == [
        "--from=build /opt/venv /opt/venv"
    ]


def test_the_image_runs_as_a_non_root_user_without_sudo() -> None:
    users = instructions("USER")
    assert users == ["10001:10001"]
    commands = " ".join(instructions("RUN"))
    assert "sudo" not in commands and "apt-get" not in commands  # nothing installs sudo
    assert re.search(r"useradd --system --uid 10001", DOCKERFILE)


def test_the_image_has_a_grpc_healthcheck_and_a_gpu_variant() -> None:
    [healthcheck] = instructions("HEALTHCHECK")
    assert '"services.probe", "grpc", "127.0.0.1:50051"' in healthcheck
    assert "ARG VARIANT=cpu" in DOCKERFILE
    assert re.search(r'gpu\) pip install --no-cache-dir "cupy-cuda12x\[ctk\]==', DOCKERFILE)
    assert re.search(r'"ray\[default\]==\$\{RAY_VERSION\}"', DOCKERFILE)


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    def is_sent(path: str) -> bool:
        sent = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.removeprefix("!").rstrip("/")
            if (
                pattern == "**"
                or fnmatch.fnmatch(path, pattern)
                or path.startswith(pattern + "/")
                or fnmatch.fnmatch(path, pattern.replace("**/", "*/"))
                or fnmatch.fnmatch(Path(path).name, pattern.removeprefix("**/"))
            ):
                sent = negated
        return sent

    copied = [
        src for args in instructions("COPY") if "--from" not in args for src in args.split()[:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "bptrain", "services", "worker"]
    for source in copied:
        assert is_sent(source), source
    for kept_out in (".venv", ".git", "tests", ".bptrain", "services/__pycache__"):
        assert not is_sent(kept_out), kept_out


# --- Grafana ---------------------------------------------------------------------------------


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    return queries + [v["query"]["query"] for v in DASHBOARD["templating"]["list"]]


def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    metrics = ServiceMetrics(build_registry())
    metrics.track_job_states(JobStore(tmp_path / "bptrain.db").count_by_state)
    metrics.rpc_completed("bptrain.v1.TrainingService/GetJob", "OK", 0.01)
    point = MetricPoint(
        step=1,
        epoch=0,
        loss=1.0,
        samples_per_second=100.0,
        learning_rate=0.1,
        elapsed_seconds=0.5,
        validation_loss=1.1,
        validation_accuracy=0.5,
    )
    metrics.points_recorded("job-x", [point])
    exposition = generate_latest(metrics.registry).decode()
    families = {f.name for f in text_string_to_metric_families(exposition)}
    names = {n for q in dashboard_queries() for n in re.findall(r"\bbptrain_[a-z0-9_]+", q)}
    assert len(names) >= 10
    unknown = {n for n in names if re.sub(r"_(bucket|total|count|sum)$", "", n) not in families}
    assert not unknown, unknown


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = {p["title"] for p in DASHBOARD["panels"]}
    assert {
        "Training loss",
        "Validation accuracy",
        "Samples/s per job",
        "Jobs by state",
        "RPC latency p95 (unary)",
    } <= titles
    assert all(p.get("targets") for p in DASHBOARD["panels"] if p["type"] != "text")


def test_every_panel_uses_the_provisioned_datasource() -> None:
    [datasource] = DATASOURCES
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "text":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


# --- the health probes -------------------------------------------------------------------------


@pytest.fixture
def health_server() -> tuple[health.HealthServicer, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_the_grpc_probe_follows_the_health_status(health_server: tuple) -> None:
    servicer, target = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.main(["grpc", target]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe.main(["grpc", target]) == 1


def test_the_grpc_probe_fails_when_nothing_listens() -> None:
    assert probe.is_serving("127.0.0.1:1", timeout_s=2.0) is False


def test_the_raylet_probe_looks_for_a_raylet_process(tmp_path: Path) -> None:
    for pid, name in ((1, "tini"), (42, "python3")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(f"{name}\n")
    assert not probe.runs_raylet(tmp_path)
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "comm").write_text("raylet\n")
    assert probe.runs_raylet(tmp_path)


def test_the_probe_explains_its_usage(capsys: pytest.CaptureFixture) -> None:
    assert probe.main(["nonsense"]) == 2
    assert "usage" in capsys.readouterr().err
