"""`stop_when`: a job that stops itself at its target, or when its metric stops improving."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from bptrain import BptrainError, Client
from bptrain.specfile import spec_from_dict
from bptrain.v1 import training_pb2 as pb
from services.api.convert import spec_from_proto, spec_to_proto
from services.errors import InvalidSpecError
from services.jobs.early_stopping import EarlyStopper, StopWhenSpec
from services.jobs.runner_launch import JobSetup, runner_options
from services.jobs.runner_options import RunnerOptions
from services.jobs.training_data import prepare_data
from tests.conftest import digits_spec

# --- the rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metric": "accuracy", "at_least": 0.9}, "metric must be one of"),
        ({"metric": "loss"}, "needs at_least, at_most or patience_evaluations"),
        ({"at_least": 0.9}, "metric is required"),
        ({"metric": "loss", "at_least": 1.0, "at_most": 2.0}, "at_most cannot be given"),
        ({"metric": "loss", "at_most": math.nan}, "at_most must be a finite number"),
        ({"metric": "loss", "patience_evaluations": 0}, "patience_evaluations must be in"),
    ],
)
def test_a_bad_rule_names_its_field(fields: dict, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        StopWhenSpec(**fields)


def test_no_rule_never_stops() -> None:
    stopper = EarlyStopper(StopWhenSpec())
    assert all(stopper.observe(step, {"loss": 1.0}) is None for step in range(1, 100))


def test_a_target_stops_at_the_first_evaluation_that_reaches_it() -> None:
    stopper = EarlyStopper(StopWhenSpec(metric="validation_accuracy", at_least=0.9))
    assert stopper.observe(10, {"validation_accuracy": 0.85, "loss": 0.5}) is None
    assert stopper.observe(20, {"loss": 0.4}) is None  # no validation at this step
    reason = stopper.observe(30, {"validation_accuracy": 0.91})
    assert reason == "reached validation_accuracy ≥ 0.9 at step 30 (0.91)"


def test_at_most_for_a_loss() -> None:
    stopper = EarlyStopper(StopWhenSpec(metric="validation_loss", at_most=0.1))
    assert stopper.observe(5, {"validation_loss": 0.2}) is None
    assert stopper.observe(10, {"validation_loss": 0.1}).startswith("reached validation_loss ≤ 0.1")


def test_patience_counts_evaluations_without_improvement_in_the_metrics_direction() -> None:
    stopper = EarlyStopper(StopWhenSpec(metric="validation_loss", patience_evaluations=2))
    for step, value in [(10, 0.5), (20, 0.4), (30, 0.45), (40, 0.35), (50, 0.36)]:
        assert stopper.observe(step, {"validation_loss": value}) is None
    reason = stopper.observe(60, {"validation_loss": 0.35})  # equal is not better
    assert reason == (
        "validation_loss did not improve for 2 evaluations (best 0.35 at step 40); "
        "stopped at step 60"
    )
    accuracy = EarlyStopper(StopWhenSpec(metric="validation_accuracy", patience_evaluations=1))
    assert accuracy.observe(1, {"validation_accuracy": 0.5}) is None
    assert accuracy.observe(2, {"validation_accuracy": 0.6}) is None  # higher is better
    assert accuracy.observe(3, {"validation_accuracy": 0.55}) is not None


def test_an_evaluation_seen_again_after_a_restore_is_not_counted_twice() -> None:
    stopper = EarlyStopper(StopWhenSpec(metric="loss", patience_evaluations=2))
    assert stopper.observe(10, {"loss": 1.0}) is None
    assert stopper.observe(20, {"loss": 1.5}) is None
    assert stopper.observe(20, {"loss": 1.5}) is None  # step 20 trained again
    assert stopper.observe(30, {"loss": 1.2}) is not None


@pytest.mark.parametrize(
    "history",
    [((0, 1.0),), ((3, 1.0), (2, 1.0)), ((2, 1.0), (2, 0.5)), ((2, 1.0), (9, 1.0))],
    ids=["step-0", "out-of-order", "repeated", "past-the-resume"],
)
def test_a_runner_refuses_a_stop_history_that_is_not_one_of_stored_steps(history) -> None:
    with pytest.raises(ValueError, match="stop_history must hold increasing steps in"):
        RunnerOptions(resume_at_most=8, stop_history=history)


def test_the_runner_options_carry_the_stop_history() -> None:
    setup = JobSetup(
        weights_path=Path("w.npz"), checkpoint_dir=Path("c"), datasets_dir=Path("d"), worker_cpus=1
    )
    history = ((2, 1.5), (4, 1.25))
    options = runner_options(setup, resume_at_most=5, stop_history=history)
    assert (options.resume_at_most, options.stop_history) == (5, history)
    assert runner_options(setup, resume_at_most=0).stop_history == ()


# --- in the spec -----------------------------------------------------------------------


def test_the_rule_round_trips_through_the_spec() -> None:
    rule = {"metric": "validation_accuracy", "at_least": 0.95, "patience_evaluations": 3}
    spec = spec_from_proto(spec_from_dict(digits_spec(stop_when=rule)))
    assert spec.stop_when == StopWhenSpec(**rule)
    message = spec_to_proto(spec)
    assert message.stop_when.metric == "validation_accuracy"
    assert message.stop_when.at_least == 0.95 and not message.stop_when.HasField("at_most")
    assert spec_from_proto(message) == spec
    assert not spec_to_proto(spec_from_proto(spec_from_dict(digits_spec()))).HasField("stop_when")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"stop_when": {"metric": "validation_loss", "at_most": 0.1},
             "dataset": {"name": "digits", "validation_fraction": 0}},
            "stop_when.metric validation_loss needs a validation split",
        ),
        (
            {"stop_when": {"metric": "validation_accuracy", "at_least": 0.9},
             "dataset": {"name": "synthetic/regression"},
             "layers": [{"units": 1, "activation": "identity"}], "loss": "mse"},
            "stop_when.metric validation_accuracy applies only to classification",
        ),
        ({"stop_when": {"metric": "f1", "at_least": 0.9}}, "stop_when.metric must be one of"),
    ],
)  # fmt: skip
def test_a_rule_the_job_cannot_use_is_refused_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=re.escape(message)):
        spec_from_proto(spec_from_dict(digits_spec(**changes)))


# --- jobs --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [{}, {"ps_shards": 2}, {"consistency": "asp"}],
    ids=["bsp-colocated", "bsp-parameter-servers", "asp"],
)
def test_a_job_that_reaches_its_target_succeeds_early_with_the_reason(
    client: Client, mode: dict
) -> None:
    rule = {"metric": "validation_accuracy", "at_least": 0.9}
    job = client.submit(digits_spec(epochs=200, stop_when=rule, **mode))
    final = job.wait()
    assert final.state == pb.SUCCEEDED, final.reason
    match = re.fullmatch(
        r"reached validation_accuracy ≥ 0\.9 at step (\d+) \(([\d.]+)\)", final.reason
    )
    assert match, final.reason
    stopped_at = int(match.group(1))
    assert float(match.group(2)) >= 0.9
    assert stopped_at < final.total_steps  # it did stop early
    points = list(client.metrics(job.job_id))
    assert [p.step for p in points] == list(range(1, stopped_at + 1))
    assert points[-1].validation_accuracy >= 0.9
    assert all(not p.HasField("validation_accuracy") or p.validation_accuracy < 0.9
               for p in points[:-1])  # fmt: skip
    # The weights are θ after the stopping step: they score exactly that step's
    # validation accuracy on the job's own validation split.
    data = prepare_data(spec_from_proto(final.spec))
    predicted = client.model(job.job_id).predict_classes(data.X_val)
    assert float((predicted == data.y_val).mean()) == pytest.approx(
        points[-1].validation_accuracy, abs=1e-9
    )
    assert client.get(job.job_id).spec.stop_when.metric == "validation_accuracy"


@pytest.mark.slow
def test_a_job_whose_metric_stops_improving_succeeds_after_its_patience(client: Client) -> None:
    rule = {"metric": "loss", "patience_evaluations": 2}
    final = client.submit(digits_spec(epochs=500, eval_every=5, stop_when=rule)).wait()
    assert final.state == pb.SUCCEEDED, final.reason
    assert re.fullmatch(
        r"loss did not improve for 2 evaluations \(best [\d.e-]+ at step \d+\); "
        r"stopped at step \d+",
        final.reason,
    ), final.reason
    assert final.step < final.total_steps


def test_a_bad_rule_is_invalid_argument_over_the_api(client: Client) -> None:
    with pytest.raises(BptrainError) as refused:
        client.submit(digits_spec(stop_when={"metric": "loss"}))
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "stop_when.metric needs at_least" in refused.value.details
