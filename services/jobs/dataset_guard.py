"""The guard on deleting an uploaded dataset: not while a queued or running job needs it."""

from __future__ import annotations

from services.datasets.uploads import DatasetRegistry
from services.errors import FailedPreconditionError
from services.jobs.records import JobState
from services.jobs.store import JobStore
from services.tenancy import Principal


def refuse_if_in_use(
    dataset_id: str, *, principal: Principal, store: JobStore, datasets: DatasetRegistry
) -> None:
    """FailedPreconditionError where deleting `principal`'s entry for `dataset_id` would
    take the file from a queued or running job: one of the principal's own, or, where
    no other owner's entry would keep the file, anyone's (an admin deletes every entry).
    Another principal's job is not named."""
    others = set() if principal.is_admin else datasets.owners(dataset_id)
    others.discard(principal.name)
    for job_id in store.ids_in_states((JobState.QUEUED, JobState.RUNNING)):
        record = store.get(job_id)
        if record.spec.dataset.dataset_id != dataset_id:
            continue
        if record.owner != principal.name and others:
            continue  # its owner's (or another) entry keeps the file
        user = f"job {job_id}" if principal.can_see(record.owner) else "another principal's job"
        raise FailedPreconditionError(
            f"dataset {dataset_id} is in use by {user}; delete it once that job has ended"
        )
