"""The exceptions that end a job's training before its last step, as the runner reports
them: cancelled, failed (with the reason users see), or stopped early by `stop_when`."""

from __future__ import annotations

import numpy as np


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class JobFailed(Exception):
    """The job cannot go on; the message is the reason users see."""


class StoppedEarly(Exception):
    """The spec's `stop_when` rule was met; the message is the reason users see.

    `theta`: θ after the step that met it, (P,) float32, kept as the job's final θ."""

    def __init__(self, reason: str, theta: np.ndarray | None = None) -> None:
        super().__init__(reason)
        self.theta = theta

    def __reduce__(self):
        return type(self), (str(self), self.theta)
