"""The API process fails under running jobs, in real processes; nothing is lost.

1. The API is stalled (SIGSTOP) while its runner trains: the runner holds at its lead;
   the runner is killed during the stall and its parameter-server shard after the
   resume. The new runner resumes from the checkpoint kept for the recorded step, and
   the job streams every step once and ends with the fault-free θ.
2. `bptrain serve` on its embedded Ray is SIGKILLed: no process of it outlives it, and
   a restart on the same storage resumes the job from its checkpoint.
3. A follower (the SDK's `events`) rides out three SIGKILL/restarts of the API, saying
   each time that it reconnects, and sees every step once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from bptrain import Client
from bptrain.v1 import training_pb2 as pb
from tests.conftest import digits_spec, ray_cluster
from tests.processes import free_port, start_api
from tests.test_faults import assert_same_weights, streamed_steps, wait_for_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict]:
    """One cluster for the tests that use one (starting one costs some CPU seconds): each
    runs its own API servers on its own storage, the stalled one first (it tells the
    job's runner by its process title)."""
    with ray_cluster() as state:
        yield state


def stop_api(api) -> None:
    if api.poll() is None:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0


def checkpoint_steps(storage: Path, job_id: str) -> list[int]:
    directory = storage / "jobs" / job_id / "checkpoints"
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("ckpt-*.json"))


def stored_step(storage: Path, job_id: str) -> int:
    """The last step the store holds, read from its SQLite file (the API is stopped)."""
    with sqlite3.connect(f"file:{storage / 'bptrain.db'}?mode=ro", uri=True) as db:
        (step,) = db.execute("SELECT MAX(step) FROM metrics WHERE job_id = ?", (job_id,)).fetchone()
    return step or 0


def until_still(read: Callable[[], object], still_s: float, timeout_s: float = 120) -> object:
    """`read()` once it has not changed for `still_s` seconds."""
    value, since = read(), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() - since < still_s:
        assert time.monotonic() < deadline, f"still changing after {timeout_s:.0f} s: {value}"
        time.sleep(0.1)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def runner_pids(head_pid: int) -> list[int]:
    """The job runners of the cluster started by `head_pid` (one job runs at a time)."""
    return [
        p.pid
        for p in psutil.Process(head_pid).children(recursive=True)
        if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::JobRunner")
    ]


# With --max-lead-s 1, a runner holds about 1 s of training past the stored step (at 300):
# 1,000 to 1,800 steps past it here (the stopped API leaves the cores to the workers), well
# short of this end, which leaves steps for the new runner's workers to be killed in.
STALL_LEAD_S = 1.0
STALL_STEPS = 6_000


def test_a_stalled_api_then_a_killed_runner_and_shard_lose_no_step(
    cluster: dict, tmp_path: Path
) -> None:
    api, port = start_api(
        tmp_path, cluster["address"], cluster["env"], standby_runners=0, max_lead_s=STALL_LEAD_S
    )
    try:
        with Client(f"127.0.0.1:{port}") as client:
            spec = digits_spec(steps=STALL_STEPS, checkpoint_every=50)
            reference = client.submit(spec)
            assert reference.wait().state == pb.SUCCEEDED
            job = client.submit(spec)
            first = wait_for_step(client, job.job_id, 300)
            api.send_signal(signal.SIGSTOP)  # the store stops recording
            try:
                held = until_still(lambda: checkpoint_steps(tmp_path, job.job_id), still_s=2.0)
                stored = stored_step(tmp_path, job.job_id)
                print(f"stored step {stored}; the held runner's checkpoints {held}")
                assert held[-1] < STALL_STEPS  # the runner held at its lead, short of the end
                assert held[-1] > stored  # it trained past what was recorded ...
                assert min(held) <= stored  # ... and kept the checkpoint a new runner needs
                (runner,) = runner_pids(cluster["head"].pid)
                os.kill(runner, signal.SIGKILL)
            finally:
                api.send_signal(signal.SIGCONT)
            resumed = wait_for_step(client, job.job_id, stored + 60)
            # A poll answered before the stall may still store steps past `stored`, with
            # the killed runner's workers: the new runner's are the ones to kill.
            deadline = time.monotonic() + 60
            while resumed.workers[0].pid == first.workers[0].pid:
                assert time.monotonic() < deadline, "the new runner's workers were never shown"
                time.sleep(0.05)
                resumed = client.get(job.job_id)
            os.kill(resumed.workers[0].pid, signal.SIGKILL)  # it holds θ's shard 0
            final = job.wait()
            assert final.state == pb.SUCCEEDED, final.reason
            assert streamed_steps(client, job.job_id) == list(range(1, STALL_STEPS + 1))
            assert_same_weights(client.weights(job.job_id), client.weights(reference.job_id))
    finally:
        api.send_signal(signal.SIGCONT)
        stop_api(api)


