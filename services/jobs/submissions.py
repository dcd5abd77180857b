"""Idempotent submission: a principal's submission id names at most one job.

Submitting the same id with the same spec again answers with the first job; the same
id with another spec is refused. Ids are per principal: two principals may use one.
"""

from __future__ import annotations

import re

from services.errors import AlreadyExistsError, InvalidSpecError
from services.jobs.records import JobRecord
from services.jobs.spec import JobSpec
from services.jobs.store import JobStore

SUBMISSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def check_submission_id(submission_id: str) -> None:
    """InvalidSpecError unless the id is empty (none given) or well formed."""
    if submission_id and not SUBMISSION_ID.fullmatch(submission_id):
        raise InvalidSpecError("submission_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -")


def earlier_submission(
    store: JobStore, submission_id: str, spec: JobSpec, *, owner: str
) -> JobRecord | None:
    """The job `owner` submitted before with this id and spec, or None for a new id;
    AlreadyExistsError where the id was used with another spec."""
    if not submission_id:
        return None
    earlier = store.find_submission(submission_id, owner=owner)
    if earlier is not None and earlier.spec != spec:
        raise AlreadyExistsError(
            f"submission_id {submission_id!r} was used for job "
            f"{earlier.job_id} with a different spec"
        )
    return earlier
