"""The docker-compose cluster for real: images built here, brought up, tested, torn down.

    python deploy/cluster/cluster.py up      # engine, base image, wheels, build, up, healthy
    python deploy/cluster/cluster.py test    # up, pytest -m cluster tests/cluster, down
    python deploy/cluster/cluster.py down    # containers, networks and volumes removed

(`make cluster-up`, `make cluster-test`, `make cluster-down`.) Each phase is timed and the
table printed at the end. What this host cannot pull is made here and cached:

- base image: `python:3.11.11-slim-bookworm` when Docker Hub answers, else one
  bootstrapped from Debian (deploy/cluster/bootstrap-base.sh), kept under its tag;
- wheels: everything the image installs, built on the host by `pip wheel` into a cache
  keyed by the project's dependencies, hard-linked into the build context and installed
  with --no-index (the air-gapped build of the Dockerfile's WHEELHOUSE);
- Prometheus: `prom/prometheus` when it can be pulled, else deploy/prometheus/Dockerfile
  (Debian's package) on the base image.

Grafana's image cannot be had without Docker Hub: `up` starts every service but grafana.
Secrets (Ray's token, the API's bearer token) and the published ports are drawn once and
kept in .cluster/env, which `docker compose --env-file .cluster/env` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy" / "cluster"
STATE = ROOT / ".cluster"
ENV_FILE = STATE / "env"
WHEELHOUSE = ".cluster/wheelhouse"  # relative to the build context (the repository)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bptrain" / "cluster"

RAY_VERSION = "2.60.0"  # the Dockerfile's RAY_VERSION
PUBLIC_PYTHON = "python:3.11.11-slim-bookworm"
LOCAL_PYTHON = "bptrain-base/python:3.11-bookworm"
PUBLIC_PROMETHEUS = "prom/prometheus:v2.53.2"
LOCAL_PROMETHEUS = "bptrain-prometheus:debian"
BPTRAIN_IMAGE = "bptrain:0.1.0"
IMAGE_LABEL = "org.opencontainers.image.title=bptrain"  # the Dockerfile's runtime stage
SERVICES = ("ray-head", "ray-worker", "api", "prometheus")  # grafana: no image here
SECRETS = ("RAY_AUTH_TOKEN", "BPTRAIN_TOKEN", "GRAFANA_ADMIN_PASSWORD")  # compose requires
PULL_TIMEOUT_S = 60.0
UP_TIMEOUT_S = 300


class ClusterError(RuntimeError):
    """A phase failed; the message says which and why."""


@dataclass
class Phases:
    """Wall time and a line of detail per phase, printed as a table."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[list[str]]:
        detail: list[str] = []
        print(f"cluster: {name} ...", flush=True)
        start = time.monotonic()
        try:
            yield detail
        finally:
            self.rows.append((name, time.monotonic() - start, "; ".join(detail)))

    def table(self) -> str:
        lines = [f"{'phase':<12} {'seconds':>8}  detail", "-" * 78]
        lines += [f"{name:<12} {s:>8.1f}  {detail}" for name, s, detail in self.rows]
        lines.append(f"{'total':<12} {sum(s for _, s, _ in self.rows):>8.1f}")
        return "\n".join(lines)


def run(*command: str, check: bool = True, **kwargs) -> str:
    """Run a command; its stdout, or ClusterError with the tail of its output."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise ClusterError(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{tail}")
    return result.stdout


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def image_mb(tag: str) -> float:
    return int(run("docker", "image", "inspect", "-f", "{{.Size}}", tag)) / 1e6


def pulled(tag: str) -> bool:
    """The image is here or could be pulled (bounded: an unreachable registry can hang)."""
    if image_exists(tag):
        return True
    try:
        pull = ["docker", "pull", "-q", tag]
        done = subprocess.run(pull, capture_output=True, timeout=PULL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env() -> dict[str, str]:
    if not ENV_FILE.is_file():
        return {}
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def write_env(values: dict[str, str]) -> None:
    STATE.mkdir(exist_ok=True)
    ENV_FILE.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    ENV_FILE.chmod(0o600)


@dataclass(frozen=True)
class Cluster:
    """One compose project of docker-compose.yml with the env file of .cluster/."""

    project: str

    def compose(self, *args: str, **kwargs) -> str:
        env_file, placeholders = ENV_FILE, {}
        if not ENV_FILE.is_file():  # never up here: enough for compose to read the file
            env_file, placeholders = Path(os.devnull), {name: "-" for name in SECRETS}
        return run(
            "docker", "compose", "--env-file", str(env_file), "-p", self.project,
            "-f", str(ROOT / "docker-compose.yml"), *args,
            cwd=ROOT, env={**placeholders, **os.environ}, **kwargs,
        )  # fmt: skip

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind, listing in (
            ("container", ["docker", "ps", "-aq", "--filter", label]),
            ("network", ["docker", "network", "ls", "-q", "--filter", label]),
            ("volume", ["docker", "volume", "ls", "-q", "--filter", label]),
        ):
            found += [f"{kind} {name}" for name in run(*listing).split()]
        return found


def ensure_engine(detail: list[str]) -> None:
    run(str(HERE / "install-engine.sh"))
    detail.append(run("docker", "compose", "version", "--short").strip())
    detail.append("engine " + run("docker", "version", "-f", "{{.Server.Version}}").strip())


def base_image(detail: list[str]) -> str:
    if pulled(PUBLIC_PYTHON):
        detail.append(PUBLIC_PYTHON)
        return PUBLIC_PYTHON
    if image_exists(LOCAL_PYTHON):
        detail.append(f"{LOCAL_PYTHON} (cached; {PUBLIC_PYTHON} cannot be pulled)")
    else:
        run(str(HERE / "bootstrap-base.sh"), LOCAL_PYTHON)
        detail.append(f"{LOCAL_PYTHON} bootstrapped from Debian ({PUBLIC_PYTHON} cannot be pulled)")
    return LOCAL_PYTHON


def wheel_cache_key() -> str:
    """Changes when what the image installs changes: the project's dependencies (as the
    environment running this installed them from pyproject.toml) and Ray's pin."""
    runtime = [r for r in metadata.requires("bptrain") or [] if "extra ==" not in r]
    wanted = [RAY_VERSION, *sorted(runtime)]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]


