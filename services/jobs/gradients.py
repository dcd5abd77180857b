"""Checking a submitted architecture's backward pass before (or instead of) training it."""

from __future__ import annotations

from services.errors import InvalidSpecError
from services.jobs.spec import JobSpec
from worker.gradcheck import GradcheckReport, check_architecture

MAX_CHECKED_PARAMETERS = 5_000_000  # the check runs in the API process, in float64
ENTRIES_PER_TENSOR = 16


def check_gradients(spec: JobSpec) -> GradcheckReport:
    """Float64 finite differences vs backward on a small random batch, per layer."""
    if spec.parameter_count > MAX_CHECKED_PARAMETERS:
        raise InvalidSpecError(
            "layers",
            f"give {spec.parameter_count} parameters; the gradient check takes at most "
            f"{MAX_CHECKED_PARAMETERS}",
        )
    return check_architecture(
        spec.model, seed=spec.seed, init=spec.init, entries_per_tensor=ENTRIES_PER_TENSOR
    )