def is_gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_embedded_server_leaves_no_process_and_its_job_resumes_on_restart(
    tmp_path: Path,
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    api, port = start_api(tmp_path, None, env, num_cpus=2)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            # steps: past where the workers are when step 200 is seen (they train on ahead
            # of their 0.5 s reports, up to 1,500 steps): the restart resumes the job.
            spec = digits_spec(steps=3000, checkpoint_every=50)
            reference = client.submit(spec)
            assert reference.wait().state == pb.SUCCEEDED
            expected = client.weights(reference.job_id)
            job = client.submit(spec)
            running = wait_for_step(client, job.job_id, 200)
            assert running.state == pb.RUNNING, "the job ended before the kill"
        family = psutil.Process(api.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "raylet" in names and "ray::StandbyRunner" in names and "services.reaper" in names
        api.send_signal(signal.SIGKILL)
        api.wait()
        deadline = time.monotonic() + 30
        while not all(map(is_gone, family)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [(p.pid, p.cmdline()[:1]) for p in family if not is_gone(p)]
        assert not left, f"processes of the killed server still run: {left}"

        api, port = start_api(tmp_path, None, env, num_cpus=2)
        with Client(f"127.0.0.1:{port}") as client:
            final = client.wait(job.job_id)  # resumed by the new server
            assert final.state == pb.SUCCEEDED, final.reason
            assert streamed_steps(client, job.job_id) == list(range(1, 3001))
            assert_same_weights(client.weights(job.job_id), expected)
    finally:
        stop_api(api)


def test_a_follower_rides_out_three_api_restarts_and_sees_every_step_once(
    cluster: dict, tmp_path: Path
) -> None:
    port = free_port()  # the restarted API listens where the follower reconnects
    api, _ = start_api(tmp_path, cluster["address"], cluster["env"], port=port)
    seen: list[int] = []
    outages: list[str] = []
    ended: list[pb.Job] = []
    try:
        with Client(f"127.0.0.1:{port}") as client:
            # steps: it trains on while the API is down, about 2,000 steps a second: one of
            # 16,000 steps had ended by the third kill here.
            job = client.submit(digits_spec(steps=20_000, checkpoint_every=100))

            def follow() -> None:
                def reconnecting(code: str, _: int) -> None:
                    outages.append(code)

                for event in client.events(job.job_id, on_reconnect=reconnecting):
                    if event.HasField("point"):
                        seen.append(event.point.step)
                    if event.HasField("final"):
                        ended.append(event.final)

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            for _ in range(3):
                mark = len(seen)
                deadline = time.monotonic() + 120
                while len(seen) < mark + 50:  # the job moved on since the last restart
                    assert follower.is_alive(), "the follower gave up"
                    assert time.monotonic() < deadline, "no progress after a restart"
                    time.sleep(0.05)
                api.send_signal(signal.SIGKILL)
                api.wait()
                api, _ = start_api(tmp_path, cluster["address"], cluster["env"], port=port)
            follower.join(timeout=300)
            assert ended, "the follower did not see the job end"
            assert ended[0].state == pb.SUCCEEDED, ended[0].reason
            assert seen == list(range(1, 20_001))
            assert len(outages) >= 3  # it said it was reconnecting, each time
    finally:
        stop_api(api)