def wheels(detail: list[str]) -> None:
    cache = CACHE / f"wheels-{wheel_cache_key()}"
    if not (cache / ".complete").is_file():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        run(
            sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(cache),
            f"ray[default]=={RAY_VERSION}", str(ROOT), "setuptools>=77",
        )  # fmt: skip
        for own in cache.glob("bptrain-*.whl"):  # the image builds the project from its source
            own.unlink()
        (cache / ".complete").touch()
        detail.append("built")
    else:
        detail.append("cached")
    target = ROOT / WHEELHOUSE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files = sorted(cache.glob("*.whl"))
    for wheel in files:
        try:
            os.link(wheel, target / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, target / wheel.name)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    detail.append(f"{len(files)} wheels, {megabytes:.0f} MB in {cache}")


def prometheus_image(base: str, detail: list[str]) -> str:
    if pulled(PUBLIC_PROMETHEUS):
        return PUBLIC_PROMETHEUS
    run(
        "docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}",
        "-t", LOCAL_PROMETHEUS, str(ROOT / "deploy" / "prometheus"),
    )  # fmt: skip
    detail.append(f"{LOCAL_PROMETHEUS} from Debian's package")
    return LOCAL_PROMETHEUS


def up(cluster: Cluster, phases: Phases) -> None:
    with phases.phase("engine") as detail:
        ensure_engine(detail)
    with phases.phase("base image") as detail:
        base = base_image(detail)
    with phases.phase("wheels") as detail:
        wheels(detail)
    env = read_env()
    with phases.phase("build") as detail:
        prometheus = prometheus_image(base, detail)
        env = {
            "RAY_AUTH_TOKEN": env.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
            "BPTRAIN_TOKEN": env.get("BPTRAIN_TOKEN") or secrets.token_hex(32),
            # Grafana is not started here (no image), but the compose file requires it.
            "GRAFANA_ADMIN_PASSWORD": env.get("GRAFANA_ADMIN_PASSWORD") or secrets.token_hex(16),
            "PYTHON_IMAGE": base,
            "WHEELHOUSE": WHEELHOUSE,
            "PROMETHEUS_IMAGE": prometheus,
            "BPTRAIN_API_PORT": env.get("BPTRAIN_API_PORT") or str(free_port()),
            "PROMETHEUS_PORT": env.get("PROMETHEUS_PORT") or str(free_port()),
        }
        write_env(env)
        cluster.compose("build", "--quiet", "ray-head")  # one image serves ray-*, api
        # The image this build replaced, now untagged (the build stage's layers stay cached).
        run("docker", "image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}")
        detail.append(f"{BPTRAIN_IMAGE} {image_mb(BPTRAIN_IMAGE):.0f} MB")
        detail.append(f"{prometheus} {image_mb(prometheus):.0f} MB")
    with phases.phase("up/healthy") as detail:
        cluster.compose("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), *SERVICES)
        running = cluster.compose("ps", "--format", "{{.Service}}").split()
        detail.append(f"healthy: {', '.join(sorted(running))}")
    print(
        f"cluster {cluster.project} is up: API 127.0.0.1:{env['BPTRAIN_API_PORT']} "
        f"(token: BPTRAIN_TOKEN in {ENV_FILE.relative_to(ROOT)}), "
        f"Prometheus http://127.0.0.1:{env['PROMETHEUS_PORT']}"
    )


def down(cluster: Cluster, phases: Phases) -> None:
    with phases.phase("down") as detail:
        cluster.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
        left = cluster.leftovers()
        if left:
            raise ClusterError(f"left after down: {', '.join(left)}")
        detail.append("no containers, networks or volumes left")


def test(cluster: Cluster, phases: Phases, pytest_args: list[str]) -> int:
    try:
        up(cluster, phases)
        with phases.phase("tests") as detail:
            env = {**os.environ, "BPTRAIN_CLUSTER_PROJECT": cluster.project}
            command = [sys.executable, "-m", "pytest", "-m", "cluster", "-p", "no:cacheprovider"]
            command += ["-q", "-s", "-o", "addopts=", "tests/cluster", *pytest_args]
            status = subprocess.run(command, cwd=ROOT, env=env).returncode
            detail.append("passed" if status == 0 else f"pytest exit status {status}")
        if status != 0:
            print(cluster.compose("logs", "--no-color", "--tail", "60", check=False)[-20000:])
        return status
    finally:
        down(cluster, phases)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "test", "down"))
    parser.add_argument(
        "--project", default=None, help="compose project (default: bptrain; test: bptrain-test)"
    )
    parser.add_argument("pytest_args", nargs="*", help="test: passed to pytest (after --)")
    args = parser.parse_args(argv)
    project = args.project or ("bptrain-test" if args.command == "test" else "bptrain")
    cluster, phases = Cluster(project), Phases()
    try:
        if args.command == "up":
            up(cluster, phases)
            status = 0
        elif args.command == "down":
            down(cluster, phases)
            status = 0
        else:
            status = test(cluster, phases, args.pytest_args)
    except ClusterError as error:
        print(f"cluster: {error}", file=sys.stderr)
        status = 1
    print(phases.table())
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
