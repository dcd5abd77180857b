"""The search: Optuna's ask-and-tell over its RDB storage (SQLite), one study per sweep.

Why Optuna: its samplers (random, TPE, grid), its asynchronous successive halving
pruner (ASHA) and its storage are a library call each, and ask-and-tell lets the
service drive trials that are jobs it runs itself (Ray Tune wants to run the trials).
Its state lives in an SQLite file, so a sweep outlives the API process.

Determinism: each trial's parameters come from a sampler seeded by (sweep seed, trial
number) alone, made afresh for each ask; the random and grid samplers are stateless
otherwise, so the same seed samples the same trials, in any order of completions and
across restarts. (TPE also reads the finished trials, so it is reproducible only when
trials run one at a time.)

The resource ASHA counts is the trial's evaluation number (1, 2, ...): rung k is at
the grace_period × reduction_factor^k-th evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from services.sweeps.paths import Value
from services.sweeps.spec import ParameterSpec, SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What the scheduler decided at one report: stop or not; `rung`: the rungs the
    trial has passed (so, when stopped, the rung it was stopped at); `bar`: the value
    it needed there to go on."""

    stop: bool
    rung: int = 0
    bar: float | None = None


def distribution(parameter: ParameterSpec) -> BaseDistribution:
    if parameter.domain in ("grid", "choice"):
        return CategoricalDistribution(parameter.values)
    if parameter.domain == "integer":
        return IntDistribution(int(parameter.low), int(parameter.high), step=parameter.step)
    return FloatDistribution(parameter.low, parameter.high, log=parameter.domain == "log_uniform")


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial `number` of a sweep seeded `seed`."""
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Search:
    """One sweep's study. Every call reads and writes Optuna's storage (the study
    object is loaded once; it holds no state of its own), so a new Search over the same
    storage (a restarted server) goes on where the last one stopped."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, sweep_id: str, spec: SweepSpec
    ) -> None:
        self.storage = storage
        self.name = sweep_id
        self.spec = spec
        self.distributions = {p.path: distribution(p) for p in spec.parameters}
        self._loaded: optuna.Study | None = None

    def create(self) -> None:
        optuna.create_study(
            storage=self.storage,
            study_name=self.name,
            direction=self.spec.direction,
            load_if_exists=True,
        )

    def _study(self, number: int = 0) -> optuna.Study:
        """The study, its sampler seeded for trial `number`."""
        if self._loaded is None:
            self._loaded = optuna.load_study(
                study_name=self.name, storage=self.storage, pruner=self._pruner()
            )
        self._loaded.sampler = self._sampler(number)
        return self._loaded

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = trial_seed(self.spec.seed, number)
        if self.spec.sampler == "grid":
            space = {p.path: list(p.values) for p in self.spec.parameters}
            # Trial n takes the n-th point of the grid as the sweep's seed shuffles it.
            return optuna.samplers.GridSampler(space, seed=self.spec.seed)
        if self.spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)

    def _pruner(self) -> optuna.pruners.BasePruner:
        scheduler = self.spec.scheduler
        if scheduler.kind == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=scheduler.grace_period,
                reduction_factor=scheduler.reduction_factor,
            )
        return optuna.pruners.NopPruner()

    def ask(self, number: int) -> dict[str, Value]:
        """Trial `number`'s parameters (path -> value). If the study already holds that
        trial (asked before a restart, not yet recorded by the caller), its parameters
        are returned instead of asking again: a decision is never made twice."""
        study = self._study(number)
        trials = study.get_trials(deepcopy=False)
        if len(trials) > number:
            return dict(trials[number].params)
        if len(trials) < number:
            raise RuntimeError(f"sweep {self.name}: trial {number} asked before {len(trials)}")
        return dict(study.ask(self.distributions).params)

    def is_rung(self, evaluation: int) -> bool:
        """Whether ASHA decides at this evaluation (grace_period × reduction_factor^k)."""
        scheduler = self.spec.scheduler
        if scheduler.kind != "asha" or evaluation % scheduler.grace_period:
            return False
        ratio = evaluation // scheduler.grace_period
        while ratio % scheduler.reduction_factor == 0:
            ratio //= scheduler.reduction_factor
        return ratio == 1

    def report(self, number: int, evaluation: int, value: float, *, rungs: int = 0) -> Verdict:
        """Trial `number`'s metric at its `evaluation`-th evaluation (`rungs`: those it
        passed before); whether the pruner stops it there. Only a rung's evaluation
        reaches Optuna: its pruner decides nowhere else, and each report costs a few
        storage round trips."""
        if not self.is_rung(evaluation):
            return Verdict(stop=False, rung=rungs)
        study = self._study()
        study_id = self.storage.get_study_id_from_name(self.name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.storage.set_trial_intermediate_value(trial_id, evaluation, value)
        stop = study.pruner.prune(study, self.storage.get_trial(trial_id))
        rungs = _completed_rungs(self.storage.get_trial(trial_id))
        if not stop:
            return Verdict(stop=False, rung=rungs)
        rung = max(rungs - 1, 0)  # the rung it was stopped at: the last one recorded
        return Verdict(stop=True, rung=rung, bar=self._bar(study, rung))

    def _bar(self, study: optuna.Study, rung: int) -> float | None:
        """The value a trial needed at `rung` to go on (Optuna's promotion rule: the top
        1 / reduction_factor of the values recorded there)."""
        key = f"completed_rung_{rung}"  # where Optuna's pruner records each rung's values
        values = sorted(
            t.system_attrs[key] for t in study.get_trials(deepcopy=False) if key in t.system_attrs
        )
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return None
        index = max(len(values) // self.spec.scheduler.reduction_factor - 1, 0)
        return values[-(index + 1)] if self.spec.maximize else values[index]

    def tell(self, number: int, *, value: float | None, state: TrialState) -> None:
        """Trial `number` ended: COMPLETE with its value, PRUNED or FAIL (idempotent)."""
        study = self._study()
        values = value if state is TrialState.COMPLETE else None
        study.tell(number, values, state=state, skip_if_finished=True)

    def trials_asked(self) -> int:
        return len(self._study().get_trials(deepcopy=False))


def _completed_rungs(trial: optuna.trial.FrozenTrial) -> int:
    rung = 0
    while f"completed_rung_{rung}" in trial.system_attrs:
        rung += 1
    return rung


def open_storage(path: Path) -> optuna.storages.RDBStorage:
    """Optuna's storage in an SQLite file (made on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url=f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 30}}
    )
