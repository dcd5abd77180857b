"""`stop_when`: a job that stops itself once it has reached its target, or stopped improving.

Checked at every evaluation (the steps with a validation pass: every `eval_every` steps,
default once per epoch, and the last), on one metric:

    validation_accuracy (higher is better)   validation_loss, loss (lower is better)

- `at_least` / `at_most`: the job SUCCEEDS at the first evaluation where the metric is
  ≥ / ≤ that value ("reached validation_accuracy ≥ 0.98 at step 412").
- `patience_evaluations` p: the job SUCCEEDS when the metric has not improved on its
  best for p evaluations in a row ("validation_loss did not improve for 5 evaluations
  (best 0.0812 at step 300); stopped at step 450").

Either or both may be given. The weights are θ after the stopping step. A runner that
replaces a lost one (see "When things fail") first shows its stopper the stored values
of the metric up to the step it resumes after (`StepReporter.replay_evaluations`), so
the best value and the count of evaluations without improvement go on from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.errors import InvalidSpecError, quoted

METRICS = ("validation_accuracy", "validation_loss", "loss")
MAX_PATIENCE = 100_000


@dataclass(frozen=True, kw_only=True)
class StopWhenSpec:
    """The rule; see the module docstring. `metric` "" means no rule."""

    metric: str = ""
    at_least: float | None = None
    at_most: float | None = None
    patience_evaluations: int | None = None

    def __post_init__(self) -> None:
        given = (self.at_least, self.at_most, self.patience_evaluations)
        if not self.metric:
            if any(value is not None for value in given):
                raise InvalidSpecError("metric", f"is required; one of {', '.join(METRICS)}")
            return
        if self.metric not in METRICS:
            raise InvalidSpecError(
                "metric", f"must be one of {', '.join(METRICS)}, got {quoted(self.metric)}"
            )
        if all(value is None for value in given):
            raise InvalidSpecError(
                "metric", "needs at_least, at_most or patience_evaluations to stop on"
            )
        if self.at_least is not None and self.at_most is not None:
            raise InvalidSpecError("at_most", "cannot be given with at_least")
        for name in ("at_least", "at_most"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidSpecError(name, f"must be a finite number, got {value}")
        if self.patience_evaluations is not None and not (
            1 <= self.patience_evaluations <= MAX_PATIENCE
        ):
            raise InvalidSpecError(
                "patience_evaluations",
                f"must be in [1, {MAX_PATIENCE}], got {self.patience_evaluations}",
            )

    @property
    def is_set(self) -> bool:
        return bool(self.metric)

    @property
    def needs_validation(self) -> bool:
        return self.metric.startswith("validation_")

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "validation_accuracy"


class EarlyStopper:
    """Follows one job's evaluations; `observe` says when and why to stop."""

    def __init__(self, rule: StopWhenSpec) -> None:
        self.rule = rule
        self.best: float | None = None
        self.best_step = 0
        self.since_best = 0
        self.last_step = 0  # evaluations at or before it were seen (a restore recomputes)

    def observe(self, step: int, metrics: dict[str, float]) -> str | None:
        """The reason to stop after this evaluation (`metrics` by name), or None."""
        rule = self.rule
        value = metrics.get(rule.metric)
        if not rule.is_set or value is None or step <= self.last_step:
            return None
        self.last_step = step
        if rule.at_least is not None and value >= rule.at_least:
            return f"reached {rule.metric} ≥ {rule.at_least:g} at step {step} ({value:.4g})"
        if rule.at_most is not None and value <= rule.at_most:
            return f"reached {rule.metric} ≤ {rule.at_most:g} at step {step} ({value:.4g})"
        better = self.best is None or (
            value > self.best if rule.higher_is_better else value < self.best
        )
        if better:
            self.best, self.best_step, self.since_best = value, step, 0
            return None
        self.since_best += 1
        patience = rule.patience_evaluations
        if patience is not None and self.since_best >= patience:
            return (
                f"{rule.metric} did not improve for {patience} evaluations "
                f"(best {self.best:.4g} at step {self.best_step}); stopped at step {step}"
            )
        return None
