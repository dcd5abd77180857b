"""Chaos: 100 random SIGKILLs over long bsp, ssp and asp jobs; nothing lost.

A `ray start --head` cluster and `bptrain serve` as real processes. Victims, at random:
a worker (for colocated jobs the holder of θ's shard 0 is one of them, so parameter
server kills are among these), the job's runner, or the API process (restarted on the
same port). A third of the kills are followed at once, during the recovery, by a second
one. A follower (the SDK's `events`) watches each job through all of it. Each job must
end SUCCEEDED with every step 1..N streamed to the follower and stored exactly once; the
bsp job's θ equals the same job's fault-free θ. The recovery time (a kill to the next
step stored past the step at the kill) is printed: median and max.

Not part of `make test` (it takes minutes): `make chaos`, which `.ci/run` runs too.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from pathlib import Path

import psutil
import pytest

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec
from tests.processes import free_port, start_api
from tests.test_faults import assert_same_weights, streamed_steps
from tests.test_server_faults import runner_pids, stop_api

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(2400)]

KILLS = {"bsp": 34, "ssp": 33, "asp": 33}
STEPS = 50_000  # about a minute of training between the kills
MODES = {"bsp": {}, "ssp": {"consistency": "ssp", "staleness": 2}, "asp": {"consistency": "asp"}}
RECOVERY_TIMEOUT_S = 180


class Follower(threading.Thread):
    """Follows one job through every restart of the API; keeps every step it saw."""

    def __init__(self, target: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.target, self.job_id = target, job_id
        self.seen: list[int] = []
        self.final: pb.Job | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with Client(self.target) as client:
                for event in client.events(self.job_id):
                    if event.HasField("point"):
                        self.seen.append(event.point.step)
                    if event.HasField("final"):
                        self.final = event.final
        except Exception as error:  # reported by the test
            self.error = error


class Chaos:
    """The API process and what is killed, with the times recovery took."""

    def __init__(self, cluster: dict, storage: Path, seed: int) -> None:
        self.cluster, self.storage = cluster, storage
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.api = self._start_api()
        self.rng = random.Random(seed)
        self.recoveries: list[float] = []
        self.kinds: dict[str, int] = {}

    def _start_api(self):
        cluster = self.cluster
        return start_api(  # runners told by their process title: no idle standby beside
            self.storage, cluster["address"], cluster["env"], port=self.port, standby_runners=0
        )[0]

    def job(self, client: Client, job_id: str) -> pb.Job:
        while True:  # the API may be restarting
            try:
                return client.get(job_id)
            except BptrainError as error:
                if error.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise
                time.sleep(0.1)

    def kill_one(self, client: Client, job_id: str) -> str | None:
        """SIGKILL one random victim of the job; returns its kind, None if it was gone."""
        job = self.job(client, job_id)
        kind = self.rng.choices(["worker", "shard 0", "runner", "api"], [4, 2, 2, 2])[0]
        try:
            if kind == "api":
                self.api.send_signal(signal.SIGKILL)
                self.api.wait()
                self.api = self._start_api()
            elif kind == "runner":
                (pid,) = runner_pids(self.cluster["head"].pid) or [None]
                if pid is None:
                    return None
                os.kill(pid, signal.SIGKILL)
            else:
                workers = list(job.workers)
                if not workers:
                    return None
                victim = workers[0] if kind == "shard 0" else self.rng.choice(workers)
                os.kill(victim.pid, signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess):
            return None
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return kind

    def run(self, client: Client, job_id: str, kills: int) -> int:
        """Kill `kills` times (while the job runs); returns the kills made."""
        made = 0
        while made < kills:
            job = self.job(client, job_id)
            if job.state == pb.QUEUED or job.step == 0:  # not started yet
                time.sleep(0.1)
                continue
            if job.state != pb.RUNNING or job.step >= job.total_steps - 200:
                break
            at, killed_at = job.step, time.monotonic()
            if self.kill_one(client, job_id) is None:
                time.sleep(0.2)
                continue
            made += 1
            if made < kills and self.rng.random() < 1 / 3:  # again, during the recovery
                time.sleep(self.rng.uniform(0.05, 0.5))
                made += self.kill_one(client, job_id) is not None
            while True:  # recovered: a step past the one at the kill is stored
                job = self.job(client, job_id)
                if job.step > at + 1 or job.state != pb.RUNNING:
                    break
                elapsed = time.monotonic() - killed_at
                assert elapsed < RECOVERY_TIMEOUT_S, f"no step stored {elapsed:.0f} s after a kill"
                time.sleep(0.05)
            self.recoveries.append(time.monotonic() - killed_at)
            time.sleep(self.rng.uniform(0.1, 0.8))  # some steps between rounds
        return made


def test_chaos_a_hundred_kills_over_bsp_ssp_and_asp_jobs_lose_nothing(
    cluster: dict, tmp_path: Path
) -> None:
    chaos = Chaos(cluster, tmp_path, seed=int(os.environ.get("CHAOS_SEED", "16")))
    try:
        with Client(chaos.target) as client:
            reference = client.submit(digits_spec(steps=STEPS, checkpoint_every=100))
            assert reference.wait().state == pb.SUCCEEDED
            expected = client.weights(reference.job_id)
            total = 0
            for mode, planned in KILLS.items():
                kills = planned + sum(list(KILLS.values())[: list(KILLS).index(mode)]) - total
                job = client.submit(digits_spec(steps=STEPS, checkpoint_every=100, **MODES[mode]))
                follower = Follower(chaos.target, job.job_id)
                follower.start()
                made = chaos.run(client, job.job_id, kills)
                follower.join(timeout=600)
                assert follower.error is None, f"{mode}: the follower stopped: {follower.error}"
                assert follower.final is not None, f"{mode}: the follower did not see the end"
                assert follower.final.state == pb.SUCCEEDED, f"{mode}: {follower.final.reason}"
                assert follower.seen == list(range(1, STEPS + 1)), f"{mode}: steps lost or doubled"
                assert streamed_steps(client, job.job_id) == list(range(1, STEPS + 1))
                if mode == "bsp":
                    assert_same_weights(client.weights(job.job_id), expected)
                print(f"{mode}: {made} kills, SUCCEEDED, {STEPS} steps each once")
                total += made
        times = sorted(chaos.recoveries)
        print(
            f"{total} kills ({chaos.kinds}); recovery median {statistics.median(times):.2f} s, "
            f"max {times[-1]:.2f} s"
        )
        assert total >= sum(KILLS.values())  # the jobs outlasted every planned kill
    finally:
        stop_api(chaos.api)
