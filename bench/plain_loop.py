"""bptrain's colocated step loop in plain processes, without Ray: what this host allows it.

The bench's `loop_no_ray` rows. The service's own `ColocatedWorker` (bsp) and
`AsyncColocatedWorker` (asp, ssp), the classes a job's runner makes Ray actors of, run
here in N plain processes (multiprocessing, spawn) on the job's own shards and spec,
joined by the same mesh and shared memory, one BLAS thread each. No runner, no drains
while they train, and no Ray process beside them: the bench runs these rows before it
starts Ray. What they reach against `single` is the host's ceiling for this step loop
(its barriers, its shared θ); a `bptrain` row against it is what running under Ray,
its daemons included, costs on this host.

    steps, profiles = run_plain_loop(spec, data, steps=220)
"""

from __future__ import annotations

import multiprocessing
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection

from threadpoolctl import threadpool_limits

TIMEOUT_S = 300.0  # a worker silent this long (start-up, training) fails the row


class LoopFailed(Exception):
    """A plain worker process failed or went silent; the message says which and why."""


@dataclass(frozen=True)
class StepEnd:
    """When worker `worker` finished its step (bsp) or push (asp/ssp) `step`, 1-based."""

    worker: int
    step: int
    finished_at: float  # time.time()
    samples: int  # bsp: the step's samples over all workers; asp/ssp: this push's


def run_plain_loop(spec, data, steps: int) -> tuple[list[StepEnd], list[dict]]:
    """Train the validated JobSpec `spec` for `steps` steps on `data` (its TrainingData)
    in spec.workers plain processes. Returns every worker's step ends and profiles
    (`ShardKeeper.profile`)."""
    from services.jobs.colocated_cohort import worker_arguments, worker_kind

    context = multiprocessing.get_context("spawn")  # the parent may run Ray's threads
    kind = worker_kind(spec)
    server = spec.server_config(spec.schedule.schedule(steps))  # as the cohort's
    pipes, processes = [], []
    for i in range(spec.workers):
        arguments = worker_arguments(spec, server, data.plan, i, *data.shard(i))
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(kind, arguments, steps, theirs), daemon=True
        )
        process.start()
        theirs.close()
        pipes.append(ours)
        processes.append(process)
    try:
        endpoints = [_receive(pipe, i, "start") for i, pipe in enumerate(pipes)]
        tag = uuid.uuid4().hex  # names the mesh's shared-memory file
        for pipe in pipes:
            pipe.send((endpoints, tag))
        for i, pipe in enumerate(pipes):
            _receive(pipe, i, "join")
        for pipe in pipes:
            pipe.send("go")  # every one joined: the loops start together
        results = [_receive(pipe, i, "train") for i, pipe in enumerate(pipes)]
        for pipe in pipes:
            pipe.send("done")  # every loop ended: each may leave the mesh
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        for pipe in pipes:
            pipe.close()
    ends = [end for worker_ends, _ in results for end in worker_ends]
    return ends, [profile for _, profile in results]


def _receive(pipe: Connection, worker: int, phase: str):
    """The next message from worker `worker`; LoopFailed when it raised, died or hung."""
    try:
        if not pipe.poll(TIMEOUT_S):
            raise LoopFailed(f"plain worker {worker}: no answer in {TIMEOUT_S:.0f} s ({phase})")
        message = pipe.recv()
    except (EOFError, OSError):
        raise LoopFailed(f"plain worker {worker} died ({phase})") from None
    if isinstance(message, LoopFailed):
        raise message
    return message


def _worker_main(kind: type, arguments: dict, steps: int, pipe: Connection) -> None:
    """One plain worker process: build, join the mesh, train, send the step ends."""
    from services.paramserver.colocated_async import AsyncColocatedWorker

    index = arguments["worker"].batches.worker_index
    is_async = issubclass(kind, AsyncColocatedWorker)  # its pushes count clocks from 0
    worker = None
    try:
        with threadpool_limits(limits=1):
            worker = kind(**arguments)
            pipe.send(worker.endpoint())
            endpoints, tag = pipe.recv()
            worker.join(endpoints, tag)
            pipe.send("joined")
            pipe.recv()  # go
            worker.train(steps, (), steps)
            stats = worker.drain().stats
            ends = [
                StepEnd(index, s.clock + 1 if is_async else s.version, s.finished_at, s.samples)
                for s in stats
            ]
            pipe.send((ends, worker.profile()))
            pipe.recv()  # done: asp/ssp peers may still announce pushes until theirs end
    except Exception as error:  # to the parent, which fails the row with it
        pipe.send(LoopFailed(f"plain worker {index}: {type(error).__name__}: {error}"))
    finally:
        if worker is not None:
            worker.close()
        pipe.close()
