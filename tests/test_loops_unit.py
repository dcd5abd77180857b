"""The bsp step loop (`bsp_loop.train_bsp`, as tasks and as a compiled graph) against a
fake cohort, without Ray: step order, checkpoints, the lead, repairs and the repair
budget, cancellation, early stopping, divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray.exceptions import RayActorError

from services.jobs import faults
from services.jobs.bsp_loop import train_bsp
from services.jobs.early_stopping import StopWhenSpec
from services.jobs.faults import STEP_TIMEOUT_S
from services.jobs.lead import Lead
from services.jobs.outcomes import JobCancelled, JobFailed, StoppedEarly
from tests.fake_cohort import FakeCohort, job_spec, make_run
from tests.fake_ray import HANG, FakeRay

STEPS = list(range(1, 11))


def bsp_cohort(*, faults=None, **spec) -> FakeCohort:
    return FakeCohort(job_spec(**spec), FakeRay(), faults=faults)


@pytest.mark.parametrize("transport", ["tasks", "graph"])
def test_each_step_is_reported_once_in_order_with_a_checkpoint_every_n(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    cohort = bsp_cohort(checkpoint_every=3)
    harness = make_run(monkeypatch, cohort, transport=transport)
    train_bsp(harness.run, 0)
    assert cohort.issued == STEPS
    assert harness.stored() == STEPS
    assert cohort.checkpoints.saved == [3, 6, 9, 10]  # every 3 steps, and after the last


def test_a_job_resumed_from_a_checkpoint_trains_only_the_steps_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = bsp_cohort()
    harness = make_run(monkeypatch, cohort)
    train_bsp(harness.run, 6)
    assert cohort.issued == [7, 8, 9, 10]


def test_without_a_graph_the_steps_go_as_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort()
    cohort.has_graph = False
    harness = make_run(monkeypatch, cohort, transport="graph")
    train_bsp(harness.run, 0)
    assert harness.stored() == STEPS


def test_the_lead_holds_the_loop_until_the_store_records(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort()
    lead = Lead(10, max_s=5.0, min_steps=4, clock=lambda: 0.0)  # limit: recorded + 4
    holds: list[tuple[int, int]] = []

    def store_catches_up() -> bool:  # asked while the loop is held
        holds.append((cohort.published[-1], cohort.issued[-1]))
        lead.record(cohort.published[-1] - 1)  # the store one step behind
        return False

    harness = make_run(monkeypatch, cohort, lead=lead, is_waiting_cancelled=store_catches_up)
    train_bsp(harness.run, 0)
    assert holds == [(4, 4), (7, 7)]  # recorded 3: limit 7; recorded 6: limit 10, the last
    assert harness.stored() == STEPS


def test_a_lost_worker_is_repaired_and_its_step_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort(faults={4: RayActorError()})
    harness = make_run(monkeypatch, cohort)
    train_bsp(harness.run, 0)
    assert cohort.repairs == [("repair", 3)] and cohort.replacements == 1
    assert cohort.issued == [1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10]
    assert harness.stored() == STEPS


def test_a_hung_step_times_out_into_a_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort(faults={2: HANG})
    harness = make_run(monkeypatch, cohort)
    train_bsp(harness.run, 0)
    assert cohort.repairs == [("repair", 1)]
    assert STEP_TIMEOUT_S <= cohort.ray.now < 2 * STEP_TIMEOUT_S
    assert harness.stored() == STEPS


def test_a_lost_parameter_server_resumes_from_its_checkpoint_each_step_stored_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = bsp_cohort(checkpoint_every=3, faults={6: RayActorError()})
    cohort.loses_server = {6}
    harness = make_run(monkeypatch, cohort)
    train_bsp(harness.run, 0)
    assert cohort.repairs == [("repair", 5)]
    assert cohort.issued == [1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9, 10]  # back to step 3
    assert harness.stored() == STEPS  # steps 4 and 5 trained twice, stored once
    assert cohort.checkpoints.saved == [3, 6, 9, 10]


def test_a_fault_in_a_compiled_graph_restarts_every_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort(checkpoint_every=2, faults={5: RayActorError()})
    harness = make_run(monkeypatch, cohort, transport="graph")
    train_bsp(harness.run, 0)
    assert cohort.repairs == [("restart", 4)]  # all again, from the checkpoint at step 4
    assert cohort.issued == [1, 2, 3, 4, 5, *range(5, 11)]
    assert harness.stored() == STEPS


def test_the_repair_budget_spent_fails_the_job_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faults, "MAX_REPLACEMENTS", 3)
    cohort = bsp_cohort()
    cohort.faults = {step: RayActorError() for step in STEPS}  # raised once per step issued
    harness = make_run(monkeypatch, cohort)
    with pytest.raises(JobFailed, match="gave up after replacing 3 lost actors") as failed:
        train_bsp(harness.run, 0)
    assert isinstance(failed.value.__cause__, RayActorError)
    assert cohort.replacements == 3 and harness.stored() == [1, 2, 3]


def test_cancelling_stops_the_loop_before_its_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort()
    harness = make_run(monkeypatch, cohort, is_cancelled=lambda: len(cohort.published) >= 3)
    with pytest.raises(JobCancelled):
        train_bsp(harness.run, 0)
    assert cohort.issued == [1, 2, 3]


def test_cancelling_a_held_loop_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort()
    lead = Lead(10, max_s=5.0, min_steps=2, clock=lambda: 0.0)  # nobody ever records
    harness = make_run(monkeypatch, cohort, lead=lead, is_waiting_cancelled=lambda: True)
    with pytest.raises(JobCancelled):
        train_bsp(harness.run, 0)
    assert cohort.issued == [1, 2]


def test_a_fault_after_a_cancel_is_not_repaired(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = bsp_cohort(faults={4: RayActorError()})
    harness = make_run(monkeypatch, cohort, is_cancelled=lambda: not cohort.faults)
    with pytest.raises(JobCancelled):  # the cancel killed the actor: no repair
        train_bsp(harness.run, 0)
    assert cohort.repairs == []


def test_stop_when_reached_ends_the_job_with_its_reason_and_theta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rule = StopWhenSpec(metric="loss", at_most=0.3)
    cohort = bsp_cohort(eval_every=1, stop_when=rule)
    cohort.loss = lambda step: 1.0 / step
    with pytest.raises(StoppedEarly, match=r"reached loss ≤ 0.3 at step 4 \(0.25\)") as stopped:
        train_bsp(make_run(monkeypatch, cohort).run, 0)
    assert cohort.issued == [1, 2, 3, 4]
    assert isinstance(stopped.value.theta, np.ndarray)  # θ after step 4, kept as final


def test_stop_when_out_of_patience_says_since_when(monkeypatch: pytest.MonkeyPatch) -> None:
    rule = StopWhenSpec(metric="loss", patience_evaluations=2)
    cohort = bsp_cohort(eval_every=2, stop_when=rule)
    cohort.loss = lambda step: {1: 3.0, 2: 2.0}.get(step, 2.5)  # best at step 2
    with pytest.raises(StoppedEarly) as stopped:
        train_bsp(make_run(monkeypatch, cohort).run, 0)
    assert str(stopped.value) == (
        "loss did not improve for 2 evaluations (best 2 at step 2); stopped at step 6"
    )
    assert cohort.issued == [1, 2, 3, 4, 5, 6]


PATIENCE_LOSSES = {1: 3.0, 2: 2.0}  # best at step 2; every later step's loss is 2.5


def patience_loss(step: int) -> float:
    return PATIENCE_LOSSES.get(step, 2.5)


def test_a_replacement_runner_counts_patience_on_from_the_stored_evaluations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rule = StopWhenSpec(metric="loss", patience_evaluations=2)
    cohort = bsp_cohort(eval_every=2, stop_when=rule)
    cohort.loss = patience_loss
    harness = make_run(monkeypatch, cohort)
    # The lost runner stored steps 1..5 (evaluations at 2 and 4) and checkpointed step 4;
    # step 5 is past the resume point: trained again, and its value is not replayed.
    stored = [(step, patience_loss(step)) for step in range(1, 6)]
    harness.run.report.replay_evaluations(4, stored)
    with pytest.raises(StoppedEarly) as stopped:
        train_bsp(harness.run, 4)
    # Uninterrupted, the job stops at step 6; counted from the resume, it went on to 8.
    assert str(stopped.value) == (
        "loss did not improve for 2 evaluations (best 2 at step 2); stopped at step 6"
    )
    assert cohort.issued == [5, 6]


def test_a_rule_met_at_the_resumed_step_stops_the_replacement_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rule = StopWhenSpec(metric="loss", patience_evaluations=2)
    cohort = bsp_cohort(eval_every=2, stop_when=rule)
    harness = make_run(monkeypatch, cohort)
    stored = [(step, patience_loss(step)) for step in range(1, 7)]
    with pytest.raises(StoppedEarly, match="stopped at step 6") as stopped:
        harness.run.report.replay_evaluations(6, stored)
    assert stopped.value.theta is None  # θ is the resumed one: the runner exports it
    assert cohort.issued == []


def test_replayed_values_are_only_those_of_evaluation_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rule = StopWhenSpec(metric="loss", patience_evaluations=1)
    cohort = bsp_cohort(eval_every=4, stop_when=rule)
    harness = make_run(monkeypatch, cohort)
    # Only steps 4 and 8 are evaluations (eval_every 4; the last step, 10, is never one
    # for the rule): the other steps' worse losses would have run out its patience.
    values = {4: 2.0, 8: 1.0}
    harness.run.report.replay_evaluations(10, [(s, values.get(s, 9.0)) for s in STEPS])
    stopper = harness.run.report.stopper
    assert (stopper.best, stopper.best_step, stopper.since_best) == (1.0, 8, 0)
    assert stopper.last_step == 8


def test_a_job_that_never_meets_stop_when_runs_to_its_last_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = bsp_cohort(eval_every=1, stop_when=StopWhenSpec(metric="loss", at_most=0.01))
    harness = make_run(monkeypatch, cohort)
    train_bsp(harness.run, 0)
    assert harness.stored() == STEPS


@pytest.mark.parametrize("loss", [math.nan, 1e9])
def test_a_diverging_loss_fails_the_job_at_its_step(
    monkeypatch: pytest.MonkeyPatch, loss: float
) -> None:
    cohort = bsp_cohort()
    cohort.loss = lambda step: loss if step == 5 else 1.0
    harness = make_run(monkeypatch, cohort)
    with pytest.raises(JobFailed, match="diverged at step 5"):
        train_bsp(harness.run, 0)
    assert harness.stored() == [1, 2, 3, 4]
