"""The runner's bounded lead over the store (services/jobs/lead.py)."""

from __future__ import annotations

import pytest

from services.jobs.lead import Lead


def test_without_a_bound_every_step_may_run() -> None:
    lead = Lead(1000, max_s=None)
    assert lead.limit(0) == 1000


def test_the_limit_starts_at_the_minimum_past_the_recorded_step() -> None:
    lead = Lead(1000, max_s=5.0, min_steps=32)
    lead.record(100)
    lead.start(100)
    assert lead.limit(100) == 132


def test_the_limit_follows_the_recorded_step_and_never_goes_down() -> None:
    lead = Lead(10_000, max_s=1.0, min_steps=10)
    lead.start(0)
    first = lead.limit(0)
    lead.record(50)
    assert lead.limit(50) >= 60 > first
    lead.record(20)  # an older acknowledgement changes nothing
    assert lead.recorded == 50
    assert lead.limit(50) >= 60


def test_the_lead_is_max_s_of_steps_at_the_rate_so_far() -> None:
    now = [100.0]
    lead = Lead(1_000_000, max_s=2.0, min_steps=1, clock=lambda: now[0])
    lead.start(0)
    now[0] += 0.5
    assert lead.limit(500) == 2000  # 1000 steps a second: 2 s of them past step 0
    lead.record(500)
    assert lead.limit(500) == 2500
    now[0] += 100.0  # held: the rate drops, the limit stays
    assert lead.limit(500) == 2500


def test_the_limit_stops_at_the_last_step() -> None:
    lead = Lead(40, max_s=5.0, min_steps=32)
    lead.record(30)
    assert lead.limit(30) == 40


@pytest.mark.parametrize(("options", "match"), [({"max_s": 0}, "max_s"), ({"min_steps": 0}, "min")])
def test_bad_bounds_are_refused(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Lead(10, **options)
