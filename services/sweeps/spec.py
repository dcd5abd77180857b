"""SweepSpec: a hyperparameter search over one base job, checked when built.

A sweep trains trials: each is the base JobSpec with its parameters set (paths.py),
run as an ordinary job. Every field error is an InvalidSpecError naming it
(``parameters[1].log_uniform.low must be > 0, got 0.0``). Like JobSpec, a sweep spec is
plain data, stored as JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from services.errors import InvalidSpecError
from services.jobs.early_stopping import METRICS
from services.jobs.spec import MAX_NAME_LENGTH, JobSpec
from services.jobs.spec_checks import check_choice, check_range
from services.sweeps.paths import FieldPath, Value, parse, with_values

DOMAINS = ("grid", "choice", "uniform", "log_uniform", "integer")
SAMPLERS = ("random", "tpe", "grid")
SCHEDULERS = ("none", "asha")
DIRECTIONS = ("maximize", "minimize")
MAX_PARAMETERS = 16
MAX_VALUES = 64
MAX_TRIALS = 1000
MAX_PARALLEL_TRIALS = 32
DEFAULT_TRIALS = 16
DEFAULT_PARALLEL_TRIALS = 2


@dataclass(frozen=True, kw_only=True)
class ParameterSpec:
    """One swept field: `values` for grid and choice, [low, high] (and `step`) for the
    ranges."""

    path: str
    domain: str
    values: tuple[Value, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: int = 1

    def __post_init__(self) -> None:
        kind = parse(self.path).kind
        check_choice("domain", self.domain, DOMAINS)
        if self.domain in ("grid", "choice"):
            self._check_values()
            return
        if kind in (str, bool):
            raise InvalidSpecError(self.domain, f"{self.path} takes texts: use choice or grid")
        if kind is int and self.domain != "integer":
            raise InvalidSpecError(
                self.domain, f"{self.path} takes integers: use integer, choice or grid"
            )
        self._check_range()

    def _check_values(self) -> None:
        name = f"{self.domain}.values"
        if not 1 <= len(self.values) <= MAX_VALUES:
            raise InvalidSpecError(
                name, f"must hold 1 to {MAX_VALUES} values, got {len(self.values)}"
            )
        if len({type(v) is str for v in self.values}) > 1:
            raise InvalidSpecError(name, "must be all numbers or all texts")
        for value in self.values:
            if not isinstance(value, str) and not math.isfinite(value):
                raise InvalidSpecError(name, f"must be finite numbers, got {value}")
        if len(set(self.values)) != len(self.values):
            raise InvalidSpecError(name, "must not repeat a value")

    def _check_range(self) -> None:
        name = self.domain
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if not math.isfinite(value):
                raise InvalidSpecError(f"{name}.{bound}", f"must be a finite number, got {value}")
        if self.low >= self.high:
            raise InvalidSpecError(
                f"{name}.high", f"must be > low ({self.low:g}), got {self.high:g}"
            )
        if self.domain == "log_uniform" and self.low <= 0:
            raise InvalidSpecError(f"{name}.low", f"must be > 0 (a log range), got {self.low:g}")
        if self.domain == "integer":
            for bound in ("low", "high"):
                if not float(getattr(self, bound)).is_integer():
                    raise InvalidSpecError(f"{name}.{bound}", "must be an integer")
            check_range(f"{name}.step", self.step, 1, max(1, int(self.high - self.low)))

    @property
    def field_path(self) -> FieldPath:
        return parse(self.path)

    @property
    def extremes(self) -> tuple[Value, ...]:
        """The values that bound what a trial may get: each listed value, or both ends."""
        if self.values:
            return self.values
        if self.domain == "integer":
            return (int(self.low), int(self.high))
        return (self.low, self.high)


@dataclass(frozen=True, kw_only=True)
class SchedulerSpec:
    """none, or ASHA: rung k at the grace_period × reduction_factor^k-th evaluation."""

    kind: str = "none"
    grace_period: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SCHEDULERS)
        check_range("grace_period", self.grace_period, 1, 100_000)
        check_range("reduction_factor", self.reduction_factor, 2, 10)


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A sweep, defaults filled in (`metric`, `direction`, `max_trials` and `sampler` have
    defaults that depend on the other fields: build with `SweepSpec.build`)."""

    name: str = "sweep"
    base: JobSpec
    parameters: tuple[ParameterSpec, ...]
    metric: str
    direction: str
    max_trials: int = DEFAULT_TRIALS
    parallel_trials: int = DEFAULT_PARALLEL_TRIALS
    seed: int = 0
    sampler: str = "random"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)

    @classmethod
    def build(cls, **fields: Any) -> SweepSpec:
        """The spec with the defaults that depend on other fields filled in: the metric
        (validation_accuracy for classification, else validation_loss), its direction,
        the sampler (grid when every parameter is grid, else random) and the budget (a
        full grid's size, else 16)."""
        base: JobSpec = fields["base"]
        parameters: tuple[ParameterSpec, ...] = fields.get("parameters", ())
        metric = fields.get("metric") or (
            "validation_accuracy" if base.dataset.is_classification else "validation_loss"
        )
        is_grid = bool(parameters) and all(p.domain == "grid" for p in parameters)
        defaults = {
            "metric": metric,
            "direction": "maximize" if metric == "validation_accuracy" else "minimize",
            "sampler": "grid" if is_grid else "random",
            "max_trials": grid_size(parameters) if is_grid else DEFAULT_TRIALS,
        }
        given = {name: value for name, value in fields.items() if value not in (None, "")}
        return cls(**{**defaults, **given})

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME_LENGTH:
            raise InvalidSpecError("name", f"must be at most {MAX_NAME_LENGTH} characters")
        self._check_parameters()
        check_choice("metric", self.metric, METRICS)
        check_choice("direction", self.direction, DIRECTIONS)
        if self.base.dataset.validation_fraction == 0:
            raise InvalidSpecError(
                "metric",
                "is compared at the trials' evaluations (validation passes): "
                "base.dataset.validation_fraction must be > 0",
            )
        if self.metric == "validation_accuracy" and not self.base.dataset.is_classification:
            raise InvalidSpecError("metric", "validation_accuracy applies only to classification")
        check_range("max_trials", self.max_trials, 1, MAX_TRIALS)
        check_range("parallel_trials", self.parallel_trials, 1, MAX_PARALLEL_TRIALS)
        check_range("seed", self.seed, 0, 2**63 - 1)
        check_choice("sampler", self.sampler, SAMPLERS)
        self._check_grid()

    def _check_parameters(self) -> None:
        if not 1 <= len(self.parameters) <= MAX_PARAMETERS:
            raise InvalidSpecError(
                "parameters",
                f"must hold 1 to {MAX_PARAMETERS} parameters, got {len(self.parameters)}",
            )
        seen: set[str] = set()
        for i, parameter in enumerate(self.parameters):
            if parameter.path in seen:
                raise InvalidSpecError(f"parameters[{i}].path", f"repeats {parameter.path}")
            seen.add(parameter.path)
            for value in parameter.extremes:  # each must make a valid job with the base
                try:
                    self.trial_spec({parameter.field_path: value}, name="check")
                except InvalidSpecError as error:
                    raise InvalidSpecError(
                        f"parameters[{i}]", f"{parameter.path} = {value!r}: {error}"
                    ) from None

    def _check_grid(self) -> None:
        grids = [i for i, p in enumerate(self.parameters) if p.domain == "grid"]
        if self.sampler == "grid" and len(grids) != len(self.parameters):
            first = next(i for i, p in enumerate(self.parameters) if p.domain != "grid")
            raise InvalidSpecError(
                f"parameters[{first}]", "the grid sampler needs every parameter to be grid"
            )
        if grids and self.sampler != "grid":
            raise InvalidSpecError(
                f"parameters[{grids[0]}].grid",
                "needs every parameter to be grid (sampler grid); use choice to sample values",
            )
        if self.sampler == "grid" and self.max_trials > grid_size(self.parameters):
            raise InvalidSpecError(
                "max_trials",
                f"must be <= the grid's {grid_size(self.parameters)} points, got {self.max_trials}",
            )

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def trial_spec(self, values: dict[FieldPath, Value], *, name: str) -> JobSpec:
        return with_values(self.base, values, name=name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base.to_dict(),
            "parameters": [vars(p).copy() for p in self.parameters],
            "metric": self.metric,
            "direction": self.direction,
            "max_trials": self.max_trials,
            "parallel_trials": self.parallel_trials,
            "seed": self.seed,
            "sampler": self.sampler,
            "scheduler": vars(self.scheduler).copy(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        """Inverse of `to_dict` (for specs read back from the store)."""
        return cls(
            **{
                **data,
                "base": JobSpec.from_dict(data["base"]),
                "parameters": tuple(
                    ParameterSpec(**{**p, "values": tuple(p["values"])}) for p in data["parameters"]
                ),
                "scheduler": SchedulerSpec(**data["scheduler"]),
            }
        )


def grid_size(parameters: tuple[ParameterSpec, ...]) -> int:
    return math.prod(len(p.values) for p in parameters)


def parameter(index: int, **fields: Any) -> ParameterSpec:
    """Parameter `index` of a spec, naming ``parameters[index]`` in any field error."""
    try:
        return ParameterSpec(**fields)
    except InvalidSpecError as error:
        raise error.under(f"parameters[{index}]") from None


__all__ = ["DOMAINS", "ParameterSpec", "SchedulerSpec", "SweepSpec", "grid_size", "parameter"]
