"""The search (services/sweeps/search.py) over Optuna's SQLite storage: reproducible
trials, restarts that repeat no decision, the grid, and ASHA decisions that match
Optuna's own pruner driven directly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from bptrain.v1 import sweeps_pb2 as spb
from services.api.sweep_convert import sweep_spec_from_proto
from services.sweeps.search import Search, open_storage
from services.sweeps.spec import SweepSpec
from tests.test_sweep_spec import base, lr


def spec(*parameters: spb.SweepParameter, **fields) -> SweepSpec:
    parameters = parameters or (
        lr(log_uniform=spb.Range(low=1e-4, high=1e-1)),
        spb.SweepParameter(path="layers[0].units", choice=spb.Values(numbers=[16, 32, 64])),
        spb.SweepParameter(path="layers[0].dropout", uniform=spb.Range(low=0.0, high=0.5)),
        spb.SweepParameter(path="batch_size", integer=spb.IntRange(low=16, high=128, step=16)),
    )
    return sweep_spec_from_proto(spb.SweepSpec(base=base(), parameters=parameters, **fields))


def search(tmp_path: Path, sweep: SweepSpec, name: str = "sweep-a") -> Search:
    found = Search(open_storage(tmp_path / "optuna.db"), name, sweep)
    found.create()
    return found


def asked(found: Search, count: int, finish_order: list[int] | None = None) -> list[dict]:
    """Ask `count` trials, telling each finished (in `finish_order`) before the next ask."""
    params = []
    for number in range(count):
        params.append(found.ask(number))
        for done in finish_order or []:
            if done <= number:
                found.tell(done, value=float(done), state=TrialState.COMPLETE)
    return params


def test_the_same_seed_samples_the_same_trials_whatever_finishes_first(tmp_path: Path) -> None:
    sweep = spec(seed=11)
    first = asked(search(tmp_path / "a", sweep), 8)
    second = asked(search(tmp_path / "b", sweep), 8, finish_order=[3, 0, 1, 2, 5, 4])
    assert first == second
    assert len({tuple(p.items()) for p in first}) == 8  # eight different trials
    other = asked(search(tmp_path / "c", spec(seed=12)), 8)
    assert other != first
    for params in first:  # each within its domain
        assert 1e-4 <= params["optimizer.learning_rate"] <= 1e-1
        assert params["layers[0].units"] in (16, 32, 64)
        assert 0.0 <= params["layers[0].dropout"] <= 0.5
        assert params["batch_size"] in range(16, 129, 16)


def test_a_new_search_over_the_same_storage_goes_on_and_asks_nothing_twice(
    tmp_path: Path,
) -> None:
    sweep = spec(seed=5)
    uninterrupted = asked(search(tmp_path / "whole", sweep), 5)
    before = search(tmp_path / "restart", sweep)
    asked(before, 3)
    after = Search(open_storage(tmp_path / "restart" / "optuna.db"), "sweep-a", sweep)
    # Trial 2 was asked before the restart (say the server died before recording it):
    # asking for it again gives the same trial, and the study still holds three.
    assert after.ask(2) == uninterrupted[2]
    assert after.trials_asked() == 3
    assert [after.ask(3), after.ask(4)] == uninterrupted[3:]
    with pytest.raises(RuntimeError, match="asked before"):
        after.ask(9)


def test_a_grid_is_enumerated_without_repeats(tmp_path: Path) -> None:
    sweep = spec(
        lr(grid=spb.Values(numbers=[0.001, 0.01, 0.1])),
        spb.SweepParameter(path="layers[0].activation", grid=spb.Values(texts=["relu", "tanh"])),
        seed=3,
    )
    assert (sweep.sampler, sweep.max_trials) == ("grid", 6)
    points = {tuple(sorted(p.items())) for p in asked(search(tmp_path, sweep), 6)}
    assert len(points) == 6
    assert {dict(p)["layers[0].activation"] for p in points} == {"relu", "tanh"}


def curves(trials: int, evaluations: int, seed: int) -> np.ndarray:
    """Synthetic learning curves: accuracy rising to a per-trial ceiling, with noise."""
    rng = np.random.default_rng(seed)
    ceiling = rng.uniform(0.3, 0.99, size=(trials, 1))
    speed = rng.uniform(0.2, 1.5, size=(trials, 1))
    t = np.arange(1, evaluations + 1)[None, :]
    noise = rng.normal(0, 0.01, size=(trials, evaluations))
    return ceiling * (1 - np.exp(-speed * t)) + noise


def optuna_decisions(values: np.ndarray, grace: int, factor: int, direction: str) -> list:
    """The pruner driven directly, as its documentation shows: ask, report, should_prune."""
    study = optuna.create_study(
        direction=direction,
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=factor),
    )
    return drive(values, *_direct(study))


def _direct(study: optuna.Study):
    live: dict[int, optuna.Trial] = {}

    def start(number: int) -> None:
        live[number] = study.ask()

    def report(number: int, evaluation: int, value: float) -> bool:
        live[number].report(value, evaluation)
        return live[number].should_prune()

    def end(number: int, value: float | None) -> None:
        state = TrialState.PRUNED if value is None else TrialState.COMPLETE
        study.tell(live[number], value, state=state)

    return start, report, end


def drive(values: np.ndarray, start, report, end, parallel: int = 3) -> list:
    """Trials `parallel` at a time, one evaluation each in turn; the decisions made."""
    trials, evaluations = values.shape
    decisions: list[tuple[int, int, bool]] = []
    waiting, running = list(range(trials)), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            number = waiting.pop(0)
            start(number)
            running[number] = 0
        for number in list(running):
            running[number] += 1
            evaluation = running[number]
            value = float(values[number, evaluation - 1])
            stop = report(number, evaluation, value)
            decisions.append((number, evaluation, stop))
            if stop or evaluation == evaluations:
                end(number, None if stop else value)
                del running[number]
    return decisions


@pytest.mark.parametrize(
    ("grace", "factor", "direction", "seed"),
    [(1, 3, "maximize", 0), (2, 2, "maximize", 1), (1, 4, "minimize", 2)],
)
def test_asha_decisions_match_optunas_pruner_driven_directly(
    tmp_path: Path, grace: int, factor: int, direction: str, seed: int
) -> None:
    values = curves(trials=14, evaluations=9, seed=seed)
    if direction == "minimize":
        values = 1.0 - values  # a loss
    sweep = spec(
        lr(log_uniform=spb.Range(low=1e-4, high=1e-1)),
        direction=direction,
        max_trials=14,
        scheduler=spb.SweepScheduler(kind="asha", grace_period=grace, reduction_factor=factor),
    )
    ours = search(tmp_path, sweep)
    bars: list[tuple[float, float | None]] = []

    def report(number: int, evaluation: int, value: float) -> bool:
        verdict = ours.report(number, evaluation, value)
        if verdict.stop:
            bars.append((value, verdict.bar))
        return verdict.stop

    def end(number: int, value: float | None) -> None:
        state = TrialState.PRUNED if value is None else TrialState.COMPLETE
        ours.tell(number, value=value, state=state)

    decisions = drive(values, ours.ask, report, end)
    assert decisions == optuna_decisions(values, grace, factor, direction)
    stops = [d for d in decisions if d[2]]
    assert 0 < len(stops) < 14  # the curves make some trials lose and some go on
    for value, bar in bars:  # every stop is explained by the bar it missed
        assert bar is not None and not math.isnan(bar)
        assert value < bar if direction == "maximize" else value > bar


def test_only_rung_evaluations_reach_the_pruner(tmp_path: Path) -> None:
    sweep = spec(
        lr(log_uniform=spb.Range(low=1e-4, high=1e-1)),
        scheduler=spb.SweepScheduler(kind="asha", grace_period=2, reduction_factor=3),
    )
    found = Search(open_storage(tmp_path / "optuna.db"), "s", sweep)
    assert [e for e in range(1, 60) if found.is_rung(e)] == [2, 6, 18, 54]
    none = Search(open_storage(tmp_path / "optuna.db"), "t", spec())
    assert not any(none.is_rung(e) for e in range(1, 60))
