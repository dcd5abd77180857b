"""RunnerPool: a job runner booted ahead of need, so a job does not wait for it.

A runner is a Ray actor with a process of its own, and starting that process (a Python
interpreter, `import ray`, registering with the node) takes 0.5-0.7 s on a small host.
A job's workers can only be created once its runner runs, so those two process starts
came one after the other at every job start and every runner replacement. The API
process keeps one runner booted and idle (a `StandbyRunner`: no job, no CPUs reserved,
about 100 MB) and hands it the next job (`assign`). When that job has ended, the same
process forgets it (`recycle`) and waits for the next one, so jobs one after another
boot no runner at all; a standby is booted only to replace one that was lost (or while
every one is out with a running job, once that job's workers have started). A standby
whose job SUCCEEDED on colocated workers also keeps those workers for its next job
(`kept_workers`), unless another job runs.

Standbys are detached actors named "standby-runner/<id>"; the name of the one a job got
is stored with the job, so a restarted API process reattaches to it like to any runner.
A standby that no job names (the API process died before storing the name, or it was
idle when the process died) is removed by `remove_strays` when the next one starts.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from services.cluster import NAMESPACE, remote_class
from services.jobs.colocated_cohort import ColocatedCohort
from services.jobs.kept_workers import KEEP_S, KeptWorkers
from services.jobs.records import JobState
from services.jobs.runner import JobRunner
from services.jobs.runner_options import RunnerOptions
from services.jobs.spec import JobSpec

log = logging.getLogger(__name__)

PREFIX = "standby-runner/"
RECYCLE_TIMEOUT_S = 10.0


class StandbyRunner(JobRunner):
    """A JobRunner started before its job is known: `assign` gives it a job, `recycle`
    makes it forget that job once it ended, so the process can take the next one."""

    def __init__(self) -> None:  # the job's fields come with `assign`
        self._is_assigned = False
        self._ran = threading.Event()  # `run` returned (its actors released)
        self._kept: KeptWorkers | None = None  # the last job's workers, idle
        self._kept_lock = threading.Lock()
        self._drop_timer: threading.Timer | None = None
        self._before_job: set[str] = set()

    def ready(self) -> bool:
        """Answers once booted; the pool calls it at once, so that the connection to
        this actor is made before a job waits on it."""
        return True

    def assign(self, job_id: str, spec: JobSpec, options: RunnerOptions | None = None) -> None:
        """Become the runner of `job_id` (JobRunner's arguments); then `run` as usual."""
        if self._is_assigned:
            raise RuntimeError(f"this runner already runs job {self.job_id}")
        self._before_job = set(vars(self))
        JobRunner.__init__(self, job_id, spec, options)
        self._is_assigned = True
        self._ran.clear()

    def run(self) -> JobState:
        try:
            return JobRunner.run(self)
        finally:
            self._ran.set()

    def recycle(self, timeout_s: float = RECYCLE_TIMEOUT_S, keep_workers_s: float = 0.0) -> bool:
        """Forget the job once `run` has returned (its actors are released then), and
        wait for the next; False, with nothing forgotten, if it has not returned within
        `timeout_s`. The job's workers, if kept, are kept `keep_workers_s` longer
        (0: dropped now)."""
        if not self._is_assigned:
            return True
        if not self._ran.wait(timeout_s):
            return False
        for name in set(vars(self)) - self._before_job:
            delattr(self, name)  # the job's state, its data and checkpoints with it
        self._is_assigned = False
        self._keep_for(keep_workers_s)
        return True

    # --- kept workers (services/jobs/kept_workers.py) --------------------------------

    def drop_workers(self) -> None:
        """Kill the workers kept from the last job, if any."""
        self._keep_for(0.0)

    def _keep_for(self, seconds: float) -> None:
        """Drop the kept workers after `seconds` (now for 0) unless a job takes them."""
        with self._kept_lock:
            self._cancel_drop()
            if self._kept is None:
                return
            if seconds <= 0:
                kept, self._kept = self._kept, None
                kept.drop()
                return
            self._drop_timer = threading.Timer(seconds, self.drop_workers)
            self._drop_timer.daemon = True
            self._drop_timer.start()

    def _kept_workers(self) -> KeptWorkers | None:
        with self._kept_lock:
            self._cancel_drop()
            kept, self._kept = self._kept, None
            return kept

    def _cancel_drop(self) -> None:
        """No timed drop pending any more (call holding `_kept_lock`)."""
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None

    def _release_actors(self, ended: JobState | None = None) -> None:
        """At the end of a job that SUCCEEDED on colocated workers, keep them for the
        next job (for at most `KEEP_S` until `recycle` says how long); else kill them."""
        cohort = self._cohort
        if ended is not JobState.SUCCEEDED or not isinstance(cohort, ColocatedCohort):
            JobRunner._release_actors(self, ended)
            return
        kept = cohort.keep()
        if kept is None:
            return
        with self._kept_lock:
            earlier, self._kept = self._kept, kept
        if earlier is not None:  # not taken by this job (it failed before its workers)
            earlier.drop()
        self._keep_for(KEEP_S)


@dataclass(frozen=True)
class Standby:
    name: str
    actor: ray.actor.ActorHandle


class RunnerPool:
    """`size` runners, idle here or out with a job and coming back (0: none; jobs then
    start their own)."""

    def __init__(
        self,
        size: int = 1,
        *,
        keep_workers_s: float = KEEP_S,
        others_running: Callable[[], bool] = lambda: False,
    ) -> None:
        """`keep_workers_s`: how long a runner keeps its last job's workers for the next
        job (0: never); `others_running()`: whether any job runs besides the one whose
        runner comes back (its workers are not kept then: that job may need the CPUs)."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self.keep_workers_s = keep_workers_s
        self.others_running = others_running
        self._idle: list[Standby] = []
        self._out = 0  # taken and not given back yet
        self._lock = threading.Lock()
        self._is_closed = False

    def take(self) -> Standby | None:
        """An idle runner (maybe still booting), or None; `give_back` it when its job
        ends or it is lost."""
        with self._lock:
            if not self._idle:
                return None
            self._out += 1
            taken, others = self._idle[0], self._idle[1:]
            self._idle = others
        for standby in others:  # their kept workers' CPUs may be what the job needs
            standby.actor.drop_workers.remote()
        return taken

    def give_back(self, standby: Standby, *, is_reusable: bool) -> bool:
        """A taken runner is done with its job: recycled into the pool when
        `is_reusable` (its job ended and it answers), else killed and another booted.
        Returns whether it was recycled."""
        recycled = False
        keep_s = 0.0 if self.others_running() else self.keep_workers_s
        if is_reusable:
            try:
                recycled = ray.get(
                    standby.actor.recycle.remote(keep_workers_s=keep_s),
                    timeout=RECYCLE_TIMEOUT_S + 5,
                )
            except (RayActorError, RayTaskError, GetTimeoutError) as error:
                log.info("standby %s not recycled: %s", standby.name, error)
        with self._lock:
            self._out -= 1
            if recycled and not self._is_closed and len(self._idle) < self.size:
                self._idle.insert(0, standby)  # the next job takes it, and what it keeps
                return True
        ray.kill(standby.actor, no_restart=True)
        self.fill()
        return False

    def drop_workers(self) -> None:
        """Every idle standby drops the workers it keeps (their CPUs are free soon after)."""
        with self._lock:
            idle = list(self._idle)
        for standby in idle:
            standby.actor.drop_workers.remote()

    def idle_names(self) -> set[str]:
        with self._lock:
            return {standby.name for standby in self._idle}

    def fill(self) -> None:
        """Boot standbys until `size` are idle or out (Ray must be initialised)."""
        with self._lock:
            self._fill()

    def _fill(self) -> None:
        while not self._is_closed and len(self._idle) + self._out < self.size:
            name = PREFIX + uuid.uuid4().hex[:12]
            try:
                actor = (
                    remote_class(StandbyRunner)
                    .options(name=name, num_cpus=0, max_concurrency=4, lifetime="detached")
                    .remote()
                )
            except Exception as error:  # Ray gone: jobs start their own runners
                log.warning("no standby runner (%s)", error)
                return
            actor.ready.remote()  # connects to it while it boots
            self._idle.append(Standby(name, actor))

    def remove_strays(self, in_use: set[str]) -> list[str]:
        """Kill every standby runner in Ray's namespace that is neither idle here nor in
        `in_use` (the runner names stored with unfinished jobs); returns their names."""
        with self._lock:
            idle = {s.name for s in self._idle}
        strays = []
        for name in ray.util.list_named_actors():
            if name.startswith(PREFIX) and name not in idle and name not in in_use:
                try:
                    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
                    strays.append(name)
                except ValueError:  # gone meanwhile
                    pass
        if strays:
            log.info("removed %d stray standby runners: %s", len(strays), ", ".join(strays))
        return strays

    def close(self) -> None:
        """Kill the idle standbys; no more are started."""
        with self._lock:
            self._is_closed = True
            idle, self._idle = self._idle, []
        for standby in idle:
            try:
                ray.kill(standby.actor, no_restart=True)
            except Exception as error:  # Ray already gone
                log.debug("standby %s not killed: %s", standby.name, error)
