"""The client side of sweeps: the sweep spec file, the SDK's resumable stream, and the
`bptrain sweep` commands against a real server with SweepService."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from bptrain import BptrainError, Client, SpecFileError, load_sweep_file
from bptrain.channel import Resumable, follow
from bptrain.cli import main
from bptrain.specfile import spec_from_dict
from bptrain.sweeps import SweepHandle
from bptrain.sweepspec import sweep_spec_from_dict
from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec

BPTRAIN = [sys.executable, "-m", "bptrain.cli"]
EXAMPLE = Path(__file__).parent.parent / "examples" / "sweep.yaml"

# A tiny sweep: three trials of a two-epoch, one-worker digits job, two at a time.
TINY: dict = {
    "name": "tiny",
    "base": digits_spec(epochs=2, workers=1),
    "parameters": [
        {"path": "optimizer.learning_rate", "log_uniform": {"low": 3e-3, "high": 3e-2}},
        {"path": "layers[0].units", "choice": [16, 32]},
    ],
    "metric": "validation_accuracy",
    "max_trials": 3,
    "parallel_trials": 2,
    "seed": 5,
}

SWEEP_YAML = """
name: s
base: {name: d, layers: [{units: 8, activation: relu}]}
parameters:
  - {path: optimizer.learning_rate, log_uniform: {low: 1e-4, high: 3e-2}}
  - {path: "layers[0].units", choice: [64, 128, 256]}
  - path: layers[0].dropout
    uniform: {low: 0, high: 0.5}
  - {path: batch_size, integer: {low: 16, high: 128, step: 16}}
  - {path: "layers[0].activation", grid: [relu, tanh]}
