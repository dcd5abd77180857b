"""Distributed training throughput: bptrain's job runner vs a naive Ray parameter server,
vs one process, vs Ray Train's TorchTrainer (DDP), side by side in one run.

MLP 784-256-256-10 (relu, relu, identity), softmax cross-entropy, plain SGD, float32,
256 samples per worker per step, synthetic blobs generated in-process (no downloads),
one BLAS thread in every compute process (threadpoolctl, and OMP/OPENBLAS/MKL_NUM_THREADS=1
for the Ray processes the bench does not control: the runner, the parameter server).

Rows:
  single          one process: `MLP.loss_and_gradient` then the SGD update, batch 256.
                  The reference: efficiency_vs_single = samples_per_s / single's, for
                  every row (so 2 workers aim at 2.0, and the goal is 1.7). Every other
                  row is measured right after a reference run of its own (single, the
                  same model and settings, Ray idle beside it) and divided by that one:
                  this host's speed drifts by 20 % over a minute, and a ratio of two
                  adjacent runs drifts far less than one against a run minutes ago.
                  The rows the goals read (bptrain and ray_train_torch, base model) get
                  --repeats such pairs (3 in a full run) and are the pair of median
                  ratio; the goals print every pair's ratio.
  naive_ray_ps    the Ray docs' parameter-server pattern with θ on the driver: every step
                  `ray.put(θ)`, `ray.get` of each worker actor's gradient, average, update.
  bptrain         the service's own `JobRunner` as a Ray actor (as the job monitor makes
                  it), polled for MetricPoints the way the monitor polls; per consistency
                  mode (bsp, ssp, asp), worker count and parameter-server shard count.
                  No validation split and no checkpoints, so every step is training.
  ray_train_torch TorchTrainer + DDP (gloo) on the same model, batch and CPUs; timed inside
                  the training loop. Needs `ray[train]` (not a dependency of bptrain).
  loop_no_ray     bptrain's colocated workers (the same classes, spec and shards) in plain
                  processes, no Ray (bench/plain_loop.py): what this host allows the
                  step loop, measured in the same run; `bptrain` against it is what
                  running under Ray costs here. Not a goal row: context for the goals.

A row whose spec the service rejects (a field not there yet), or whose library is not
installed, prints "unavailable: <reason>"; a row that ran and failed, "failed: <reason>".
Neither stops the others, and both stay in --json with samples_per_s null.

Throughput is samples over the timed steps / wall time from the end of the last warm-up
step to the end of the last step (bptrain: from the MetricPoints' elapsed_seconds, each
step's samples = its samples_per_second × its Δelapsed). Noise comes in bursts, so the
table also gives each row's median step time and the efficiency that follows from it
(batch / median step time, against single's); comm fraction is the median over steps of
1 − compute_seconds / step wall time (clamped at 0: asynchronous steps overlap).

    python bench/distributed.py                  # 20 warm-up + 200 timed steps per row
    python bench/distributed.py --quick          # CI budget: fewer rows and steps, no torch
    python bench/distributed.py --json out.json  # also write the rows
    python bench/distributed.py --impls bptrain  # only these rows (and single, the reference)

It starts its own embedded Ray (address "local": never a cluster that happens to run
on the machine) with as many logical CPUs as the widest row has workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its sibling plain_loop

from plain_loop import LoopFailed, StepEnd, run_plain_loop

from services.datasets import DatasetOptions, load_dataset
from services.paramserver.colocated_state import thread_runqueue_seconds
from services.paramserver.optimizers import OptimizerConfig, apply_update, init_state
from worker.layout import ParamLayout
from worker.model import MLP

logger = logging.getLogger("bench.distributed")

SIZES = (784, 256, 256, 10)
MODELS = {"base": SIZES, "big": (784, 2048, 2048, 10)}  # 0.27 M and 5.8 M parameters
ACTIVATIONS = ("relu", "relu", "identity")
LOSS = "softmax_cross_entropy"
LEARNING_RATE = 0.01
LOCAL_BATCH = 256  # samples per worker per step
SSP_STALENESS = 2
SEED = 0
POLL_TIMEOUT_S = 0.5  # as services/jobs/monitor.py polls a runner
IMPLS = (
    "single",
    "naive_ray_ps",
    "bptrain",
    "bptrain_graph",
    "bptrain_tasks",
    "ray_train_torch",
    "loop_no_ray",
)
# The JobRunner's bsp transport per row: the service's own choice, or the parameter-server
# actor paths it keeps (a compiled graph; one task per hop).
TRANSPORT = {"bptrain": "auto", "bptrain_graph": "graph", "bptrain_tasks": "tasks"}
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Unavailable(Exception):
    """The row cannot run here (a spec field the service lacks, a missing library)."""


REPEATED_IMPLS = ("bptrain", "ray_train_torch", "loop_no_ray")  # the rows the goals read
RAY_FREE_IMPLS = ("single", "loop_no_ray")  # measured before Ray starts
DEFAULT_REPEATS = 3  # paired runs of each goal row in a full run (one with --quick)


class RowFailed(Exception):
    """The row ran and failed; the message says why."""


@dataclass(frozen=True)
class Plan:
    """One row to measure."""

    # "single" | "naive_ray_ps" | "bptrain" (the service's choice of parameter server) |
    # "bptrain_graph" / "bptrain_tasks" (bsp on a parameter-server actor, steps as a
    # compiled graph / as tasks) | "ray_train_torch"
    impl: str
    mode: str  # "sgd" (one process) | "sync" | "bsp" | "ssp" | "asp" | "ddp"
    workers: int
    shards: int = 1  # parameter-server shards (bptrain only)
    model: str = "base"  # a key of MODELS

    @property
    def sizes(self) -> tuple[int, ...]:
        return MODELS[self.model]

    @property
    def batch(self) -> int:
        """The global batch of one step: LOCAL_BATCH per worker."""
        return LOCAL_BATCH * self.workers


@dataclass(frozen=True)
class StepRecord:
    """One step as a row saw it. end_s: seconds since the row's clock started."""

    end_s: float
    samples: int
    compute_s: float | None = None  # mean time a worker spent on its gradient
    bytes_moved: float | None = None  # pushed + pulled, all workers together
    staleness_mean: float | None = None
    staleness_max: float | None = None


