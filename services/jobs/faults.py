"""Recovery: how a job's step loops recognise a lost actor and recover from it.

A step that loses an actor (or waits past STEP_TIMEOUT_S) is repaired (the lost actors
replaced; with colocated workers or a compiled graph, all of them, from the newest
checkpoint at or before the last reported step) and continues. A repair that itself
loses an actor (one killed while it is created) is tried again, RECOVERY_ATTEMPTS times
with a growing pause, before the job fails; so does a job whose cohort has replaced
MAX_REPLACEMENTS actors (its repair budget).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayChannelError,
    RayTaskError,
)

from services.jobs.outcomes import JobCancelled, JobFailed
from services.paramserver.collective import PeerLost

if TYPE_CHECKING:
    from services.jobs.cohort import Cohort

log = logging.getLogger(__name__)

# What a lost or stuck actor looks like to the step loop (a compiled graph's channels too).
FAULTS = (RayActorError, GetTimeoutError, ObjectLostError, RayChannelError)
STEP_TIMEOUT_S = 60.0  # a BSP barrier waits this long for every worker, then repairs
MAX_REPLACEMENTS = 1000  # lost actors a job survives before it gives up
RECOVERY_ATTEMPTS = 5  # one repair, tried this often while actors die under it
RECOVERY_BACKOFF_S = 0.25  # the pause before the second attempt, doubled after each


class Repairable(Protocol):
    """A job's actors as recovery sees them (`Cohort`, `ColocatedCohort`)."""

    replacements: int  # actors replaced so far

    def restart(self, at_most: int) -> int: ...


def is_recoverable(error: Exception) -> bool:
    """A lost actor: one of FAULTS, or a task whose colocated peer was lost (PeerLost)."""
    if isinstance(error, RayTaskError):
        return isinstance(error.cause, PeerLost)
    return isinstance(error, FAULTS)


def check_budget(cohort: Repairable, error: Exception) -> None:
    """JobFailed (caused by `error`) once the cohort has replaced MAX_REPLACEMENTS actors."""
    if cohort.replacements >= MAX_REPLACEMENTS:
        raise JobFailed(f"gave up after replacing {cohort.replacements} lost actors") from error


class Recovery:
    """One job's recovery from lost actors; `is_cancelled` says when to stop trying."""

    def __init__(self, job_id: str, is_cancelled: Callable[[], bool]) -> None:
        self.job_id = job_id
        self.is_cancelled = is_cancelled

    def stop_if_cancelled(self) -> None:
        """JobCancelled when the job was cancelled: a fault then is the cancel's doing."""
        if self.is_cancelled():
            raise JobCancelled from None

    def restart(self, cohort: Repairable, step: int, error: Exception) -> int:
        """Start every actor again from the newest checkpoint at or before `step` (the
        last reported); returns its step."""
        check_budget(cohort, error)
        log.warning("job %s: step %d failed (%s); restarting", self.job_id, step + 1, error)
        return self.recovered(lambda: cohort.restart(step))

    def repair(self, cohort: Cohort, step: int, error: Exception) -> int | None:
        """Replace the actors that died (`Cohort.repair`); returns the restored parameter
        server's step (None when it survived), from a checkpoint at or before `step`
        (the last reported)."""
        check_budget(cohort, error)
        log.warning("job %s: step %d failed (%s); repairing", self.job_id, step + 1, error)
        restored: list[int] = []  # a later attempt may find the server alive again

        def attempt() -> int | None:
            resumed = cohort.repair(step)
            if resumed is not None:
                restored.append(resumed)
            return min(restored, default=None)

        return self.recovered(attempt)

    def recovered(self, action: Callable[[], object], again: Callable[[], object] | None = None):
        """`action()`'s result; while it fails because an actor died under it (one
        killed while it was created or restored), `again()` (default: `action`) after
        a pause that doubles from RECOVERY_BACKOFF_S, up to RECOVERY_ATTEMPTS tries."""
        attempt, pause = action, RECOVERY_BACKOFF_S
        for tries in range(1, RECOVERY_ATTEMPTS + 1):
            if self.is_cancelled():
                raise JobCancelled
            try:
                return attempt()
            except (*FAULTS, RayTaskError) as error:
                if not is_recoverable(error):
                    raise
                if self.is_cancelled():
                    raise JobCancelled from None
                if tries == RECOVERY_ATTEMPTS:
                    raise JobFailed(
                        f"recovery failed {RECOVERY_ATTEMPTS} times in a row "
                        f"(actors lost while being replaced); last: {type(error).__name__}: "
                        f"{error}"[:500]
                    ) from error
                log.warning(
                    "job %s: recovery attempt %d lost an actor (%s); again in %.2f s",
                    self.job_id, tries, error, pause,
                )  # fmt: skip
                time.sleep(pause)
                attempt, pause = again or action, pause * 2
        raise AssertionError("unreachable")
