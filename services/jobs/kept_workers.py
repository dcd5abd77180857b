"""KeptWorkers: a finished job's colocated worker actors, kept idle for the next job.

Starting a worker actor starts a process (a Python interpreter, `import ray`,
registering with the node): 0.4-0.8 s on a small host, most of a small job's start.
A standby runner (`runner_pool`) whose job SUCCEEDED keeps that job's workers instead
of killing them. They leave the job first (`ColocatedWorker.forget`: mesh closed,
shared memory unmapped, data and θ dropped), and the runner's next job takes those that
fit it (the same worker class, CPUs and device) and makes them its own (`renew`: the
class's `__init__` again, in the same process). Jobs one after another of one shape
then start no process at all.

Kept workers still hold their CPUs in Ray's accounting, so they are dropped (killed)
whenever someone else may need those: when the next job does not fit them, when a job
starts on another runner or runs beside (the pool's `take` and `give_back`), and after
`keep_s` seconds without a job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

log = logging.getLogger(__name__)

KEEP_S = 60.0  # how long a standby runner keeps its last job's workers without a job


@dataclass
class KeptWorkers:
    """Idle worker actors of one class, each holding `cpus` CPUs on `device`."""

    actors: list[ray.actor.ActorHandle]
    kind: type
    cpus: float
    device: str

    def take(self, kind: type, cpus: float, device: str, count: int) -> list:
        """Up to `count` of these actors for workers of `kind` with `cpus` CPUs on
        `device`; the rest (all of them when they do not fit) are killed."""
        fits = (kind, cpus, device) == (self.kind, self.cpus, self.device)
        taken = self.actors[:count] if fits else []
        self.actors = self.actors[len(taken) :]
        self.drop()
        return taken

    def drop(self) -> None:
        """Kill every actor still kept."""
        actors, self.actors = self.actors, []
        for actor in actors:
            ray.kill(actor, no_restart=True)  # a no-op for an actor already dead
        if actors:
            log.info("dropped %d kept workers", len(actors))
