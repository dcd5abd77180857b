"""The colocated workers' loop (`colocated_loop.train_colocated`) against a fake cohort,
without Ray: steps drained at uneven paces reported once and in order, checkpoints from
the workers' snapshots, the lead, restarts and the repair budget, cancellation."""

from __future__ import annotations

import pytest
from ray.exceptions import RayActorError, RayTaskError

from services.jobs import faults
from services.jobs.colocated_loop import train_colocated
from services.jobs.lead import Lead
from services.jobs.outcomes import JobCancelled, JobFailed
from services.paramserver.collective import PeerLost
from tests.fake_cohort import FakeColocatedCohort, job_spec, make_run
from tests.fake_ray import FakeRay

STEPS = list(range(1, 11))


def colocated(mode: str = "bsp", *, pace=None, faults=None, **spec) -> FakeColocatedCohort:
    cohort_spec = job_spec(consistency=mode, **spec)
    return FakeColocatedCohort(cohort_spec, FakeRay(), pace=pace, faults=faults)


def peer_lost() -> RayTaskError:
    return RayTaskError("train", "traceback", PeerLost("worker 1 closed its connection"))


@pytest.mark.parametrize("mode", ["bsp", "asp"])
def test_steps_drained_at_uneven_paces_are_reported_once_in_order(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    cohort = colocated(mode, pace=[3, 1], checkpoint_every=4)
    harness = make_run(monkeypatch, cohort)
    train_colocated(harness.run, 0)
    assert [step for step, _ in harness.report.finished] == STEPS
    assert harness.stored() == STEPS
    for step, updates in harness.report.finished:
        assert len(updates) == (1 if mode == "bsp" else 2), step  # bsp shards merged
    assert cohort.checkpoints.saved == [4, 8, 10]  # every 4 steps, and after the last
    assert harness.run.output.profiles == [{"worker": 0}, {"worker": 1}]


def test_the_lead_holds_the_workers_until_the_store_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = colocated(pace=[2, 2])
    lead = Lead(10, max_s=5.0, min_steps=3, clock=lambda: 0.0)  # limit: recorded + 3
    holds: list[tuple[int, list[int]]] = []

    def store_catches_up() -> bool:  # asked while the workers wait at the limit
        holds.append((cohort.published[-1], list(cohort.trained)))
        lead.record(cohort.published[-1])
        return False

    harness = make_run(monkeypatch, cohort, lead=lead, is_waiting_cancelled=store_catches_up)
    train_colocated(harness.run, 0)
    assert cohort.launches == [(0, 3)]  # launched with the lead's limit
    assert holds == [(3, [3, 3]), (6, [6, 6]), (9, [9, 9])]  # never past the limit
    assert harness.stored() == STEPS


@pytest.mark.parametrize("error", [RayActorError(), peer_lost()], ids=["actor", "peer"])
def test_a_fault_restarts_every_worker_from_the_checkpoint_each_step_stored_once(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    cohort = colocated(pace=[2, 2], checkpoint_every=3, faults={4: error})
    harness = make_run(monkeypatch, cohort)
    train_colocated(harness.run, 0)
    assert cohort.restarts == [6] and cohort.replacements == 1  # 6 reported at the fault
    assert cohort.launches == [(0, 10), (6, 10)]  # again from the checkpoint at step 6
    assert harness.stored() == STEPS
    assert [step for step, _ in harness.report.finished] == STEPS


def test_steps_before_the_checkpoint_trained_again_are_not_reported_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = colocated(pace=[2, 2], checkpoint_every=4, faults={4: RayActorError()})
    harness = make_run(monkeypatch, cohort)
    train_colocated(harness.run, 0)
    assert cohort.launches == [(0, 10), (4, 10)]  # steps 5 and 6 trained twice
    assert [step for step, _ in harness.report.finished] == STEPS  # reported once
    assert cohort.checkpoints.saved == [4, 8, 10]


def test_a_worker_error_that_is_not_a_lost_peer_fails_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bug = RayTaskError("train", "traceback", ValueError("a bug"))
    cohort = colocated(faults={2: bug})
    with pytest.raises(RayTaskError):
        train_colocated(make_run(monkeypatch, cohort).run, 0)
    assert cohort.restarts == []


def test_workers_that_stop_early_fail_the_job_with_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = colocated(pace=[2, 2])
    cohort.stop_at = 6
    with pytest.raises(JobFailed, match="the workers stopped at step 6"):
        train_colocated(make_run(monkeypatch, cohort).run, 0)


def test_the_repair_budget_spent_fails_the_job_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faults, "MAX_REPLACEMENTS", 2)
    cohort = colocated(faults={n: RayActorError() for n in range(1, 20)})
    with pytest.raises(JobFailed, match="gave up after replacing 2 lost actors"):
        train_colocated(make_run(monkeypatch, cohort).run, 0)
    assert len(cohort.restarts) == 2


def test_a_fault_after_a_cancel_is_not_repaired(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = colocated(faults={3: RayActorError()})
    harness = make_run(monkeypatch, cohort, is_cancelled=lambda: 3 not in cohort.faults)
    with pytest.raises(JobCancelled):
        train_colocated(harness.run, 0)
    assert cohort.restarts == []


def test_cancelling_stops_the_loop_at_the_next_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = colocated(pace=[1, 1])
    harness = make_run(monkeypatch, cohort, is_cancelled=lambda: len(cohort.published) >= 4)
    with pytest.raises(JobCancelled):
        train_colocated(harness.run, 0)
    assert harness.stored() == [1, 2, 3, 4] and cohort.drains == 4
