"""The asp/ssp scheduler (`async_loop.train_async`, `GradientClocks`) against a fake
cohort, without Ray: the staleness bound, asp's free running, the lead, step order,
repairs and the repair budget, cancellation."""

from __future__ import annotations

import pytest
from ray.exceptions import RayActorError

from services.jobs import faults
from services.jobs.async_loop import GradientClocks, train_async
from services.jobs.faults import RECOVERY_ATTEMPTS, STEP_TIMEOUT_S
from services.jobs.lead import Lead
from services.jobs.outcomes import JobCancelled, JobFailed
from tests.fake_cohort import FakeCohort, Submission, job_spec, make_run
from tests.fake_ray import HANG, FakeRay


def async_cohort(mode: str = "asp", *, durations=None, faults=None, **spec) -> FakeCohort:
    changes = {"consistency": mode, **({"staleness": spec.pop("s")} if "s" in spec else {})}
    return FakeCohort(job_spec(**changes, **spec), FakeRay(), durations=durations, faults=faults)


def by_worker(cohort: FakeCohort, worker: int) -> list[Submission]:
    return [s for s in cohort.issued if s.worker == worker]


@pytest.mark.parametrize("mode", ["asp", "ssp"])
def test_each_step_is_reported_once_in_order_with_every_workers_gradient(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    cohort = async_cohort(mode, durations=[1.0, 3.0, 2.0], workers=3)
    harness = make_run(monkeypatch, cohort)
    train_async(harness.run, 0)
    assert harness.stored() == list(range(1, 11))
    for step, updates in harness.report.finished:  # step t: every worker's gradient t − 1
        assert sorted(updates) == [(w, step - 1) for w in range(3)]
    assert [step for step, _ in harness.report.finished] == list(range(1, 11))
    assert sorted((s.worker, s.clock) for s in cohort.issued) == [
        (w, c) for w in range(3) for c in range(10)
    ]  # each gradient computed once


@pytest.mark.parametrize("bound", [0, 1, 3])
def test_ssp_starts_gradient_c_only_once_every_worker_has_c_minus_s_applied(
    monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    cohort = async_cohort("ssp", s=bound, durations=[1.0, 1.0, 4.0], workers=3, steps=12)
    train_async(make_run(monkeypatch, cohort).run, 0)
    lags = []
    for started in cohort.issued:
        for worker in range(3):  # c − s applied: its gradients 0 … c − s − 1
            missing = [
                c for c in range(started.clock - bound) if (worker, c) not in started.applied
            ]
            assert not missing, (started, worker, missing)
        pushed = [sum(1 for w, _ in started.applied if w == worker) for worker in range(3)]
        lags.append(started.clock - min(pushed))
    assert max(lags) == bound  # the fast workers do run s ahead of the slow one


def test_asp_never_waits_for_a_slow_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = async_cohort("asp", durations=[1.0, 50.0], steps=8)
    train_async(make_run(monkeypatch, cohort).run, 0)
    fast = by_worker(cohort, 0)
    # two gradients on the way, each started as the one before it lands: its own pace
    assert [(s.clock, s.at) for s in fast] == [(0, 0), (1, 0), *((c, c - 1) for c in range(2, 8))]
    assert all((1, 0) not in s.applied for s in fast)  # all before the slow worker's first


def test_ssp_holds_the_fast_worker_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = async_cohort("ssp", s=1, durations=[1.0, 50.0], steps=8)
    train_async(make_run(monkeypatch, cohort).run, 0)
    fast = by_worker(cohort, 0)
    assert [s.at for s in fast[:2]] == [0, 0]
    assert fast[2].at == 50  # clock 2 waits for the slow worker's gradient 0


def test_the_lead_holds_the_loop_until_the_store_records(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = async_cohort("asp")
    lead = Lead(10, max_s=5.0, min_steps=3, clock=lambda: 0.0)  # limit: recorded + 3
    holds: list[tuple[int, int]] = []

    def store_catches_up() -> bool:  # asked while the loop is held
        holds.append((cohort.published[-1], max(s.clock for s in cohort.issued)))
        lead.record(cohort.published[-1])
        return False

    harness = make_run(monkeypatch, cohort, lead=lead, is_waiting_cancelled=store_catches_up)
    train_async(harness.run, 0)
    # held at the limit, with no gradient for a step past it started
    assert holds == [(3, 2), (6, 5), (9, 8)]
    assert harness.stored() == list(range(1, 11))


def test_a_lost_push_is_repaired_and_every_step_still_reported_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = async_cohort("ssp", s=1, faults={(1, 3): RayActorError()})
    harness = make_run(monkeypatch, cohort)
    train_async(harness.run, 0)
    assert cohort.repairs == [("repair", 3)] and cohort.replacements == 1
    assert [(s.worker, s.clock) for s in cohort.issued].count((1, 3)) == 2  # pushed again
    assert harness.stored() == list(range(1, 11))
    assert [step for step, _ in harness.report.finished] == list(range(1, 11))


def test_a_hung_worker_times_out_into_a_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = async_cohort("asp", faults={(0, 4): HANG})
    harness = make_run(monkeypatch, cohort)
    train_async(harness.run, 0)
    assert [kind for kind, _ in cohort.repairs] == ["repair"]
    assert cohort.ray.now >= STEP_TIMEOUT_S  # it waited the step timeout, no longer
    assert cohort.ray.now < 2 * STEP_TIMEOUT_S
    assert harness.stored() == list(range(1, 11))


def test_a_lost_parameter_server_resumes_from_its_checkpoint_each_step_stored_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = async_cohort("asp", checkpoint_every=4, faults={(0, 6): RayActorError()})
    cohort.loses_server = {(0, 6)}
    harness = make_run(monkeypatch, cohort)
    train_async(harness.run, 0)
    [(kind, at_most)] = cohort.repairs
    assert kind == "repair" and at_most >= 5
    finished = [step for step, _ in harness.report.finished]
    assert finished == [*range(1, at_most + 1), *range(5, 11)]  # back to step 4, and on
    assert harness.stored() == list(range(1, 11))  # the store sees each step once
    assert cohort.checkpoints.saved == [4, 8, 10]  # none past the step it came back from


def test_the_repair_budget_spent_fails_the_job_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faults, "MAX_REPLACEMENTS", 2)
    cohort = async_cohort("asp", faults={(0, c): RayActorError() for c in range(10)})
    harness = make_run(monkeypatch, cohort)
    with pytest.raises(JobFailed, match="gave up after replacing 2 lost actors") as failed:
        train_async(harness.run, 0)
    assert isinstance(failed.value.__cause__, RayActorError)
    assert len(cohort.repairs) == 2


def test_a_repair_that_keeps_losing_actors_fails_after_its_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = async_cohort("asp", faults={(0, 2): RayActorError()})
    cohort.repair_errors = [RayActorError() for _ in range(RECOVERY_ATTEMPTS)]
    with pytest.raises(JobFailed, match=f"recovery failed {RECOVERY_ATTEMPTS} times in a row"):
        train_async(make_run(monkeypatch, cohort).run, 0)
    assert len(cohort.repairs) == RECOVERY_ATTEMPTS


def test_a_repair_that_succeeds_on_its_last_attempt_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cohort = async_cohort("asp", faults={(0, 2): RayActorError()})
    cohort.repair_errors = [RayActorError() for _ in range(RECOVERY_ATTEMPTS - 1)]
    harness = make_run(monkeypatch, cohort)
    train_async(harness.run, 0)
    assert len(cohort.repairs) == RECOVERY_ATTEMPTS
    assert harness.stored() == list(range(1, 11))


def test_cancelling_stops_the_loop_at_the_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = async_cohort("asp")
    harness = make_run(monkeypatch, cohort, is_cancelled=lambda: len(cohort.published) >= 4)
    with pytest.raises(JobCancelled):
        train_async(harness.run, 0)
    assert harness.stored()[-1] == 4 and cohort.repairs == []


def test_a_fault_after_a_cancel_is_not_repaired(monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = async_cohort("asp", faults={(1, 3): RayActorError()})
    harness = make_run(monkeypatch, cohort, is_cancelled=lambda: not cohort.faults)
    with pytest.raises(JobCancelled):  # the cancel killed the actor: no repair
        train_async(harness.run, 0)
    assert cohort.repairs == [] and cohort.replacements == 0


def test_clocks_restarted_after_a_restore_start_again_from_it() -> None:
    clocks = GradientClocks(workers=2, start=0, bound=None)
    started: list[tuple[int, int]] = []
    clocks.submit_ready(5, lambda worker, clock: started.append((worker, clock)) or [])
    assert started == [(0, 0), (0, 1), (1, 0), (1, 1)]  # two in flight per worker
    clocks.restart(resumed=3)
    assert clocks.in_flight() == [] and clocks.take_round(3) is None
    clocks.submit_ready(5, lambda worker, clock: started.append((worker, clock)) or [])
    assert started[4:] == [(0, 3), (0, 4), (1, 3), (1, 4)]
