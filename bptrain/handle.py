"""`JobHandle`: a submitted job and the verbs on it, as `Client.submit` returns it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from bptrain.v1 import training_pb2 as pb

if TYPE_CHECKING:
    from bptrain.client import Client


class JobHandle:
    """A submitted job: the `bptrain.v1.Job` it was (its fields read through), plus verbs.

    ``client.submit(spec).wait()`` follows the job to its end and returns the final Job.
    """

    def __init__(self, client: Client, job: pb.Job) -> None:
        self.client = client
        self.job = job

    def __getattr__(self, name: str) -> Any:
        return getattr(self.job, name)

    def __repr__(self) -> str:
        return f"JobHandle({self.job.job_id!r}, {pb.JobState.Name(self.job.state)})"

    def refresh(self) -> pb.Job:
        self.job = self.client.get(self.job.job_id)
        return self.job

    def wait(
        self,
        *,
        on_point: Callable[[pb.MetricPoint], None] | None = None,
        on_reconnect: Callable[[str, int], None] | None = None,
        reconnect_for_s: float | None = None,
    ) -> pb.Job:
        self.job = self.client.wait(
            self.job.job_id,
            on_point=on_point,
            on_reconnect=on_reconnect,
            reconnect_for_s=reconnect_for_s,
        )
        return self.job

    def metrics(
        self, after_step: int = 0, *, reconnect_for_s: float | None = None
    ) -> Iterator[pb.MetricPoint]:
        return self.client.metrics(self.job.job_id, after_step, reconnect_for_s=reconnect_for_s)

    def cancel(self) -> pb.Job:
        self.job = self.client.cancel(self.job.job_id)
        return self.job

    def weights(self) -> dict[str, np.ndarray]:
        return self.client.weights(self.job.job_id)
