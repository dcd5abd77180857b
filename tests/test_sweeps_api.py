"""SweepService over a real port: a sweep with ASHA trains its trials as ordinary jobs,
stops the losers (CANCELLED, with the scheduler's reason), keeps the best, streams
its events resumably, and is cancelled, listed, and kept from other principals."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import sweeps_pb2_grpc, training_pb2_grpc
from bptrain.v1 import training_pb2 as pb
from services.api.server import RunningServer, ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from services.sweeps.manager import SweepManager
from services.tenancy import parse_principals

pytestmark = pytest.mark.slow

TOKENS = {"alice": "alice-token-0000000001", "bob": "bob-token-00000000002", "root": "r" * 24}
TOKENS_FILE = "\n".join(
    f"{name}:{'admin' if name == 'root' else 'user'}:{token}" for name, token in TOKENS.items()
)


class Caller:
    """Both services' stubs, calling as one principal."""

    def __init__(self, channel: grpc.Channel, name: str) -> None:
        self.sweeps = sweeps_pb2_grpc.SweepServiceStub(channel)
        self.jobs = training_pb2_grpc.TrainingServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {TOKENS[name]}"),)

    def __call__(self, stub, method: str, request, **kwargs):
        return getattr(stub, method)(request, metadata=self.metadata, timeout=60, **kwargs)

    def code(self, stub, method: str, request) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as caught:
            answer = self(stub, method, request)
            if method.startswith("Stream"):
                list(answer)
        return caught.value.code()


@pytest.fixture(scope="module")
def served(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, JobManager, grpc.Channel]]:
    jobs = JobManager(JobsConfig(storage=tmp_path_factory.mktemp("sweeps")))
    sweeps = SweepManager(jobs)
    config = ServerConfig(port=0, principals=parse_principals(TOKENS_FILE))
    running = create_server(config, jobs, sweeps)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield running, jobs, channel
    running.stop(grace_s=1.0)
    sweeps.shutdown()
    jobs.shutdown()


@pytest.fixture
def alice(served: tuple) -> Caller:
    return Caller(served[2], "alice")


def base(epochs: int = 80) -> pb.JobSpec:
    return pb.JobSpec(
        name="digits",
        layers=[
            pb.LayerSpec(units=32, activation="relu"),
            pb.LayerSpec(units=10, activation="identity"),
        ],
        optimizer=pb.OptimizerSpec(kind="adam", learning_rate=0.003),
        batch_size=32,
        epochs=epochs,
        workers=1,
        dataset=pb.DatasetSpec(name="digits", validation_fraction=0.1),
        seed=1,
    )


def asha_sweep(**fields) -> spb.SweepSpec:
    return spb.SweepSpec(
        name="lr-search",
        base=base(),
        parameters=[
            spb.SweepParameter(
                path="optimizer.learning_rate", log_uniform=spb.Range(low=1e-5, high=3e-2)
            ),
            spb.SweepParameter(path="layers[0].units", choice=spb.Values(numbers=[128, 256])),
        ],
        **{
            "max_trials": 6,
            "parallel_trials": 2,
            "seed": 4,
            "scheduler": spb.SweepScheduler(kind="asha", grace_period=1, reduction_factor=3),
            **fields,
        },
    )


def follow(caller: Caller, sweep_id: str, after_seq: int = 0) -> tuple[list, spb.Sweep]:
    events, final = [], None
    for message in caller(
        caller.sweeps, "StreamSweep", spb.StreamSweepRequest(sweep_id=sweep_id, after_seq=after_seq)
    ):
        if message.HasField("event"):
            events.append(message.event)
        else:
            final = message.final
    assert final is not None, "the stream ends with the final sweep"
    return events, final