@dataclass(frozen=True)
class Measurement:
    samples_per_s: float
    step_ms_median: float
    timed_steps: int
    comm_fraction: float | None = None
    bytes_per_step: float | None = None
    staleness_mean: float | None = None
    staleness_max: float | None = None
    breakdown: dict[str, float] | None = None  # ms per step: compute, communication, ...
    cpu_per_step: dict[str, float] | None = None  # CPU s per step per process kind


@dataclass
class Row:
    """One line of the table (and of --json)."""

    impl: str
    mode: str
    workers: int
    shards: int
    batch: int
    model: str = "base"
    samples_per_s: float | None = None
    efficiency_vs_single: float | None = None
    efficiency_median_step: float | None = None  # the same, from median step times
    reference_samples_per_s: float | None = None  # single, measured just before this row
    reference_step_ms: float | None = None  # its median step
    efficiency_runs: list[float] | None = None  # each run's ratio; the row is the median run
    steal_fraction: float | None = None  # of the host's CPU time over the row (hypervisor)
    step_ms_median: float | None = None
    comm_fraction: float | None = None
    bytes_per_step: float | None = None
    staleness_mean: float | None = None
    staleness_max: float | None = None
    timed_steps: int = 0
    breakdown: dict[str, float] | None = None
    cpu_per_step: dict[str, float] | None = None
    status: str = "ok"  # "ok" | "unavailable" | "failed"
    reason: str = ""


@dataclass(frozen=True)
class Settings:
    warmup: int
    steps: int
    samples: int  # rows of the synthetic data set, before its 20 % test split
    quick: bool = False
    plans: tuple[Plan, ...] = field(default=())
    repeats: int = 1  # runs of each goal row (REPEATED_IMPLS on the base model)


def summarise(records: Sequence[StepRecord], warmup: int) -> Measurement:
    """Throughput over records[warmup:], timed from the end of the warm-up step."""
    if warmup < 1 or len(records) < warmup + 2:
        raise RowFailed(f"only {len(records)} steps reported; need >= {warmup + 2}")
    timed = records[warmup:]
    ends = [r.end_s for r in records[warmup - 1 :]]
    durations = [after - before for before, after in itertools.pairwise(ends)]
    window = ends[-1] - ends[0]
    if window <= 0:
        raise RowFailed("the timed steps took no time")
    comm = [
        max(0.0, 1.0 - r.compute_s / d)
        for r, d in zip(timed, durations, strict=True)
        if r.compute_s is not None and d > 0
    ]
    moved = [r.bytes_moved for r in timed if r.bytes_moved is not None]
    stale_mean = [r.staleness_mean for r in timed if r.staleness_mean is not None]
    stale_max = [r.staleness_max for r in timed if r.staleness_max is not None]
    return Measurement(
        samples_per_s=sum(r.samples for r in timed) / window,
        step_ms_median=1e3 * statistics.median(durations),
        timed_steps=len(timed),
        comm_fraction=statistics.median(comm) if comm else None,
        bytes_per_step=statistics.median(moved) if moved else None,
        staleness_mean=statistics.fmean(stale_mean) if stale_mean else None,
        staleness_max=max(stale_max) if stale_max else None,
    )


# --- data -------------------------------------------------------------------------------


