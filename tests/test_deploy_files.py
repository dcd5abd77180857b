"""The image and the dashboards: what the Dockerfile's stages do (their RUN commands run
with every program recorded), its command and healthcheck run for real, what
.dockerignore lets in, the Grafana dashboard's queries evaluated over the exported
metrics, and the container health probes."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
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
from services.metrics.sweeps import SweepMetrics
from services.sweeps.store import SweepStore
from tests.dockerfile import option, read_dockerfile, run_stage

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

ROOT = Path(__file__).resolve().parent.parent
IMAGE = read_dockerfile(ROOT / "Dockerfile")
BUILD, RUNTIME = IMAGE.stage("build"), IMAGE.stage("runtime")
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/bptrain.json").read_text())
DATASOURCES = yaml.safe_load(
    (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
)["datasources"]


def test_the_image_builds_in_two_stages_from_a_pinned_base() -> None:
    assert [(s.name, s.base) for s in IMAGE.stages] == [
        ("build", "${PYTHON_IMAGE}"),
        ("runtime", "${PYTHON_IMAGE}"),
    ]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", IMAGE.global_args["PYTHON_IMAGE"])
    # The runtime stage takes only the virtual environment from the build stage.
    assert [a for a in RUNTIME.all("COPY") if "--from" in a] == ["--from=build /opt/venv /opt/venv"]


@pytest.mark.parametrize("variant", [None, "cpu", "gpu"])
def test_the_build_installs_the_tested_ray_and_cupy_only_for_gpu(
    tmp_path: Path, variant: str | None
) -> None:
    built = run_stage(BUILD, tmp_path, None if variant is None else {"VARIANT": variant})
    assert built.returncode == 0, built.stderr
    calls = [call[1:] for call in built.of("pip") if call[0] == "install"]
    installed = {a for call in calls for a in call}
    files = {call[i + 1] for call in calls for i, a in enumerate(call[:-1]) if a == "-r"}
    requirements = {a for a in installed if not a.startswith("-")} - files
    cupy = {r for r in requirements if r.startswith("cupy")}
    ray_pin = f"ray[default]=={BUILD.args()['RAY_VERSION']}"
    assert requirements - cupy == {ray_pin, "./"}  # bptrain itself, and Ray
    assert len(files) == 1  # bptrain's dependencies, read from pyproject.toml
    assert re.fullmatch(r"ray\[default\]==\d+\.\d+\.\d+", ray_pin)  # an exact version
    if variant == "gpu":
        [pin] = cupy
        assert re.fullmatch(r"cupy-cuda12x\[ctk\]==\d+\.\d+\.\d+", pin)
    else:  # cpu, the default
        assert not cupy
    assert "--no-cache-dir" in installed


def test_the_build_refuses_an_unknown_variant(tmp_path: Path) -> None:
    built = run_stage(BUILD, tmp_path, {"VARIANT": "tpu"})
    assert built.returncode != 0 and "tpu" in built.stderr
    assert not any(a.startswith("cupy") for call in built.of("pip") for a in call)


def test_the_image_runs_as_a_user_it_creates_who_owns_its_storage(tmp_path: Path) -> None:
    built = run_stage(RUNTIME, tmp_path)
    assert built.returncode == 0, built.stderr
    [user] = RUNTIME.all("USER")
    uid, gid = user.split(":")
    assert int(uid) != 0 and int(gid) != 0
    [groupadd], [useradd] = built.of("groupadd"), built.of("useradd")
    name, group = useradd[-1], option(useradd, "--gid")
    assert option(useradd, "--uid") == uid
    assert (groupadd[-1], option(groupadd, "--gid")) == (group, gid)
    assert RUNTIME.all("WORKDIR")[-1] == option(useradd, "--home-dir")
    storage = option(RUNTIME.one("CMD").exec_form(), "--storage")
    owned = [call[-1] for call in built.of("chown") if call[0] in (name, f"{name}:{group}")]
    assert any(storage.startswith(path.rstrip("/") + "/") for path in owned), (storage, owned)
    programs = {call[0] for call in built.calls + run_stage(BUILD, tmp_path / "b").calls}
    assert not {"sudo", "apt-get"} & programs


def test_the_image_command_serves_on_the_port_its_healthcheck_probes() -> None:
    command = RUNTIME.one("CMD").exec_form()
    program = Path(sys.executable).parent / command[0]  # on the image's PATH: /opt/venv/bin
    usage = subprocess.run(
        [program, *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 0, usage.stderr  # a command the server takes, options too
    default = re.search(r"--port\b.*\[default: (\d+)\]", usage.stdout)
    port = option(command, "--port") or default[1]
    *_, target = RUNTIME.healthcheck()[1]
    assert target == f"127.0.0.1:{port}"
    assert port in RUNTIME.all("EXPOSE")[0].split()


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

    copies = [args for stage in IMAGE.stages for args in stage.all("COPY")]
    copied = [src for args in copies if "--from" not in args for src in args.split()[:-1]]
    wheelhouse = "${WHEELHOUSE}/"
    assert sorted(copied) == sorted(
        [wheelhouse, "pyproject.toml", "README.md", "bptrain", "services", "worker"]
    )
    # The wheel folders: the default (a README only) and the one `make cluster-up` fills.
    wheel_folders = [BUILD.args()["WHEELHOUSE"], ".cluster/wheelhouse"]
    for source in [s for s in copied if s != wheelhouse] + wheel_folders:
        assert is_sent(source), source
    for kept_out in (".venv", ".git", "tests", ".bptrain", "services/__pycache__", ".cluster"):
        assert not is_sent(kept_out), kept_out


# --- Grafana ---------------------------------------------------------------------------------


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    return queries + [v["query"]["query"] for v in DASHBOARD["templating"]["list"]]


def metric_names(query: str) -> set[str]:
    return set(re.findall(r"\bbptrain_[a-z0-9_]+", query))


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a service that has answered an RPC and recorded a job's step."""
    metrics = ServiceMetrics(build_registry())
    store = JobStore(tmp_path_factory.mktemp("store") / "bptrain.db")
    metrics.track_job_states(store.count_by_state)
    sweep_metrics = SweepMetrics(metrics.registry)
    sweep_metrics.track_sweep_states(SweepStore(store.path).count_by_state)
    sweep_metrics.trial_ended("stopped")
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
    return generate_latest(metrics.registry).decode()


