"""services/node.py, the api container's entrypoint: join the Ray cluster as a node with
no CPUs, then become the server. A fake `ray` on the PATH records what it was asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services import node

ROOT = Path(__file__).resolve().parent.parent


def fake_ray(directory: Path, status: int) -> dict[str, str]:
    """An environment whose `ray` writes its arguments to ray.args and exits `status`."""
    script = directory / "ray"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{directory}/ray.args"\nexit {status}\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def test_it_joins_without_cpus_then_becomes_the_command(tmp_path: Path) -> None:
    env = fake_ray(tmp_path, status=0)
    command = ["sh", "-c", "echo serving $$"]
    done = subprocess.run(
        [sys.executable, "-m", "services.node", "ray-head:6379", "--", *command],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("serving ")
    [joined] = (tmp_path / "ray.args").read_text().splitlines()
    assert joined.split() == node.ray_start("ray-head:6379")[1:]
    assert "--address=ray-head:6379" in joined and "--num-cpus=0" in joined


def test_a_cluster_that_never_answers_is_exit_status_1_and_says_so(tmp_path: Path) -> None:
    env = fake_ray(tmp_path, status=1)
    code = (
        "import sys; from services import node; node.RETRY_S = 0.0;"
        "sys.exit(node.main(['ray-head:6379', '--', 'touch', 'ran']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "could not join the Ray cluster at ray-head:6379" in done.stderr
    assert not (tmp_path / "ran").exists()  # the command never ran


@pytest.mark.parametrize(
    "argv",
    [[], ["ray-head:6379"], ["ray-head:6379", "--"], ["ray-head:6379", "bptrain"], ["", "--", "x"]],
)
def test_bad_arguments_print_the_usage(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert node.main(argv) == 2
    assert "usage: python -m services.node HOST:PORT -- COMMAND" in capsys.readouterr().err