def test_an_asha_sweep_stops_losers_and_keeps_the_best(served: tuple, alice: Caller) -> None:
    _, jobs, _ = served
    sweep = alice(alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=asha_sweep()))
    assert sweep.sweep_id.startswith("sweep-") and sweep.state == pb.RUNNING
    events, final = follow(alice, sweep.sweep_id)

    assert final.state == pb.SUCCEEDED, final.reason
    assert len(final.trials) == 6 and final.HasField("best_trial")
    best = final.trials[final.best_trial]
    finished = [t for t in final.trials if t.state == pb.SUCCEEDED]
    assert best.metric == max(t.metric for t in finished) and best.metric > 0.9
    assert final.reason.startswith(f"best: trial {best.number}, validation_accuracy")
    # A stop reaches a job within a second; these trials train for longer than that.
    stopped = [t for t in final.trials if t.stopped_early]
    assert stopped, "the wide learning-rate range makes some trials lose at a rung"
    for trial in stopped:
        assert trial.reason.startswith(f"stopped by ASHA at rung {trial.rung}: validation_accuracy")
        job = alice(alice.jobs, "GetJob", pb.GetJobRequest(job_id=trial.job_id))
        if trial.state == pb.SUCCEEDED:  # stopped at a late rung, its job done before the cancel
            assert trial.reason.endswith("(its job had finished already)")
            continue
        assert trial.state == pb.CANCELLED
        assert (job.state, job.reason) == (pb.CANCELLED, trial.reason)
    assert any(t.state == pb.CANCELLED and t.step < t.total_steps for t in stopped)
    assert final.steps_trained < final.steps_full == 6 * best.total_steps

    # Trials are ordinary jobs, tagged with their sweep; one job per trial.
    assert len({t.job_id for t in final.trials}) == 6
    for trial in final.trials:
        job = alice(alice.jobs, "GetJob", pb.GetJobRequest(job_id=trial.job_id))
        assert (job.sweep_id, job.trial_number) == (final.sweep_id, trial.number)
        assert job.name == f"lr-search/trial-{trial.number}"
        values = {p.path: p.number for p in trial.parameters}
        assert job.spec.optimizer.learning_rate == pytest.approx(values["optimizer.learning_rate"])
        assert job.spec.layers[0].units == values["layers[0].units"]

    # The best trial's weights come through GetWeights on its job.
    chunks = list(alice(alice.jobs, "GetWeights", pb.GetWeightsRequest(job_id=best.job_id)))
    data = b"".join(c.data for c in chunks[:-1])
    assert hashlib.sha256(data).hexdigest() == chunks[-1].trailer.sha256
    assert np.load(io.BytesIO(data))["W1"].shape == (64, values_of(best)["layers[0].units"])

    # Events: each trial started once and finished once; stops precede their finish.
    kinds = [(e.kind, e.trial.number) for e in events]
    for number in range(6):
        assert kinds.count((spb.TRIAL_STARTED, number)) == 1
        assert kinds.count((spb.TRIAL_FINISHED, number)) == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for trial in stopped:
        assert kinds.index((spb.TRIAL_STOPPED, trial.number)) < kinds.index(
            (spb.TRIAL_FINISHED, trial.number)
        )
    # A resumed stream gives exactly the events after its cursor, then the final sweep.
    tail, again = follow(alice, sweep.sweep_id, after_seq=5)
    assert [e.SerializeToString() for e in tail] == [e.SerializeToString() for e in events[5:]]
    assert again.best_trial == final.best_trial

    registry = jobs.metrics.registry
    assert registry.get_sample_value("bptrain_sweeps", {"state": "SUCCEEDED"}) >= 1
    counted = registry.get_sample_value(
        "bptrain_sweep_trials_finished_total", {"outcome": "stopped"}
    )
    assert counted >= sum(t.state == pb.CANCELLED for t in stopped)


def values_of(trial: spb.Trial) -> dict:
    return {
        p.path: int(p.number) if p.path.endswith("units") else p.number for p in trial.parameters
    }


def test_validate_only_fills_defaults_and_submission_ids_are_idempotent(alice: Caller) -> None:
    checked = alice(
        alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=asha_sweep(), validate_only=True)
    )
    assert checked.sweep_id == "" and checked.spec.metric == "validation_accuracy"
    assert (checked.spec.direction, checked.spec.sampler) == ("maximize", "random")
    assert checked.spec.base.optimizer.beta1 == pytest.approx(0.9)  # the base's defaults too

    spec = asha_sweep(max_trials=1)
    spec.base.epochs = 1
    first = alice(
        alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec, submission_id="s-1")
    )
    again = alice(
        alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec, submission_id="s-1")
    )
    assert again.sweep_id == first.sweep_id
    spec.seed = 99
    code = alice.code(
        alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec, submission_id="s-1")
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    follow(alice, first.sweep_id)


