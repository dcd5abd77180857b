"""WeightsLocator: which .npz file serves a job's weights, by the job's state.

A SUCCEEDED job has its final weights file. On request for the latest weights, a
RUNNING job answers with θ as its parameter server exports it now (its monitor fetches
the export its runner starts), and a job that ended without weights (FAILED, CANCELLED)
with its last checkpoint; either is written once beside the final file's place and kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from services.errors import FailedPreconditionError
from services.jobs.checkpoints import CheckpointStore
from services.jobs.config import JobsConfig
from services.jobs.records import JobRecord, JobState
from services.jobs.store import JobStore
from services.jobs.weights import write_weights


class LatestWeights(Protocol):
    """What a running job's monitor answers (services/jobs/monitor.py)."""

    def latest_weights(self) -> tuple[int, np.ndarray]:
        """(step, θ (P,)) of the job as it is now."""
        ...


class WeightsLocator:
    """Finds (and where needed writes) the .npz of a job's weights."""

    def __init__(
        self,
        config: JobsConfig,
        store: JobStore,
        *,
        running: Callable[[str], LatestWeights | None],
    ) -> None:
        """`running(job_id)`: the job's monitor while this server follows it, else None
        (or an error saying why it cannot tell)."""
        self.config = config
        self.store = store
        self.running = running

    def npz(self, record: JobRecord, *, latest: bool = False) -> Path:
        """The file that serves `record`'s weights: its final weights, or with `latest`
        its latest step (RUNNING) or last checkpoint (FAILED, CANCELLED)."""
        if latest and record.state in (JobState.FAILED, JobState.CANCELLED):
            return self.last_checkpoint(record)
        if latest and record.state is JobState.RUNNING:
            return self.latest_step(record)
        return self.succeeded(record.job_id)

    def succeeded(self, job_id: str) -> Path:
        """The SUCCEEDED job's weights file, read from the store now."""
        record = self.store.get(job_id)
        if record.state is not JobState.SUCCEEDED or not record.weights_path:
            raise FailedPreconditionError(
                f"job {job_id} has no weights: it is {record.state.value}, "
                "weights exist once it SUCCEEDED"
            )
        path = Path(record.weights_path)
        if not path.is_file():
            raise FailedPreconditionError(f"the weights file of job {job_id} is missing")
        return path

    def last_checkpoint(self, record: JobRecord) -> Path:
        """θ of the ended job's last checkpoint, as checkpoint-{step}.npz."""
        job_id = record.job_id
        checkpoint = CheckpointStore(self.config.checkpoint_dir(job_id)).latest()
        if checkpoint is None:
            raise FailedPreconditionError(f"job {job_id} ended before its first checkpoint")
        path = self.config.weights_path(job_id).with_name(f"checkpoint-{checkpoint.step}.npz")
        if not path.exists():
            write_weights(path, record.spec, checkpoint.theta)
        return path

    def latest_step(self, record: JobRecord) -> Path:
        """θ of the running job as it is now, as step-{step}.npz."""
        job_id = record.job_id
        monitor = self.running(job_id)
        if monitor is None:
            raise FailedPreconditionError(f"job {job_id} is no longer running")
        step, theta = monitor.latest_weights()
        path = self.config.weights_path(job_id).with_name(f"step-{step}.npz")
        if not path.exists():
            write_weights(path, record.spec, theta)
        return path