def training_rows(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The blobs' training split: X (N, 784) float32, y (N,) int64, as bptrain's data set."""
    options = DatasetOptions(samples=samples, features=SIZES[0], classes=SIZES[-1], seed=SEED)
    dataset = load_dataset("synthetic/blobs", options)
    return dataset.X_train, dataset.y_train


class Batches:
    """Rows of the next mini-batch: a fresh permutation of the shard every epoch."""

    def __init__(self, shard_size: int, batch: int, seed: int) -> None:
        if batch > shard_size:
            raise ValueError(f"batch {batch} exceeds the shard's {shard_size} rows")
        self.rng = np.random.default_rng(seed)
        self.shard_size, self.batch = shard_size, batch
        self.order = self.rng.permutation(shard_size)
        self.index = 0

    def next(self) -> np.ndarray:
        if (self.index + 1) * self.batch > self.shard_size:
            self.order, self.index = self.rng.permutation(self.shard_size), 0
        rows = self.order[self.index * self.batch : (self.index + 1) * self.batch]
        self.index += 1
        return rows


# --- single process ---------------------------------------------------------------------


def measure_single(
    X: np.ndarray, y: np.ndarray, settings: Settings, sizes: Sequence[int] = SIZES
) -> Measurement:
    """One process, one BLAS thread: gather a batch, gradient, θ ← θ − η·g."""
    model = MLP(sizes, ACTIVATIONS, LOSS)
    theta = model.layout.init_theta(ACTIVATIONS, SEED)  # (P,) float32
    grad = np.empty_like(theta)
    config = OptimizerConfig(kind="sgd", learning_rate=LEARNING_RATE)
    state = init_state(config, theta.size, theta.dtype)
    batches = Batches(len(X), LOCAL_BATCH, SEED)
    records = []
    compute = update = 0.0
    with threadpool_limits(limits=1):
        cpu, queued = time.process_time(), thread_runqueue_seconds()
        start = time.perf_counter()
        for step in range(settings.warmup + settings.steps):
            if step == settings.warmup:
                compute = update = 0.0
                cpu = time.process_time()
                queued = thread_runqueue_seconds()
            rows = batches.next()
            began = time.perf_counter()
            model.loss_and_gradient(theta, X[rows], y[rows], grad=grad)
            computed = time.perf_counter()
            apply_update(theta, grad, state, config)
            now = time.perf_counter()
            compute, update = compute + computed - began, update + now - computed
            records.append(StepRecord(now - start, LOCAL_BATCH, bytes_moved=0))
        cpu = time.process_time() - cpu
        queued_after = thread_runqueue_seconds()
    measurement = summarise(records, settings.warmup)
    steps = settings.steps
    breakdown = {"compute": 1e3 * compute / steps, "update": 1e3 * update / steps}
    if queued is not None and queued_after is not None:
        breakdown["preempted"] = 1e3 * (queued_after - queued) / steps
    return dataclasses.replace(
        measurement,
        comm_fraction=0.0,
        breakdown={**breakdown, "communication": 0.0, "waiting": 0.0},
        cpu_per_step={"driver": cpu / steps},
    )


# --- naive Ray parameter server -----------------------------------------------------------


class NaiveGradientWorker:
    """The Ray docs' DataWorker: a shard, a model, `compute_gradients(θ)`; made remote below."""

    def __init__(self, X: np.ndarray, y: np.ndarray, seed: int) -> None:
        self._blas_limit = threadpool_limits(limits=1)
        self.X, self.y = X, y
        self.model = MLP(SIZES, ACTIVATIONS, LOSS)
        self.batches = Batches(len(X), LOCAL_BATCH, seed)

    def compute_gradients(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        """(∂loss/∂θ (P,), seconds spent computing it) on the next local batch."""
        start = time.perf_counter()
        rows = self.batches.next()
        _, grad = self.model.loss_and_gradient(theta, self.X[rows], self.y[rows])
        return grad, time.perf_counter() - start


def measure_naive(X: np.ndarray, y: np.ndarray, workers: int, settings: Settings) -> Measurement:
    """θ on the driver; each step: put θ, get every worker's gradient, average, update."""
    import ray

    shard = len(X) // workers
    actors = [
        ray.remote(NaiveGradientWorker)
        .options(num_cpus=1)
        .remote(ray.put(X[i * shard : (i + 1) * shard]), ray.put(y[i * shard : (i + 1) * shard]), i)
        for i in range(workers)
    ]
    try:
        theta = MLP(SIZES, ACTIVATIONS, LOSS).layout.init_theta(ACTIVATIONS, SEED)
        g = np.empty_like(theta)
        bytes_moved = 2 * theta.nbytes * workers  # θ to every worker, a gradient back
        records = []
        with threadpool_limits(limits=1):
            ray.get([a.compute_gradients.remote(theta) for a in actors])  # actors are up
            start = time.perf_counter()
            for _ in range(settings.warmup + settings.steps):
                theta_ref = ray.put(theta)
                results = ray.get([a.compute_gradients.remote(theta_ref) for a in actors])
                np.mean([grad for grad, _ in results], axis=0, out=g)
                theta -= LEARNING_RATE * g  # θ ← θ − η·g
                compute_s = statistics.fmean(seconds for _, seconds in results)
                records.append(
                    StepRecord(
                        time.perf_counter() - start, LOCAL_BATCH * workers, compute_s, bytes_moved
                    )
                )
    finally:
        for actor in actors:
            ray.kill(actor)
    return summarise(records, settings.warmup)


# --- bptrain's runner ---------------------------------------------------------------------


def bptrain_fields(plan: Plan, settings: Settings) -> dict:
    """The JobSpec as a dict (the API's shape); newer fields only where they differ from
    their defaults, so bsp with one shard runs on a service that lacks them."""
    spec = {
        "name": f"bench-{plan.mode}-{plan.workers}w-{plan.shards}s-{plan.model}",
        "dataset": {
            "name": "synthetic/blobs",
            "samples": settings.samples,
            "features": plan.sizes[0],
            "classes": plan.sizes[-1],
            "validation_fraction": 0.0,
        },
        "layers": [
            {"units": units, "activation": activation}
            for units, activation in zip(plan.sizes[1:], ACTIVATIONS, strict=True)
        ],
        "loss": LOSS,
        "optimizer": {"kind": "sgd", "learning_rate": LEARNING_RATE},
        "batch_size": plan.batch,
        "steps": settings.warmup + settings.steps,
        "workers": plan.workers,
        "seed": SEED,
        "consistency": plan.mode,
    }
    if plan.mode == "ssp":
        spec["staleness"] = SSP_STALENESS
    if plan.shards != 1:
        spec["ps_shards"] = plan.shards
    return spec


def bptrain_spec(plan: Plan, settings: Settings):
    """The validated JobSpec, built as the API builds it; Unavailable when rejected."""
    from bptrain.specfile import spec_from_dict
    from services.api.convert import spec_from_proto

    requested = bptrain_fields(plan, settings)
    try:
        spec = spec_from_proto(spec_from_dict(requested))
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # InvalidSpecError too
        raise Unavailable(f"spec rejected: {error}") from None
    expected = {"consistency": plan.mode, "ps_shards": plan.shards}
    if plan.mode == "ssp":
        expected["staleness"] = SSP_STALENESS
    for name, value in expected.items():
        got = getattr(spec, name, 1 if name == "ps_shards" else None)
        if got != value:
            raise Unavailable(f"JobSpec.{name} is {got!r}, not {value!r}")
    return spec


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process on this host so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields_after_name = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields_after_name[11]) + int(fields_after_name[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds that each of a row's processes spends over a window of steps."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.start = self._sample()
        self.driver = time.process_time()

    def _sample(self) -> dict[tuple[str, int], float | None]:
        return {
            (kind, pid): process_cpu_seconds(pid) for kind, ps in self.pids.items() for pid in ps
        }

    def per_step(self, steps: int) -> dict[str, float]:
        """Mean CPU seconds per step per process of each kind, and the driver's."""
        end, spent = self._sample(), {}
        for (kind, pid), began in self.start.items():
            if began is not None and end[(kind, pid)] is not None:
                spent.setdefault(kind, []).append(end[(kind, pid)] - began)
        result = {kind: statistics.fmean(values) / steps for kind, values in spent.items()}
        result["driver"] = (time.process_time() - self.driver) / steps
        return result


def measure_bptrain(plan: Plan, settings: Settings) -> Measurement:
    """A JobRunner actor trains the spec; its MetricPoints give the step times, /proc the
    CPU each process spends per step, and colocated workers their own time breakdown."""
    import ray

    from services.jobs.records import JobState
    from services.jobs.runner import JobRunner
    from services.jobs.runner_options import RunnerOptions

    spec = bptrain_spec(plan, settings)
    runner = (
        ray.remote(JobRunner)
        .options(num_cpus=0, max_concurrency=4)
        .remote(
            f"bench-{uuid.uuid4().hex[:8]}", spec, RunnerOptions(transport=TRANSPORT[plan.impl])
        )
    )
    points: dict[int, object] = {}
    meter: CpuMeter | None = None
    cpu: dict[str, float] | None = None
    metered_from = 0
    try:
        finished = runner.run.remote()
        after_step = 0
        while True:
            update = ray.get(runner.poll.remote(after_step, POLL_TIMEOUT_S))
            for point in update.points:
                points[point.step] = point
            if update.points:
                after_step = update.points[-1].step
            if update.state.is_terminal:
                break
            # CPU over the timed steps, while every process still runs (measured up to
            # the last poll before the end: the actors go with the job).
            if meter is None and after_step >= settings.warmup:
                meter = CpuMeter(ray.get(runner.process_ids.remote()))
                metered_from = after_step
            elif meter is not None and after_step - metered_from >= max(settings.steps // 2, 1):
                cpu = meter.per_step(after_step - metered_from)  # the newest window wins
        state = ray.get(finished)
        if state is not JobState.SUCCEEDED:
            raise RowFailed(f"job {state.value}: {update.reason}")
        profiles = ray.get(runner.__ray_call__.remote(lambda self: self.profiles))
    finally:
        ray.kill(runner)
    records, previous = [], 0.0
    for step in sorted(points):
        point = points[step]
        elapsed = point.elapsed_seconds
        records.append(
            StepRecord(
                end_s=elapsed,
                samples=round(point.samples_per_second * (elapsed - previous)),
                compute_s=point.compute_seconds,
                bytes_moved=point.bytes_pushed + point.bytes_pulled,
                staleness_mean=point.staleness_mean,
                staleness_max=point.staleness_max,
            )
        )
        previous = elapsed
    measurement = summarise(records, settings.warmup)
    if profiles and cpu is not None:
        # Colocated workers run ahead of what the runner has reported (it drains in
        # batches), so /proc's window does not line up with theirs: they count their own.
        cpu = {**cpu, "workers": statistics.fmean(p["cpu_s"] for p in profiles)}
    return dataclasses.replace(
        measurement, breakdown=breakdown(measurement, records, profiles), cpu_per_step=cpu
    )


def breakdown(
    measurement: Measurement, records: Sequence[StepRecord], profiles: Sequence[dict]
) -> dict[str, float]:
    """ms per step in compute, communication, waiting and update. Colocated workers time
    each phase themselves (mean over workers); otherwise only compute is known (the
    workers') and the rest of the median step is communication, waiting and update
    together, reported as communication."""
    if profiles:
        phases = {
            name: 1e3 * statistics.fmean(p[f"{name}_s"] for p in profiles)
            for name in ("compute", "communication", "waiting", "update")
        }
        preempted = [p.get("preempted_s") for p in profiles]
        if preempted and None not in preempted:
            phases["preempted"] = 1e3 * statistics.fmean(preempted)
        return phases
    compute = statistics.median(r.compute_s for r in records if r.compute_s is not None)
    return {
        "compute": 1e3 * compute,
        "communication": max(measurement.step_ms_median - 1e3 * compute, 0.0),
    }


# --- the same step loop without Ray ---------------------------------------------------------


def measure_loop_no_ray(plan: Plan, settings: Settings) -> Measurement:
    """bptrain's colocated workers in plain processes (bench/plain_loop.py) on the row's
    spec and shards; their own phase timings and CPU per step, as the bptrain rows'."""
    from services.jobs.training_data import prepare_data

    spec = bptrain_spec(plan, settings)
    try:
        ends, profiles = run_plain_loop(spec, prepare_data(spec), settings.warmup + settings.steps)
    except LoopFailed as error:
        raise RowFailed(str(error)) from None
    records = step_records(ends, plan.workers, is_async=plan.mode != "bsp")
    measurement = summarise(records, settings.warmup)
    return dataclasses.replace(
        measurement,
        breakdown=breakdown(measurement, records, profiles),
        cpu_per_step={"workers": statistics.fmean(p["cpu_s"] for p in profiles)},
    )


def step_records(ends: Sequence[StepEnd], workers: int, is_async: bool) -> list[StepRecord]:
    """Step t ends when every worker has finished its step (bsp) or push (asp/ssp) t;
    its samples: bsp's total, which every worker reports, or the pushes' sum."""
    by_step: dict[int, list[StepEnd]] = {}
    for end in ends:
        by_step.setdefault(end.step, []).append(end)
    start = min(end.finished_at for end in ends)
    records = []
    for step in sorted(by_step):
        group = by_step[step]
        if len(group) < workers:
            break  # not every worker got this far (asp: the others had stopped)
        samples = sum(end.samples for end in group) if is_async else group[0].samples
        records.append(StepRecord(max(end.finished_at for end in group) - start, samples))
    return records


# --- Ray Train -------------------------------------------------------------------------------


def ray_train_loop(config: dict) -> None:
    """One TorchTrainer worker: DDP over the same MLP, batch and data; rank 0 reports."""
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    X, y = training_rows(config["samples"])
    shard = len(X) // world
    X_t = torch.from_numpy(np.array(X[rank * shard : (rank + 1) * shard]))
    y_t = torch.from_numpy(np.array(y[rank * shard : (rank + 1) * shard]))
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    net = ray.train.torch.prepare_model(torch.nn.Sequential(*layers[:-1]))  # DDP
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    batches = Batches(shard, LOCAL_BATCH, SEED + rank)
    ends = []
    start = time.perf_counter()
    for _ in range(config["warmup"] + config["steps"]):
        rows = torch.from_numpy(batches.next())
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(X_t[rows]), y_t[rows])
        loss.backward()  # DDP all-reduces the gradients here
        optimizer.step()
        ends.append(time.perf_counter() - start)
    records = [StepRecord(end, LOCAL_BATCH * world) for end in ends]
    metrics = asdict(summarise(records, config["warmup"]))
    # Ray Train v2 keeps only the metrics reported with a checkpoint (Result.metrics).
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            with open(os.path.join(directory, "measurement.json"), "w") as handle:
                json.dump(metrics, handle)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def measure_ray_train(workers: int, settings: Settings) -> Measurement:
    if settings.quick:
        raise Unavailable("skipped by --quick")
    try:
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as error:
        raise Unavailable(
            f"ray.train.torch cannot be imported ({error}); "
            "pip install 'ray[train]==2.60.0' torch to measure it"
        ) from None
    with tempfile.TemporaryDirectory(prefix="bench-ray-train-") as storage:
        trainer = TorchTrainer(
            ray_train_loop,
            train_loop_config={
                "samples": settings.samples,
                "warmup": settings.warmup,
                "steps": settings.steps,
            },
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            run_config=ray.train.RunConfig(
                name=f"bench-{uuid.uuid4().hex[:8]}", storage_path=storage
            ),
        )
        try:
            metrics = trainer.fit().metrics
        except Exception as error:
            raise RowFailed(f"TorchTrainer failed: {type(error).__name__}: {error}") from None
    if not metrics:
        raise RowFailed("TorchTrainer reported no metrics")
    names = {f.name for f in fields(Measurement)}
    return Measurement(**{k: v for k, v in metrics.items() if k in names})


# --- the run ----------------------------------------------------------------------------------


def default_plans(quick: bool) -> tuple[Plan, ...]:
    """Every row, in table order; --quick keeps one row per mode (CI's time budget)."""
    naive_workers = (2,) if quick else (1, 2)
    bptrain = [
        Plan("bptrain", "bsp", workers, shards=shards)
        for workers in (1, 2)
        for shards in ((1,) if quick else (1, 2))
    ]
    if not quick:
        bptrain += [
            Plan(impl, "bsp", w) for impl in ("bptrain_graph", "bptrain_tasks") for w in (1, 2)
        ]
    for mode in ("ssp", "asp"):
        bptrain += [Plan("bptrain", mode, workers) for workers in ((2,) if quick else (1, 2))]
    no_ray = [Plan("loop_no_ray", "bsp", w) for w in ((2,) if quick else (1, 2))]
    if not quick:
        no_ray += [Plan("loop_no_ray", mode, 2) for mode in ("ssp", "asp")]
    big = (
        []
        if quick
        else [
            Plan("single", "sgd", 1, model="big"),
            *(Plan("bptrain", "bsp", w, model="big") for w in (1, 2)),
            *(Plan("bptrain_graph", "bsp", w, model="big") for w in (1, 2)),
        ]
    )
    return (
        Plan("single", "sgd", 1),
        *(Plan("naive_ray_ps", "sync", workers) for workers in naive_workers),
        *bptrain,
        *no_ray,
        Plan("ray_train_torch", "ddp", 1),
        Plan("ray_train_torch", "ddp", 2),
        *big,
    )


def measure(plan: Plan, X: np.ndarray, y: np.ndarray, settings: Settings) -> Measurement:
    if plan.impl == "single":
        return measure_single(X, y, settings, plan.sizes)
    if plan.impl == "naive_ray_ps":
        return measure_naive(X, y, plan.workers, settings)
    if plan.impl in TRANSPORT:
        return measure_bptrain(plan, settings)
    if plan.impl == "ray_train_torch":
        return measure_ray_train(plan.workers, settings)
    if plan.impl == "loop_no_ray":
        return measure_loop_no_ray(plan, settings)
    raise ValueError(f"unknown impl {plan.impl!r}")


def start_ray(num_cpus: int) -> bool:
    """A fresh embedded Ray as the service starts one (services.cluster.start_embedded),
    never a cluster that happens to run here (address "local"); whether this call
    started it."""
    import ray

    from services.cluster import start_embedded

    if ray.is_initialized():
        return False
    for name in THREAD_ENV:  # inherited by the raylet, so by every Ray worker process
        os.environ[name] = "1"
    start_embedded(num_cpus, address="local")
    return True


def log_ray_costs() -> None:
    """What a Ray hop costs on this host (medians of 50): the floor under any PS step."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self) -> int:
            return 0

    echo = Echo.remote()
    theta = np.zeros(ParamLayout(SIZES).size, dtype=np.float32)
    calls, puts = [], []
    for _ in range(50):
        began = time.perf_counter()
        ray.get(echo.ping.remote())
        calls.append(time.perf_counter() - began)
        began = time.perf_counter()
        ray.put(theta)
        puts.append(time.perf_counter() - began)
    ray.kill(echo)
    logger.info(
        "Ray on this host: empty actor call %.2f ms, ray.put of θ (%.2f MB) %.2f ms",
        1e3 * float(np.median(calls)),
        theta.nbytes / 1e6,
        1e3 * float(np.median(puts)),
    )


def run(settings: Settings) -> list[Row]:
    """Measure every planned row, one after another; efficiency against the single row.
    The rows that need no Ray (RAY_FREE_IMPLS) run first, before Ray starts, so that no
    Ray process is beside them; the table keeps the plans' order."""
    import ray

    X, y = training_rows(settings.samples)
    num_cpus = max(plan.workers for plan in settings.plans)
    plans = settings.plans
    order = sorted(range(len(plans)), key=lambda i: plans[i].impl not in RAY_FREE_IMPLS)
    started_ray = is_ray_up = False
    measured: dict[int, Row] = {}
    try:
        for i in order:
            if plans[i].impl not in RAY_FREE_IMPLS and not is_ray_up:
                started_ray, is_ray_up = start_ray(num_cpus), True
                log_ray_costs()
            measured[i] = measure_row(plans[i], X, y, settings)
    finally:
        if started_ray:
            ray.shutdown()
    rows = [measured[i] for i in sorted(measured)]
    for row in rows:
        if row.samples_per_s is not None and row.reference_samples_per_s is not None:
            row.efficiency_vs_single = row.samples_per_s / row.reference_samples_per_s
            # batch / median step time: robust to the bursts a shared machine has
            row.efficiency_median_step = (row.batch / row.step_ms_median) / (
                LOCAL_BATCH / row.reference_step_ms
            )
    return rows


def measure_row(plan: Plan, X: np.ndarray, y: np.ndarray, settings: Settings) -> Row:
    """One row of the table: `plan` measured against its references, or why it is not."""
    row = Row(plan.impl, plan.mode, plan.workers, plan.shards, plan.batch, plan.model)
    began, stolen = time.perf_counter(), host_cpu_times()
    try:
        reference, measurement, ratios = measure_paired(plan, X, y, settings)
        row.reference_samples_per_s = reference.samples_per_s
        row.reference_step_ms = reference.step_ms_median
        row.efficiency_runs = ratios if len(ratios) > 1 else None
    except Unavailable as error:
        row.status, row.reason = "unavailable", str(error)
    except RowFailed as error:
        row.status, row.reason = "failed", str(error)
    except Exception as error:
        logger.exception("%s %s %dw: unexpected error", plan.impl, plan.mode, plan.workers)
        row.status, row.reason = "failed", f"{type(error).__name__}: {error}"[:300]
    else:
        for name, value in asdict(measurement).items():
            setattr(row, name, value)
    row.steal_fraction = steal_since(stolen)
    logger.info(
        "%-16s %-5s %dw %ds: %s (%.1f s)",
        plan.impl,
        plan.mode,
        plan.workers,
        plan.shards,
        f"{row.samples_per_s:.0f} samples/s" if row.status == "ok" else row.reason,
        time.perf_counter() - began,
    )
    return row


def repeats_of(plan: Plan, settings: Settings) -> int:
    """How many paired runs `plan` gets: the goal rows `settings.repeats`, others one."""
    is_goal_row = plan.impl in REPEATED_IMPLS and plan.model == "base"
    return settings.repeats if is_goal_row else 1


def measure_paired(
    plan: Plan, X: np.ndarray, y: np.ndarray, settings: Settings
) -> tuple[Measurement, Measurement, list[float]]:
    """(reference, measurement, every run's ratio): each run is a reference (single)
    then the row, and their ratio; with several runs, the pair whose ratio is the
    median (the upper one of an even count). Noise on this kind of host comes in bursts
    that one run of a few seconds may catch or miss; the median of paired ratios does
    not follow one burst."""
    pairs = []
    for _ in range(repeats_of(plan, settings)):
        reference = measure_single(X, y, settings, plan.sizes)
        measurement = reference if plan.impl == "single" else measure(plan, X, y, settings)
        pairs.append((measurement.samples_per_s / reference.samples_per_s, reference, measurement))
    ratios = [ratio for ratio, _, _ in pairs]
    _, reference, measurement = sorted(pairs, key=lambda pair: pair[0])[len(pairs) // 2]
    return reference, measurement, ratios


def host_cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of the whole host so far, from /proc/stat ((0, 0) elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_since(before: tuple[int, int]) -> float | None:
    """The fraction of the host's CPU time stolen by the hypervisor since `before`."""
    steal, total = host_cpu_times()
    return (steal - before[0]) / (total - before[1]) if total > before[1] else None


# --- output -----------------------------------------------------------------------------------


def _single(rows: Sequence[Row], model: str = "base") -> Row | None:
    """The single-process reference row of a model."""
    return next(
        (r for r in rows if r.impl == "single" and r.model == model and r.status == "ok"), None
    )


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: Sequence[Row]) -> str:
    header = (
        f"{'impl':<16}{'mode':<6}{'model':<6}{'workers':>8}{'shards':>7}{'batch':>7}{'samples/s':>11}"
        f"{'vs single':>10}{'ms/step':>9}{'eff (med)':>11}{'ref ms':>8}{'comm':>6}"
        f"{'bytes/step':>12}{'staleness':>11}{'steal':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        start = (
            f"{row.impl:<16}{row.mode:<6}{row.model:<6}{row.workers:>8}{row.shards:>7}"
            f"{row.batch:>7}"
        )
        if row.status != "ok":
            lines.append(f"{start}  {row.status}: {row.reason}")
            continue
        staleness = (
            "-"
            if row.staleness_mean is None
            else f"{row.staleness_mean:.1f}/{_number(row.staleness_max, '.0f')}"
        )
        bytes_moved = _number(
            None if row.bytes_per_step is None else row.bytes_per_step / 1e6, ".2f", " MB"
        )
        steal = None if row.steal_fraction is None else 100 * row.steal_fraction
        lines.append(
            f"{start}{row.samples_per_s:>11.0f}{_number(row.efficiency_vs_single, '.2f', 'x'):>10}"
            f"{row.step_ms_median:>9.2f}{_number(row.efficiency_median_step, '.2f', 'x'):>11}"
            f"{_number(row.reference_step_ms, '.2f'):>8}{_number(row.comm_fraction, '.2f'):>6}"
            f"{bytes_moved:>12}{staleness:>11}"
            f"{_number(steal, '.0f', '%'):>7}"
        )
    return "\n".join(lines)


PHASES = ("compute", "communication", "waiting", "update")
# Not a phase: the ms per step a step loop was ready to run but waited for a CPU (Linux
# schedstat of its thread), inside whichever phase it fell in.
PREEMPTED = "preempted"
PROCESSES = ("workers", "servers", "runner", "driver")


def format_breakdown(rows: Sequence[Row]) -> str:
    """Per row: ms per step in each phase (a worker's view) and CPU seconds per step of
    each kind of process (mean per process: workers, parameter-server actors, the job's
    runner, the bench's driver)."""
    header = (
        f"{'impl':<16}{'mode':<6}{'model':<6}{'workers':>8}{'shards':>7}"
        + "".join(f"{name[:7] + ' ms':>11}" for name in (*PHASES, PREEMPTED))
        + "".join(f"{'cpu ' + name[:6]:>12}" for name in PROCESSES)
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if row.status != "ok":
            continue
        phases = row.breakdown or {}
        cpu = row.cpu_per_step or {}
        lines.append(
            f"{row.impl:<16}{row.mode:<6}{row.model:<6}{row.workers:>8}{row.shards:>7}"
            + "".join(f"{_number(phases.get(name), '.2f'):>11}" for name in (*PHASES, PREEMPTED))
            + "".join(
                f"{_number(None if name not in cpu else 1e3 * cpu[name], '.2f', ' ms'):>12}"
                for name in PROCESSES
            )
        )
    return "\n".join(lines)


def _best(rows: Sequence[Row], impl: str, workers: int, modes: Sequence[str]) -> Row | None:
    found = [
        r
        for r in rows
        if r.impl == impl
        and r.workers == workers
        and r.mode in modes
        and r.status == "ok"
        and r.model == "base"
    ]
    return max(found, key=lambda r: r.samples_per_s, default=None)


def _label(row: Row) -> str:
    return f"{row.impl} {row.mode} {row.workers}w/{row.shards}s"


def _runs(row: Row, label: str = "runs") -> str:
    """ "; runs 0.88/0.93/0.97" where the row is the median of several paired runs."""
    if not row.efficiency_runs:
        return ""
    return f"; {label} " + "/".join(f"{ratio:.2f}" for ratio in row.efficiency_runs)


def format_goals(rows: Sequence[Row]) -> str:
    """Each goal: met / NOT met with the measured number, or why it was not measured."""

    def verdict(is_met: bool) -> str:
        return "met" if is_met else "NOT met"

    single = _single(rows)
    lines = ["goals"]
    for workers, target in ((1, 0.90), (2, 1.70)):
        best = _best(rows, "bptrain", workers, ("bsp",))
        title = f"  {workers}-worker bptrain bsp >= {target:.2f}x single:"
        if single is None or best is None:
            lines.append(f"{title} not measured (no single or bptrain bsp row ran)")
            continue
        efficiency = best.efficiency_vs_single
        lines.append(
            f"{title} {efficiency:.2f}x ({_label(best)}, {best.samples_per_s:.0f} vs "
            f"{best.reference_samples_per_s:.0f} samples/s; from median steps "
            f"{best.efficiency_median_step:.2f}x{_runs(best)}) {verdict(efficiency >= target)}"
        )
    for mode in ("asp", "ssp"):
        row = _best(rows, "bptrain", 2, (mode,))
        title = f"  2-worker bptrain {mode} >= 1.70x single:"
        if single is None or row is None:
            lines.append(f"{title} not measured")
            continue
        lines.append(
            f"{title} {row.efficiency_vs_single:.2f}x (from median steps "
            f"{row.efficiency_median_step:.2f}x{_runs(row)}) "
            f"{verdict(row.efficiency_vs_single >= 1.7)}"
        )
    for workers in (1, 2):
        title = f"  bptrain bsp >= 2x Ray Train TorchTrainer, {workers} worker(s):"
        ours = _best(rows, "bptrain", workers, ("bsp",))
        theirs = next(
            (r for r in rows if r.impl == "ray_train_torch" and r.workers == workers), None
        )
        if ours is None:
            lines.append(f"{title} not measured (no bptrain bsp row ran)")
            continue
        if theirs is None or theirs.status != "ok":
            why = theirs.reason if theirs is not None else "no TorchTrainer row planned"
            lines.append(f"{title} not measured ({why})")
            continue
        # Each against its own adjacent reference (the host's drift between the two rows
        # cancels), and the raw throughputs beside it.
        ratio = ours.efficiency_vs_single / theirs.efficiency_vs_single
        raw = ours.samples_per_s / theirs.samples_per_s
        median_ratio = ours.efficiency_median_step / theirs.efficiency_median_step
        lines.append(
            f"{title} {ratio:.2f}x ({_label(ours)} {ours.efficiency_vs_single:.2f}x vs "
            f"{theirs.efficiency_vs_single:.2f}x single; raw {ours.samples_per_s:.0f} vs "
            f"{theirs.samples_per_s:.0f} samples/s = {raw:.2f}x; from median steps "
            f"{median_ratio:.2f}x{_runs(ours)}{_runs(theirs, 'theirs')}) "
            f"{verdict(ratio >= 2.0)}"
        )
    return "\n".join([*lines, *format_ceilings(rows)])


def format_ceilings(rows: Sequence[Row]) -> list[str]:
    """Context for the goals, not a goal: the same step loop without Ray in this run
    (loop_no_ray), and the share of it that the service's row reaches."""
    lines = []
    for mode, workers in (("bsp", 1), ("bsp", 2), ("ssp", 2), ("asp", 2)):
        plain = _best(rows, "loop_no_ray", workers, (mode,))
        if plain is None:
            continue
        line = (
            f"  {mode} {workers}w: {plain.efficiency_vs_single:.2f}x single (from median "
            f"steps {plain.efficiency_median_step:.2f}x{_runs(plain)})"
        )
        ours = _best(rows, "bptrain", workers, (mode,))
        if ours is not None:
            share = ours.efficiency_vs_single / plain.efficiency_vs_single
            line += f"; bptrain {ours.efficiency_vs_single:.2f}x, {100 * share:.0f} % of it"
        lines.append(line)
    if lines:
        lines.insert(0, "the same step loop without Ray, this run (context, not a goal)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="timed steps per row (default 200; quick 15)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 20; quick 3)")
    parser.add_argument("--samples", type=int, help="synthetic rows (default 20000; quick 4096)")
    parser.add_argument("--quick", action="store_true", help="CI budget: fewer rows and steps")
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        help="measure only these (single, the reference, always runs)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="paired runs (reference, row) of each bptrain and TorchTrainer row of the base "
        f"model; the row is the run of median ratio (default {DEFAULT_REPEATS}; quick 1)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    steps = args.steps or (15 if args.quick else 200)
    warmup = args.warmup or (3 if args.quick else 20)
    samples = args.samples or (4096 if args.quick else 20_000)
    repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS)
    if steps < 2 or warmup < 1 or repeats < 1:
        parser.error("--steps must be >= 2, --warmup >= 1 and --repeats >= 1")
    plans = tuple(
        plan
        for plan in default_plans(args.quick)
        if args.impls is None or plan.impl in (*args.impls, "single")
    )
    settings = Settings(warmup, steps, samples, args.quick, plans, repeats)
    logger.info(
        "host: %d CPUs (os.cpu_count), %s usable; MLP %s, %s, SGD η=%g, float32, "
        "%d samples per worker per step, %d warm-up + %d timed steps per row, "
        "%d paired run(s) of each goal row",
        os.cpu_count(),
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?",
        "-".join(map(str, SIZES)),
        LOSS,
        LEARNING_RATE,
        LOCAL_BATCH,
        warmup,
        steps,
        repeats,
    )
    logger.info("load average before: %.2f %.2f %.2f", *os.getloadavg())
    rows = run(settings)
    logger.info("load average after: %.2f %.2f %.2f", *os.getloadavg())
    print(format_table(rows))
    print()
    print(format_breakdown(rows))
    print()
    print(format_goals(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(row) for row in rows], handle, indent=2)
    measured = [r for r in rows if r.status == "ok"]
    return 0 if measured and all(math.isfinite(r.samples_per_s) for r in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
