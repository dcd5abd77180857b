"""API under load: a thousand followers of one running job beside fifty busy clients.

A real `bptrain serve` (embedded Ray, a free loopback port, a fresh storage directory)
runs one job (digits through a 64-2048-2048-10 MLP: a few steps a second, so that a
thousand followers get a few thousand messages a second). Then two client processes:

  followers   (a process of their own) StreamMetrics from after_step 0, spread over
              `--channels` connections; one message per point, or with --batched
              the points that are ready together in one message
  clients     (this process, asyncio) each a loop of SubmitJob(validate_only) then
              GetJob, `--rate` rounds a second (10: 1,000 calls a second from 50
              clients), or back to back with --rate 0, which measures saturation: each
              call then waits for the other clients' (latency = clients / throughput)
  health      (this process) one loop of grpc.health.v1 Check, every 20 ms

until the job ends. The followers receive several thousand messages a second: in a
process of their own, their reading does not queue the measured calls behind it (the
clients' own event-loop lag is reported beside the latencies to show it). It reports

  - p50/p99 latency of health Check, GetJob and SubmitJob(validate_only), and errors,
    and the clients' event-loop lag;
  - whether every follower received every stored step exactly once, then the final job;
  - fan-out lag: for each step, when each follower received it, minus when the first
    follower did (what serving many followers adds; the job's points reach the API in
    batches every 0.5 s, by design, which no follower can see sooner);
  - the server's resident memory before the followers and with them all open, and the
    CPU seconds of the server and of each client process.

    python bench/load.py                       # 1000 followers, 50 clients
    python bench/load.py --followers 100 --clients 5 --steps 60 --json out.json
    python bench/load.py --batched             # followers ask for batched messages
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bptrain.client import points_of  # noqa: E402
from bptrain.specfile import spec_from_dict  # noqa: E402
from bptrain.v1 import training_pb2 as pb  # noqa: E402
from bptrain.v1 import training_pb2_grpc  # noqa: E402
from examples.demo import start_server  # noqa: E402

GOALS_MS = {"health": 100.0, "get_job": 50.0, "submit_validate": 20.0, "fan_out_lag": 50.0}
HEALTH_PERIOD_S = 0.02
LAG_PROBE_S = 0.01


def job_spec(steps: int) -> dict:
    return {
        "name": "load-bench",
        "dataset": {"name": "digits", "validation_fraction": 0.1},
        "layers": [
            {"units": 2048, "activation": "relu"},
            {"units": 2048, "activation": "relu"},
            {"units": 10, "activation": "identity"},
        ],
        "loss": "softmax_cross_entropy",
        "optimizer": {"kind": "sgd", "learning_rate": 0.01},
        "batch_size": 256,
        "steps": steps,
        "workers": 1,
        "seed": 1,
    }


@dataclass
class Follower:
    steps: list[int] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    ended: bool = False  # the final job came
    error: str = ""


@dataclass
class Timings:
    seconds: dict[str, list[float]] = field(
        default_factory=lambda: {
            "health": [],
            "get_job": [],
            "submit_validate": [],
            "client_loop_lag": [],
        }
    )
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, what: str, error: grpc.RpcError) -> None:
        key = f"{what}: {error.code().name}"
        self.errors[key] = self.errors.get(key, 0) + 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK"), sum(values) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def follow(
    stub: training_pb2_grpc.TrainingServiceStub, job_id: str, out: Follower, batched: bool
) -> None:
    request = pb.StreamMetricsRequest(job_id=job_id, batched=batched)
    try:
        async for answer in stub.StreamMetrics(request):
            received_at = time.perf_counter()
            out.ended = out.ended or answer.HasField("final")
            for point in points_of(answer):
                out.steps.append(point.step)
                out.received_at.append(received_at)
    except grpc.RpcError as error:
        out.error = error.code().name


async def busy_client(
    stub: training_pb2_grpc.TrainingServiceStub,
    job_id: str,
    spec: pb.JobSpec,
    timings: Timings,
    done: asyncio.Event,
    rate: float,
) -> None:
    request = pb.SubmitJobRequest(spec=spec, validate_only=True)
    period = 1.0 / rate if rate > 0 else 0.0
    next_round = time.perf_counter() + random.uniform(0, period)  # not all in step
    while not done.is_set():
        if period:
            await asyncio.sleep(max(0.0, next_round - time.perf_counter()))
            next_round += period
        for what, call in (
            ("submit_validate", lambda: stub.SubmitJob(request, timeout=10)),
            ("get_job", lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)),
        ):
            began = time.perf_counter()
            try:
                await call()
                timings.seconds[what].append(time.perf_counter() - began)
            except grpc.RpcError as error:
                timings.failed(what, error)


async def health_loop(channel: grpc.aio.Channel, timings: Timings, done: asyncio.Event) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    while not done.is_set():
        began = time.perf_counter()
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            timings.seconds["health"].append(time.perf_counter() - began)
        except grpc.RpcError as error:
            timings.failed("health", error)
        await asyncio.sleep(HEALTH_PERIOD_S)


async def loop_lag(timings: Timings, done: asyncio.Event) -> None:
    """How late this process's event loop wakes from a 10 ms sleep: near 0 shows that
    the latencies measured here are the server's, not this process's queue."""
    while not done.is_set():
        began = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_S)
        timings.seconds["client_loop_lag"].append(time.perf_counter() - began - LAG_PROBE_S)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def followers_process(
    target: str, job_id: str, count: int, channels: int, batched: bool, conn: Connection
) -> None:
    """The followers, in a process of their own: they open, say "ready" (with this
    process's CPU seconds) once each has had a point, and send their receipts at the end."""
    receipts = asyncio.run(follow_all(target, job_id, count, channels, batched, conn))
    conn.send((receipts, time.process_time()))
    conn.close()


def report_of(receiver: Connection, process: multiprocessing.process.BaseProcess) -> tuple:
    """The followers' process's next report; exits with a message if it ended without it."""
    try:
        return receiver.recv()
    except EOFError:
        process.join(timeout=10)
        sys.exit(f"the followers' process ended without its report (exit code {process.exitcode})")


async def follow_all(
    target: str, job_id: str, count: int, channels: int, batched: bool, conn: Connection
) -> list[Follower]:
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [training_pb2_grpc.TrainingServiceStub(c) for c in opened]
    followers = [Follower() for _ in range(count)]
    tasks = [
        asyncio.create_task(follow(stubs[i % len(stubs)], job_id, out, batched))
        for i, out in enumerate(followers)
    ]
    deadline = time.perf_counter() + 60
    while any(not f.steps for f in followers) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)  # every stream is open once it has had its first point
    conn.send(("ready", time.process_time()))
    await asyncio.gather(*tasks)
    for channel in opened:
        await channel.close()
    return followers