def test_every_metric_the_dashboard_queries_is_exported(exposition: str) -> None:
    families = {f.name for f in text_string_to_metric_families(exposition)}
    names = {n for q in dashboard_queries() for n in metric_names(q)}
    assert len(names) >= 10
    unknown = {n for n in names if re.sub(r"_(bucket|total|count|sum)$", "", n) not in families}
    assert not unknown, unknown


def input_series(exposition: str) -> list[dict]:
    """promtool's input: every exported bptrain_* sample over five minutes, counters and
    histograms growing, gauges constant."""
    series = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if family.name.startswith("bptrain_") and not sample.name.endswith("_created"):
                labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
                growing = family.type in ("counter", "histogram")
                values = "0+1x20" if growing else f"{sample.value}+0x20"
                series.append({"series": f"{sample.name}{{{labels}}}", "values": values})
    return series


def test_every_dashboard_query_returns_data_from_the_exported_series(
    exposition: str, tmp_path: Path
) -> None:
    """promtool evaluates each panel's query, the job variable at its "All" value."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus; .ci/run does)")
    variables = {f"${v['name']}": v.get("allValue", ".*") for v in DASHBOARD["templating"]["list"]}
    tests = []
    for query in (t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])):
        for variable, value in variables.items():
            query = query.replace(variable, value)
        tests.append({"expr": f"absent({query})", "eval_time": "5m", "exp_samples": []})
    assert len(tests) >= 10
    case = {"interval": "15s", "input_series": input_series(exposition), "promql_expr_test": tests}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"tests": [case]}))
    command = [promtool, "test", "rules", "dashboard.yml"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr  # names each query with no data


# What the issue asked the dashboard to chart: the loss, validation accuracy, samples/s per
# job, jobs by state, and unary RPC latency.
ASKED_FOR = {
    "bptrain_job_loss",
    "bptrain_job_validation_accuracy_ratio",
    "bptrain_job_samples_per_second",
    "bptrain_jobs",
    "bptrain_rpc_duration_seconds_bucket",
}


def test_the_dashboard_charts_what_the_issue_asks_for() -> None:
    charted = [p for p in DASHBOARD["panels"] if p["type"] != "text"]
    assert all(p.get("targets") for p in charted)
    names = {n for p in charted for t in p["targets"] for n in metric_names(t["expr"])}
    assert not ASKED_FOR - names, ASKED_FOR - names


def test_the_dashboard_loads_as_grafanas_own_model_and_keeps_every_field() -> None:
    """Grafana's schema for the version compose runs (grafana-foundation-sdk 11.2, generated
    from it): the file parses into its Dashboard model, each panel's queries into Prometheus
    queries, and no key the file sets is unknown to the model (the model drops those, so a
    misspelt key shows as missing on the way back)."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.models import dashboard, prometheus

    plugins.register_default_plugins()
    model = dashboard.Dashboard.from_json(DASHBOARD)
    back = json.loads(json.dumps(model.to_json(), default=lambda part: part.to_json()))

    assert set(DASHBOARD) <= set(back)
    assert len(model.panels) == len(DASHBOARD["panels"])
    for given, parsed, returned in zip(
        DASHBOARD["panels"], model.panels, back["panels"], strict=True
    ):
        assert set(given) - set(returned) == set(), given["title"]
        assert parsed.targets and all(isinstance(t, prometheus.Dataquery) for t in parsed.targets)
        assert [t["expr"] for t in returned["targets"]] == [t["expr"] for t in given["targets"]]
    for given, returned in zip(
        DASHBOARD["templating"]["list"], back["templating"]["list"], strict=True
    ):
        assert set(given) - set(returned) == set(), given["name"]


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


def test_the_image_healthcheck_follows_the_servers_health(health_server: tuple) -> None:
    """The HEALTHCHECK's own command, run against a real health service, answers within
    its timeout."""
    options, command = RUNTIME.healthcheck()
    assert float(options["--timeout"].removesuffix("s")) > probe.TIMEOUT_S
    servicer, target = health_server
    # the image's `python` is its virtual environment's; the server here is on a free port
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:-1], target]
    for status, healthy in ((health_pb2.HealthCheckResponse.SERVING, 0), (NOT_SERVING, 1)):
        servicer.set("", status)
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == healthy, done.stderr


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
