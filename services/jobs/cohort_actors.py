"""The Ray actors of a job's cohort: how each is created, restored, awaited, pinged and killed."""

from __future__ import annotations

import logging
import re
import uuid

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from services.jobs.checkpoints import Checkpoint, split_shards
from services.jobs.spec import JobSpec
from services.jobs.training_data import TrainingData
from services.paramserver.optimizers import LRSchedule
from services.paramserver.server import ParameterServer
from worker.gradient_worker import GradientWorker
from worker.layout import ParamLayout

log = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 120.0
PING_TIMEOUT_S = 5.0


class PlacementError(Exception):
    """The cluster could not place the job's actors in time."""

    @classmethod
    def for_workers(cls, count: int, cpus_each: float) -> PlacementError:
        cpus = ray.cluster_resources().get("CPU", 0)
        return cls(
            f"could not place {count} workers ({cpus_each} CPU each) within "
            f"{PLACEMENT_TIMEOUT_S:.0f} s; the cluster has {cpus:g} CPUs"
        )


def actor_incarnation() -> str:
    """A short random id for the actor names of one cohort object. A new runner counts its
    generations from 1 again, while the actors of the runner it replaces may still hold
    their names: when a node vanishes (a container killed), Ray frees them only once it
    declares the node dead, seconds after the new runner has started."""
    return uuid.uuid4().hex[:6]


def actor_name(job_id: str, role: str, index: int, generation: int, incarnation: str) -> str:
    """`{job}/{role}-{index}.{generation}-{incarnation}` (role worker or ps): unique across
    replacements (generation) and runners (incarnation); `kill_strays` reads it back."""
    return f"{job_id}/{role}-{index}.{generation}-{incarnation}"


def new_parameter_servers(
    job_id: str, spec: JobSpec, schedule: LRSchedule, generation: int, incarnation: str
) -> list[ray.actor.ActorHandle]:
    """One parameter-server actor per θ shard, at θ's initial values."""
    # bsp steps come one at a time; asp/ssp pushes must not queue behind one whose
    # gradient is not there yet, so those servers take calls on several threads.
    concurrency = 1 if spec.consistency == "bsp" else 2 * spec.workers + 4
    return [
        ray.remote(ParameterServer)
        .options(
            name=actor_name(job_id, "ps", s, generation, incarnation),
            num_cpus=0,
            max_concurrency=concurrency,
        )
        .remote(
            sizes=spec.sizes,
            server=spec.server_config(schedule),
            workers=spec.workers,
            consistency=spec.consistency,
            staleness_aware_lr=spec.staleness_aware_lr,
            shard=(s, spec.ps_shards),
        )
        for s in range(spec.ps_shards)
    ]


def restore_parameter_servers(
    servers: list[ray.actor.ActorHandle], spec: JobSpec, checkpoint: Checkpoint
) -> None:
    """Give each parameter-server shard its part of `checkpoint`; returns once all have it."""
    parts = split_shards(checkpoint, ParamLayout(spec.sizes).shard_bounds(spec.ps_shards))
    ray.get(
        [
            server.restore.remote(
                step=part.step,
                theta=part.theta,
                optimizer_step=part.optimizer_step,
                buffers=part.buffers,
            )
            for server, part in zip(servers, parts, strict=True)
        ],
        timeout=PLACEMENT_TIMEOUT_S,
    )


def new_gradient_worker(
    *,
    name: str,
    spec: JobSpec,
    data: TrainingData,
    shard: tuple[ray.ObjectRef, ray.ObjectRef],
    index: int,
    cpus: float,
) -> ray.actor.ActorHandle:
    """Worker `index`'s actor, on its shard (X ref, y ref) of the training data."""
    X, y = shard
    return (
        ray.remote(GradientWorker)
        .options(
            name=name,
            num_cpus=cpus,
            scheduling_strategy="SPREAD",  # over the cluster's nodes
            **GradientWorker.actor_options(spec.device),
        )
        .remote(spec.worker_config(index, data.plan), X, y)  # the shard by reference, once
    )


def wait_placed(workers: list, cpus_each: float) -> list[dict]:
    """Each worker's placement, once all are up (PlacementError when not in time)."""
    try:
        return ray.get([w.placement.remote() for w in workers], timeout=PLACEMENT_TIMEOUT_S)
    except GetTimeoutError:
        raise PlacementError.for_workers(len(workers), cpus_each) from None


def answers(method) -> bool:
    """Whether an actor's `method` returns within PING_TIMEOUT_S."""
    try:
        ray.get(method.remote(), timeout=PING_TIMEOUT_S)
        return True
    except (RayActorError, GetTimeoutError):
        return False


def kill(actor: ray.actor.ActorHandle) -> None:
    ray.kill(actor, no_restart=True)  # a no-op for an actor that is already dead


def kill_strays(job_id: str, incarnation: str) -> list[str]:
    """Kill the job's workers and parameter servers that another cohort object made (the
    runner this one replaces); returns their names. Ray kills a dead runner's actors with
    it, but when the runner's whole node vanished (a container or machine gone) only once
    it declares the node dead, tens of seconds later: until then the survivors elsewhere
    hold their CPUs, which the new cohort's workers wait for."""
    stray = re.compile(rf"{re.escape(job_id)}/(worker|ps)-\d+\.\d+-(?!{incarnation}$)\w+")
    names = [name for name in ray.util.list_named_actors() if stray.fullmatch(name)]
    for name in names:
        try:
            kill(ray.get_actor(name))
        except ValueError:  # ended meanwhile
            continue
    if names:
        log.info("job %s: killed %s, left by the runner this one replaces", job_id, names)
    return names