async def run(args: argparse.Namespace, port: int, server_pid: int) -> dict:
    target = f"127.0.0.1:{port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(args.channels)]
    stubs = [training_pb2_grpc.TrainingServiceStub(c) for c in channels]
    spec = spec_from_dict(job_spec(args.steps))
    rss_idle = rss_bytes(server_pid)
    job = await stubs[0].SubmitJob(pb.SubmitJobRequest(spec=spec), timeout=60)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=followers_process,
        args=(target, job.job_id, args.followers, args.channels, args.batched, sender),
        name="followers",
    )
    process.start()
    _, followers_cpu_ready = await asyncio.to_thread(report_of, receiver, process)
    rss_followed = rss_bytes(server_pid)
    timings, done = Timings(), asyncio.Event()
    began = (
        time.perf_counter(),
        cpu_seconds(server_pid),
        time.process_time(),
        machine_busy_seconds(),
    )
    load = [
        asyncio.create_task(
            busy_client(stubs[i % len(stubs)], job.job_id, spec, timings, done, args.rate)
        )
        for i in range(args.clients)
    ]
    load.append(asyncio.create_task(health_loop(channels[0], timings, done)))
    load.append(asyncio.create_task(loop_lag(timings, done)))
    followers, followers_cpu_end = await asyncio.to_thread(report_of, receiver, process)
    process.join(timeout=60)
    done.set()
    await asyncio.gather(*load)
    wall = time.perf_counter() - began[0]
    busy = [end - start for end, start in zip(machine_busy_seconds(), began[3], strict=True)]
    cpu = {
        "wall_s": wall,
        "server_cpu_s": cpu_seconds(server_pid) - began[1],
        "clients_cpu_s": time.process_time() - began[2],
        "followers_cpu_s": followers_cpu_end - followers_cpu_ready,
        "machine_busy_fraction": busy[0] / busy[1],
        "cores": os.cpu_count(),
    }
    final = await stubs[0].GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
    stored = [
        a.point.step
        async for a in stubs[0].StreamMetrics(pb.StreamMetricsRequest(job_id=job.job_id))
        if a.HasField("point")
    ]
    for channel in channels:
        await channel.close()
    return summary(args, final, stored, followers, timings, rss_idle, rss_followed) | {"cpu": cpu}