metric: validation_accuracy
maxTrials: 8
parallel_trials: 2
seed: 3
scheduler: {kind: asha, grace_period: 2, reduction_factor: 3}
"""


# --- the spec file ---------------------------------------------------------------------


def test_a_sweep_file_maps_onto_the_sweep_spec_message(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP_YAML)

    expected = spb.SweepSpec(
        name="s",
        base=spec_from_dict({"name": "d", "layers": [{"units": 8, "activation": "relu"}]}),
        parameters=[
            spb.SweepParameter(
                path="optimizer.learning_rate", log_uniform=spb.Range(low=1e-4, high=3e-2)
            ),
            spb.SweepParameter(path="layers[0].units", choice=spb.Values(numbers=[64, 128, 256])),
            spb.SweepParameter(path="layers[0].dropout", uniform=spb.Range(low=0, high=0.5)),
            spb.SweepParameter(path="batch_size", integer=spb.IntRange(low=16, high=128, step=16)),
            spb.SweepParameter(
                path="layers[0].activation", grid=spb.Values(texts=["relu", "tanh"])
            ),
        ],
        metric="validation_accuracy",
        max_trials=8,
        parallel_trials=2,
        seed=3,
        scheduler=spb.SweepScheduler(kind="asha", grace_period=2, reduction_factor=3),
    )
    assert load_sweep_file(path) == expected


def test_yaml_1e_4_is_a_number_and_booleans_are_the_server_s_texts(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("parameters:\n  - {path: l2, choice: [1e-4, 1E+2, -3e-1]}\n")
    assert list(load_sweep_file(path).parameters[0].choice.numbers) == [1e-4, 100.0, -0.3]
    spec = sweep_spec_from_dict({"parameters": [{"path": "p", "grid": [True, False]}]})
    assert list(spec.parameters[0].grid.texts) == ["true", "false"]


def test_the_example_sweep_file_loads() -> None:
    spec = load_sweep_file(EXAMPLE)
    assert (spec.max_trials, spec.parallel_trials, spec.base.workers) == (16, 2, 1)
    assert [p.path for p in spec.parameters] == [
        "optimizer.learning_rate",
        "layers[0].units",
        "layers[0].dropout",
    ]
    assert spec.scheduler.kind == "asha"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_trial": 3}, "sweep spec: unknown key 'max_trial' (expected one of: base, "),
        ({"scheduler": {"grace": 2}}, "sweep spec: scheduler: unknown key 'grace'"),
        ({"base": {"layer": []}}, "sweep spec: base: "),
        (
            {"parameters": [{"path": "l2", "chioce": [1]}]},
            "sweep spec: parameters[0]: unknown key 'chioce' (expected one of: choice, grid, ",
        ),
        (
            {"parameters": [{"path": "l2", "choice": [1], "uniform": {"low": 0, "high": 1}}]},
            "sweep spec: parameters[0]: needs exactly one of grid, choice, uniform, log_uniform, "
            "integer (got choice and uniform)",
        ),
        ({"parameters": [{"path": "l2"}]}, "sweep spec: parameters[0]: needs exactly one of"),
        (
            {"parameters": [{"choice": [1]}]},
            "sweep spec: parameters[0]: path: expected a field path",
        ),
        (
            {"parameters": [{"path": "l2", "uniform": [0, 1]}]},
            "sweep spec: parameters[0].uniform: expected a mapping of low and high, got list",
        ),
        (
            {"parameters": [{"path": "l2", "uniform": {"low": 0, "hi": 1}}]},
            "sweep spec: parameters[0].uniform: unknown key 'hi' (expected one of: high, low)",
        ),
        (
            {"parameters": [{"path": "l2", "uniform": {"low": 0}}]},
            "sweep spec: parameters[0].uniform: high is required",
        ),
        (
            {"parameters": [{"path": "l2", "uniform": {"low": "a", "high": 1}}]},
            "sweep spec: parameters[0].uniform.low: expected a number, got 'a'",
        ),
        (
            {"parameters": [{"path": "batch_size", "integer": {"low": 1.5, "high": 9}}]},
            "sweep spec: parameters[0].integer.low: expected an integer, got 1.5",
        ),
        (
            {"parameters": [{"path": "l2", "choice": [64, "relu"]}]},
            "sweep spec: parameters[0].choice: takes numbers or texts, not both "
            "(got 64 and 'relu')",
        ),
        (
            {"parameters": [{"path": "l2", "choice": []}]},
            "sweep spec: parameters[0].choice: expected a",
        ),
        ({"parameters": {"path": "l2"}}, "sweep spec: parameters: expected a list, got dict"),
        ([1, 2], "sweep spec: expected a mapping of SweepSpec fields, got list"),
    ],
)
def test_bad_sweep_specs_are_clear_client_side_errors(data: object, message: str) -> None:
    with pytest.raises(SpecFileError) as raised:
        sweep_spec_from_dict(data)
    assert str(raised.value).startswith(message), str(raised.value)


# --- the SDK's stream, resumed ---------------------------------------------------------


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the server restarted"


def _event(seq: int) -> spb.StreamSweepResponse:
    return spb.StreamSweepResponse(event=spb.SweepEvent(seq=seq))


def test_a_dropped_sweep_stream_resumes_after_the_last_event() -> None:
    opened: list[int] = []

    def open_after(seq: int) -> Iterator[spb.StreamSweepResponse]:
        opened.append(seq)
        if len(opened) == 1:
            yield _event(1)
            yield _event(2)
            raise Unavailable()
        yield _event(3)
        yield spb.StreamSweepResponse(final=spb.Sweep(sweep_id="sweep-x"))

    source = Resumable(open_after, lambda item: item.event.seq, "sweep stream", "event", "sweep")
    reconnects: list[tuple[str, int]] = []
    items = list(follow(source, 0, None, lambda *args: reconnects.append(args)))
    assert [i.event.seq for i in items[:-1]] == [1, 2, 3] and items[-1].final.sweep_id
    assert opened == [0, 2] and reconnects == [("UNAVAILABLE", 2)]


# --- against a server ------------------------------------------------------------------


def bptrain(*args: str, process: bool = False) -> subprocess.CompletedProcess:
    """The `bptrain` command: in a process of its own as a user runs it, or (quicker) in
    this one, where an exception it lets out fails the test."""
    if process:
        return subprocess.run([*BPTRAIN, *args], capture_output=True, text=True, timeout=120)
    result = CliRunner().invoke(main, list(args))
    if not isinstance(result.exception, (SystemExit, type(None))):
        raise AssertionError("".join(traceback.format_exception(result.exception)))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def sweep_server(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API server with SweepService over a fresh store; yields "host:port"."""
    from services.api.server import ServerConfig, create_server
    from services.jobs.manager import JobManager, JobsConfig
    from services.sweeps.manager import SweepManager

    jobs = JobManager(JobsConfig(storage=tmp_path_factory.mktemp("sweep-storage")))
    sweeps = SweepManager(jobs)
    running = create_server(ServerConfig(port=0), jobs, sweeps)
    yield f"127.0.0.1:{running.port}"
    running.stop(grace_s=1.0)
    sweeps.shutdown()
    jobs.shutdown()


