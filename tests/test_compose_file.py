"""docker-compose.yml says what the deployment promises: the services, what is published,
healthchecks gating start-up, pinned images, Ray token auth, shared storage, and a
Prometheus config that scrapes the API's metrics port. Also valid against the compose-spec."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.node import ray_start
from tests.test_compose_topology import COMPOSE, interpolate, load_compose

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "RAY_AUTH_TOKEN": "r" * 64,
    "BPTRAIN_TOKEN": "b" * 32,
    "GRAFANA_ADMIN_PASSWORD": "g" * 16,
}
RAY_SERVICES = ("ray-head", "ray-worker")
BPTRAIN_SERVICES = ("ray-head", "ray-worker", "api")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(SECRETS)


def flag(command: list[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    return value


def test_the_cluster_has_its_five_services(compose: dict) -> None:
    assert set(compose["services"]) == {"ray-head", "ray-worker", "api", "prometheus", "grafana"}


def test_only_the_api_prometheus_and_grafana_publish_ports(compose: dict) -> None:
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"api", "prometheus", "grafana"}
    assert compose["services"]["api"]["ports"] == ["127.0.0.1:50051:50051"]
    # Ray's dashboard listens on the compose network only.
    head = compose["services"]["ray-head"]
    assert flag(head["command"], "--dashboard-host") == "0.0.0.0"
    assert flag(head["command"], "--dashboard-port") in head["expose"]


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(
    compose: dict,
) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency]
    order = {name: set(s.get("depends_on", {})) for name, s in services.items()}
    assert order == {
        "ray-head": set(),
        "ray-worker": {"ray-head"},
        "api": {"ray-head"},
        "prometheus": {"api"},
        "grafana": {"prometheus"},
    }


def test_images_are_pinned(compose: dict) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (name, image)
    assert {compose["services"][name]["image"] for name in BPTRAIN_SERVICES} == {"bptrain:0.1.0"}


def test_ray_nodes_run_the_documented_commands(compose: dict) -> None:
    head = compose["services"]["ray-head"]["command"]
    worker = compose["services"]["ray-worker"]["command"]
    api = compose["services"]["api"]["command"]
    assert head[:4] == ["ray", "start", "--head", "--block"]
    assert worker[:4] == ["ray", "start", "--address=ray-head:6379", "--block"]
    assert flag(head, "--port") == "6379"
    assert api[:3] == ["bptrain", "--log-level=INFO", "serve"]
    assert flag(api, "--ray-address") == "ray-head:6379"
    assert flag(api, "--host") == "0.0.0.0"
    assert "container_name" not in compose["services"]["ray-worker"]  # --scale needs that
    assert flag(worker, "--num-cpus") == "2"  # ${RAY_WORKER_CPUS:-2}
    assert compose["services"]["ray-worker"]["deploy"]["replicas"] >= 2


def test_ray_nodes_start_no_idle_workers_and_no_log_monitor(compose: dict) -> None:
    for name in BPTRAIN_SERVICES:  # the API's node: services.node's `ray start`
        service = compose["services"][name]
        assert service["environment"]["RAY_prestart_worker_first_driver"] == "0", name
        command = ray_start("ray-head:6379") if name == "api" else service["command"]
        assert flag(command, "--include-log-monitor") == "false", name


def test_ray_nodes_have_shared_memory_for_their_object_store(compose: dict) -> None:
    for name in RAY_SERVICES:
        service = compose["services"][name]
        shm = re.fullmatch(r"(\d+)gb", service["shm_size"])
        assert shm, service["shm_size"]
        store = int(flag(service["command"], "--object-store-memory"))
        assert store < int(shm[1]) * 1024**3, name


def test_ray_token_auth_is_on_and_its_token_required(compose: dict) -> None:
    for name in BPTRAIN_SERVICES:
        environment = compose["services"][name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        assert environment["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"], name
    assert compose["services"]["api"]["environment"]["BPTRAIN_TOKENS"] == SECRETS["BPTRAIN_TOKEN"]
    for missing in SECRETS:
        with pytest.raises(KeyError, match=missing):
            load_compose({k: v for k, v in SECRETS.items() if k != missing})


def test_the_storage_volume_is_shared_by_the_api_and_the_ray_nodes(compose: dict) -> None:
    for name in BPTRAIN_SERVICES:
        assert "storage:/data" in compose["services"][name]["volumes"], name
    assert flag(compose["services"]["api"]["command"], "--storage").startswith("/data/")
    assert set(compose["volumes"]) == {"storage", "prometheus-data", "grafana-data"}


def test_prometheus_scrapes_the_apis_metrics_port(compose: dict) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    metrics_port = flag(compose["services"]["api"]["command"], "--metrics-port")
    assert job["static_configs"] == [{"targets": [f"api:{metrics_port}"]}]
    assert metrics_port in compose["services"]["api"]["expose"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_mounts_the_provisioning_and_the_dashboards(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    binds = [m.split(":") for m in grafana["volumes"] if m.startswith("./")]
    mounts = {source: target for source, target, *_ in binds}
    for source in ("./deploy/grafana/provisioning", "./deploy/grafana/dashboards"):
        assert (ROOT / source).is_dir(), source
    dashboards = mounts["./deploy/grafana/dashboards"]
    provisioning = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/bptrain.yml").read_text()
    )
    assert [p["options"]["path"] for p in provisioning["providers"]] == [dashboards]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards}/bptrain.json"
    assert (ROOT / "deploy/grafana/dashboards/bptrain.json").is_file()


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == (
        "x d  d $SET x"
    )
    with pytest.raises(KeyError, match="UNSET: say why"):
        interpolate("${UNSET:?say why}", env)
    with pytest.raises(KeyError, match="EMPTY"):
        interpolate("${EMPTY:?}", env)


SCHEMA = ROOT / "deploy/lint/node_modules/dclint/schemas/compose.schema.json"


@pytest.fixture(scope="module")
def validate_compose():
    if not SCHEMA.is_file():
        pytest.skip("the compose-spec schema comes with deploy/lint's npm packages: run make lint")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "validate_compose", ROOT / "deploy/lint/validate_compose.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compose_errors


def test_the_compose_file_is_valid_against_the_compose_spec(validate_compose) -> None:
    assert validate_compose(COMPOSE) == []


def test_the_schema_check_catches_a_misspelt_key(validate_compose, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("shm_size:", "shm_sise:"))
    errors = validate_compose(broken)
    assert any("services/ray-head" in e and "shm_sise" in e for e in errors), errors
