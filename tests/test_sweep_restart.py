"""The API server is killed mid-sweep and restarted: the sweep goes on where it was, no
trial is run twice (one job per trial, each trial started once) and no decision is
made twice (Optuna's study holds exactly the sweep's trials; each stop comes once)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest

from bptrain import Client
from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec
from tests.processes import start_api

pytestmark = pytest.mark.slow

TRIALS = 4


def sweep_spec() -> dict:
    base = digits_spec(epochs=40, batch_size=32, workers=1, checkpoint_every=50)
    base["layers"] = [{"units": 128, "activation": "relu"}, base["layers"][-1]]
    return {
        "name": "restart",
        "base": base,
        "parameters": [
            {"path": "optimizer.learning_rate", "log_uniform": {"low": 1e-5, "high": 3e-2}},
        ],
        "max_trials": TRIALS,
        "parallel_trials": 2,
        "seed": 4,
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    }


def test_a_sweep_goes_on_after_its_api_server_is_killed(cluster: dict, tmp_path: Path) -> None:
    api, port = start_api(tmp_path, cluster["address"], cluster["env"])
    with Client(f"127.0.0.1:{port}") as client:
        sweep = client.submit_sweep(sweep_spec())
        before = []
        for item in client.stream_sweep(sweep.sweep_id):
            before.append(item.event)
            if item.event.kind == spb.TRIAL_FINISHED:
                break  # one trial done, others running
    api.send_signal(signal.SIGKILL)  # a crash: no graceful shutdown
    api.wait()
    api, port = start_api(tmp_path, cluster["address"], cluster["env"])
    try:
        with Client(f"127.0.0.1:{port}") as client:
            after = []
            final = None
            for item in client.stream_sweep(sweep.sweep_id, after_seq=before[-1].seq):
                if item.HasField("event"):
                    after.append(item.event)
                else:
                    final = item.final
            assert final is not None and final.state == pb.SUCCEEDED, final
            events = before + after
            assert [e.seq for e in events] == list(range(1, len(events) + 1))  # none lost
            kinds = [(e.kind, e.trial.number) for e in events]
            for number in range(TRIALS):
                assert kinds.count((spb.TRIAL_STARTED, number)) == 1
                assert kinds.count((spb.TRIAL_FINISHED, number)) == 1
                assert kinds.count((spb.TRIAL_STOPPED, number)) <= 1
            assert len(final.trials) == TRIALS
            assert len({t.job_id for t in final.trials}) == TRIALS  # one job per trial
            tagged = [j for j in client.list() if j.sweep_id == sweep.sweep_id]
            assert sorted(j.trial_number for j in tagged) == list(range(TRIALS))
            for trial in final.trials:
                job = client.get(trial.job_id)
                assert job.state == trial.state and job.state in (pb.SUCCEEDED, pb.CANCELLED)
            study = optuna.load_study(
                study_name=sweep.sweep_id, storage=f"sqlite:///{tmp_path / 'sweeps-optuna.db'}"
            )
            assert [t.number for t in study.trials] == list(range(TRIALS))  # none asked twice
            assert all(t.state.is_finished() for t in study.trials)
    finally:
        api.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert api.wait(timeout=60) == 0, time.monotonic() - started