def summary(
    args: argparse.Namespace,
    final: pb.Job,
    stored: list[int],
    followers: list[Follower],
    timings: Timings,
    rss_idle: int,
    rss_followed: int,
) -> dict:
    exact = sum(1 for f in followers if f.steps == stored and f.ended)
    first: dict[int, float] = {}
    for f in followers:
        for step, at in zip(f.steps, f.received_at, strict=True):
            first[step] = min(first.get(step, at), at)
    lags = [
        at - first[step] for f in followers for step, at in zip(f.steps, f.received_at, strict=True)
    ]
    latency = {
        what: {
            "calls": len(values),
            "p50_ms": percentile(values, 0.5) * 1e3,
            "p99_ms": percentile(values, 0.99) * 1e3,
        }
        for what, values in timings.seconds.items()
    }
    latency["fan_out_lag"] = {
        "calls": len(lags),
        "p50_ms": percentile(lags, 0.5) * 1e3,
        "p99_ms": percentile(lags, 0.99) * 1e3,
    }
    return {
        "followers": args.followers,
        "clients": args.clients,
        "rate_per_client": args.rate,
        "grpcio": grpc.__version__,  # its server's accept loop changed in 1.84 (README)
        "channels": args.channels,
        "batched": args.batched,
        "job_state": pb.JobState.Name(final.state),
        "job_steps": final.step,
        "stored_points": len(stored),
        "followers_exact": exact,
        "follower_errors": sorted({f.error for f in followers if f.error}),
        "latency": latency,
        "errors": timings.errors,
        "server_rss_mb": {"idle": rss_idle / 2**20, "followed": rss_followed / 2**20},
        "server_bytes_per_follower": (rss_followed - rss_idle) / max(1, args.followers),
        "stream_mean_s": statistics.mean(
            (f.received_at[-1] - f.received_at[0]) for f in followers if len(f.received_at) > 1
        )
        if any(len(f.received_at) > 1 for f in followers)
        else 0.0,
    }


def print_table(result: dict) -> None:
    print(
        f"{result['followers']} {'batched ' if result['batched'] else ''}followers over "
        f"{result['channels']} connections, "
        f"{result['clients']} clients at "
        f"{result['rate_per_client'] or 'back-to-back'} rounds/s; "
        f"job {result['job_state']} after {result['job_steps']} "
        f"steps ({result['stored_points']} points stored); grpcio {result['grpcio']}"
    )
    wall = result["cpu"]["wall_s"]
    print(f"{'what':<16} {'count':>8} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8} {'goal p99':>9}")
    for what, row in result["latency"].items():
        goal = GOALS_MS.get(what)
        met = "" if goal is None else ("  met" if row["p99_ms"] <= goal else "  NOT met")
        print(
            f"{what:<16} {row['calls']:>8} {row['calls'] / wall:>7.0f} {row['p50_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f} {'-' if goal is None else f'{goal:.0f}':>8}{met}"
        )
    print(
        f"followers with every step exactly once and the final job: "
        f"{result['followers_exact']}/{result['followers']}"
        + (f" (errors: {result['follower_errors']})" if result["follower_errors"] else "")
    )
    print(f"errors: {result['errors'] or 'none'}")
    cpu = result["cpu"]
    print(
        f"under load for {cpu['wall_s']:.1f} s: the API process used {cpu['server_cpu_s']:.1f} "
        f"CPU s, the followers' process {cpu['followers_cpu_s']:.1f} CPU s, the clients' "
        f"process {cpu['clients_cpu_s']:.1f} CPU s; "
        f"the machine's "
        f"{cpu['cores']} cores were {cpu['machine_busy_fraction']:.0%} busy"
    )
    rss = result["server_rss_mb"]
    print(
        f"server RSS {rss['idle']:.0f} MB idle, {rss['followed']:.0f} MB with the followers: "
        f"{result['server_bytes_per_follower'] / 1024:.1f} KB per follower"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="rounds (SubmitJob + GetJob) a second per client; 0: back to back (saturation)",
    )
    parser.add_argument("--channels", type=int, default=20, help="client connections")
    parser.add_argument(
        "--batched",
        action="store_true",
        help="followers ask for batched messages (StreamMetricsRequest.batched)",
    )
    parser.add_argument("--steps", type=int, default=150, help="the followed job's steps")
    parser.add_argument("--serve-args", default="", help="more `bptrain serve` arguments")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    storage = Path(tempfile.mkdtemp(prefix="bptrain-load-"))
    server, port = start_server(storage, tuple(args.serve_args.split()))
    try:
        result = asyncio.run(run(args, port, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=60)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["followers_exact"] == args.followers else 1


if __name__ == "__main__":
    sys.exit(main())