@pytest.fixture(scope="module")
def finished(sweep_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny sweep submitted with --follow: (its id, the command's stdout)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = bptrain(
        "sweep", "submit", str(path), "--follow", "--server", sweep_server, process=True
    )
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("submitted sweep-"), result.stderr
    return first.split()[1], result.stdout


@pytest.mark.slow
def test_follow_shows_the_trials_and_ends_with_the_best(finished: tuple[str, str]) -> None:
    sweep_id, stdout = finished
    assert f"{sweep_id} tiny  SUCCEEDED" in stdout
    assert "optimizer.learning_rate" in stdout and "layers[0].units" in stdout
    assert stdout.strip().splitlines()[-1].startswith("best: trial ")


@pytest.mark.slow
def test_json_output_is_the_sweep_and_watch_of_an_ended_sweep_exits_0(
    sweep_server: str, finished: tuple[str, str]
) -> None:
    sweep_id, _ = finished
    for command in ("get", "watch"):
        result = bptrain("sweep", command, sweep_id, "--output", "json", "--server", sweep_server)
        assert result.returncode == 0, result.stderr
        sweep = json.loads(result.stdout)
        assert (sweep["sweep_id"], sweep["state"]) == (sweep_id, "SUCCEEDED")
        assert len(sweep["trials"]) == 3 and "best_trial" in sweep
    listed = bptrain("sweep", "list", "--output", "json", "--server", sweep_server)
    assert sweep_id in [s["sweep_id"] for s in json.loads(listed.stdout)]


@pytest.mark.slow
def test_best_writes_the_best_trial_s_weights(
    sweep_server: str, finished: tuple[str, str], tmp_path: Path
) -> None:
    sweep_id, _ = finished
    out = tmp_path / "best.npz"
    result = bptrain("sweep", "best", sweep_id, "-o", str(out), "--server", sweep_server)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: trial ")
    with Client(sweep_server) as client:
        handle = SweepHandle(client, client.get_sweep(sweep_id))
        best = handle.best_trial()
        units = next(int(v.number) for v in best.parameters if v.path == "layers[0].units")
        events = list(handle.events(after_seq=2))
    with np.load(out, allow_pickle=False) as weights:
        assert weights["W1"].shape == (64, units)
    assert events[0].event.seq == 3 and events[-1].final.sweep_id == sweep_id


@pytest.mark.slow
def test_on_a_terminal_the_trials_are_a_live_table(
    sweep_server: str, finished: tuple[str, str]
) -> None:
    from bptrain.sweep_progress import follow_sweep

    sweep_id, _ = finished
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with Client(sweep_server) as client:
        final = follow_sweep(client, sweep_id, console)
    assert final.state == pb.SUCCEEDED
    drawn = console.file.getvalue()
    assert "layers[0].units" in drawn and "validation_accuracy" in drawn


@pytest.mark.slow
def test_cancel_of_a_running_sweep_ends_it_cancelled(sweep_server: str, tmp_path: Path) -> None:
    with Client(sweep_server) as client:
        handle = client.submit_sweep({**TINY, "base": digits_spec(epochs=500, workers=1)})
        sweep_id = handle.sweep_id
        result = bptrain("sweep", "cancel", sweep_id, "-O", "json", "--server", sweep_server)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "CANCELLED"
        watched = bptrain("sweep", "watch", sweep_id, "--server", sweep_server)
        assert watched.returncode == 1 and "CANCELLED" in watched.stdout
        best = bptrain("sweep", "best", sweep_id, "--server", sweep_server)
        assert best.returncode == 1
        assert best.stderr.startswith(f"error: FAILED_PRECONDITION: sweep '{sweep_id}' has no")
        assert len(best.stderr.splitlines()) == 1
        with pytest.raises(BptrainError, match="has no best trial"):
            handle.best_weights(tmp_path / "none.npz")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["get", "watch", "cancel", "best"])