def test_a_bad_sweep_is_invalid_argument_naming_the_field(alice: Caller) -> None:
    spec = asha_sweep()
    spec.parameters[0].path = "optimizer.lr"
    with pytest.raises(grpc.RpcError) as caught:
        alice(alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("parameters[0].path unknown field 'optimizer.lr'")
    for request, method in (
        (spb.GetSweepRequest(), "GetSweep"),
        (spb.CancelSweepRequest(), "CancelSweep"),
        (spb.StreamSweepRequest(), "StreamSweep"),
        (spb.StreamSweepRequest(sweep_id="sweep-000000000000", after_seq=-1), "StreamSweep"),
    ):
        assert alice.code(alice.sweeps, method, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_cancelling_a_sweep_cancels_its_running_trials_and_starts_none(
    served: tuple, alice: Caller
) -> None:
    spec = asha_sweep(max_trials=8)
    spec.base.epochs = 500  # long trials: still running when the cancel comes
    spec.scheduler.kind = "none"
    sweep = alice(alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec))
    deadline = time.monotonic() + 60
    while True:
        seen = alice(alice.sweeps, "GetSweep", spb.GetSweepRequest(sweep_id=sweep.sweep_id))
        if sum(t.state == pb.RUNNING for t in seen.trials) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    cancelled = alice(alice.sweeps, "CancelSweep", spb.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert (cancelled.state, cancelled.reason) == (pb.CANCELLED, "cancelled by request")
    assert len(cancelled.trials) == 2  # none started after the cancel
    for trial in cancelled.trials:
        job = alice(alice.jobs, "GetJob", pb.GetJobRequest(job_id=trial.job_id))
        assert job.state == pb.CANCELLED
    _, final = follow(alice, sweep.sweep_id)
    assert final.state == pb.CANCELLED and all(t.state == pb.CANCELLED for t in final.trials)
    again = alice(alice.sweeps, "CancelSweep", spb.CancelSweepRequest(sweep_id=sweep.sweep_id))
    assert again.state == pb.CANCELLED  # an ended sweep is returned as it is


def test_sweeps_are_their_owners_and_lists_page(served: tuple, alice: Caller) -> None:
    bob, root = Caller(served[2], "bob"), Caller(served[2], "root")
    spec = asha_sweep(max_trials=1)
    spec.base.epochs = 1
    mine = alice(alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec))
    assert mine.owner == "alice"
    for method, request in (
        ("GetSweep", spb.GetSweepRequest(sweep_id=mine.sweep_id)),
        ("CancelSweep", spb.CancelSweepRequest(sweep_id=mine.sweep_id)),
        ("StreamSweep", spb.StreamSweepRequest(sweep_id=mine.sweep_id)),
        ("GetSweep", spb.GetSweepRequest(sweep_id="sweep-000000000000")),
    ):
        assert bob.code(bob.sweeps, method, request) == grpc.StatusCode.NOT_FOUND, method
    assert bob(bob.sweeps, "ListSweeps", spb.ListSweepsRequest()).sweeps == []
    _, final = follow(alice, mine.sweep_id)
    trial_job = final.trials[0].job_id
    assert (
        bob.code(bob.jobs, "GetJob", pb.GetJobRequest(job_id=trial_job))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        root(root.sweeps, "GetSweep", spb.GetSweepRequest(sweep_id=mine.sweep_id)).owner == "alice"
    )

    newer = alice(alice.sweeps, "SubmitSweep", spb.SubmitSweepRequest(spec=spec))
    listed, token = [], ""
    while True:
        page = alice(
            alice.sweeps, "ListSweeps", spb.ListSweepsRequest(page_size=1, page_token=token)
        )
        listed += [s.sweep_id for s in page.sweeps]
        token = page.next_page_token
        if not token:
            break
    assert listed[:2] == [newer.sweep_id, mine.sweep_id]  # newest first
    assert len(listed) == len(set(listed))
    follow(alice, newer.sweep_id)
    done = alice(alice.sweeps, "ListSweeps", spb.ListSweepsRequest(state=pb.SUCCEEDED))
    assert mine.sweep_id in [s.sweep_id for s in done.sweeps]