def test_unknown_sweeps_are_one_line_errors(sweep_server: str, command: str) -> None:
    result = bptrain("sweep", command, "sweep-nope", "--server", sweep_server)
    assert result.returncode == 1
    assert result.stderr == "error: NOT_FOUND: unknown sweep 'sweep-nope'\n"


@pytest.mark.slow
def test_an_error_in_a_process_of_its_own_is_one_line_without_a_traceback(
    sweep_server: str,
) -> None:
    result = bptrain("sweep", "get", "sweep-nope", "--server", sweep_server, process=True)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: NOT_FOUND: unknown sweep 'sweep-nope'\n"


@pytest.mark.slow
def test_bad_files_are_one_line_errors_and_validate_only_fills_in_defaults(
    sweep_server: str, tmp_path: Path
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("parameters:\n  - {path: l2, chioce: [1, 2]}\n")
    refused = tmp_path / "refused.yaml"
    refused.write_text(
        yaml.safe_dump({**TINY, "parameters": [{"path": "optimizer.lr", "choice": [1]}]})
    )
    for path, expected in [
        (typo, f"error: {typo}: parameters[0]: unknown key 'chioce'"),
        (refused, "error: INVALID_ARGUMENT: parameters[0].path"),
    ]:
        result = bptrain("sweep", "submit", str(path), "--server", sweep_server)
        assert result.returncode == 1 and result.stderr.startswith(expected), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "'chioce'" in result.stderr or "'optimizer.lr'" in result.stderr
    checked = bptrain("sweep", "submit", str(EXAMPLE), "--validate-only", "--server", sweep_server)
    assert checked.returncode == 0, checked.stderr
    spec = json.loads(checked.stdout)
    assert spec["max_trials"] == 16 and spec["scheduler"]["kind"] == "asha"
    assert spec["base"]["workers"] == 1 and spec["direction"] == "maximize"


# --- how a sweep is shown ---------------------------------------------------------------


def _trial(number: int, state: int, metric: float, **fields: object) -> spb.Trial:
    return spb.Trial(
        number=number,
        job_id=f"job-{number}",
        state=state,
        metric=metric,
        parameters=[
            spb.ParameterValue(path="optimizer.learning_rate", number=0.00123456),
            spb.ParameterValue(path="layers[0].activation", text="tanh"),
        ],
        **fields,
    )


def test_a_sweep_is_its_line_its_trials_and_its_best_one(capsys: pytest.CaptureFixture) -> None:
    from bptrain.sweep_render import print_sweep

    spec = sweep_spec_from_dict(
        {
            "parameters": [
                {"path": "optimizer.learning_rate", "uniform": {"low": 0.001, "high": 0.01}},
                {"path": "layers[0].activation", "choice": ["relu", "tanh"]},
            ],
            "metric": "validation_accuracy",
            "max_trials": 4,
        }
    )
    sweep = spb.Sweep(
        sweep_id="sweep-1",
        name="s",
        state=pb.SUCCEEDED,
        spec=spec,
        best_trial=0,
        trials=[
            _trial(0, pb.SUCCEEDED, 0.97, step=40, total_steps=40, rung=2),
            _trial(1, pb.CANCELLED, 0.5, step=8, total_steps=40, stopped_early=True),
        ],
    )
    print_sweep(sweep, "table")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep-1 s  SUCCEEDED  trials 2/4  steps 48/80"
    assert [cell.strip() for cell in lines[4].split("│")[1:-1]] == [
        "0", "0.001235", "tanh", "SUCCEEDED", "2", "0.9700", "40/40"
    ]  # fmt: skip
    assert "STOPPED" in lines[5] and "8/40" in lines[5]
    assert lines[-1] == (
        "best: trial 0 (job-0) validation_accuracy 0.9700  "
        "optimizer.learning_rate=0.001235 layers[0].activation=tanh"
    )
    print_sweep(spb.Sweep(sweep_id="sweep-2", state=pb.RUNNING, spec=spec), "table")
    assert capsys.readouterr().out.splitlines()[-1] == "no best trial yet"
