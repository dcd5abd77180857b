"""The embedded Ray the service starts is lean: no idle workers waiting, no log monitor.

Both only compete with a job's workers for the cores (README, "Distributed throughput").
The check runs a fresh embedded Ray in a process of its own and lists what it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, time
    import psutil, ray
    from services.cluster import start_embedded

    start_embedded(2, address="local")
    time.sleep(3)  # a prestarting raylet has its idle workers up by now

    @ray.remote(num_cpus=1)
    class Actor:
        def ping(self):
            return "pong"

    answer = ray.get(Actor.remote().ping.remote(), timeout=60)
    children = []
    for process in psutil.Process().children(recursive=True):
        try:
            children.append(" ".join(process.cmdline()))
        except psutil.Error:
            pass
    print(json.dumps({"answer": answer, "children": children}))
    ray.shutdown()
    """
)


def embedded_ray_processes() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_embedded_ray_starts_no_idle_workers_and_no_log_monitor_yet_runs_actors() -> None:
    seen = embedded_ray_processes()
    assert seen["answer"] == "pong"
    children = seen["children"]
    assert any("raylet" in c for c in children), children  # the probe saw Ray's tree
    assert not [c for c in children if "ray::IDLE" in c], children
    assert not [c for c in children if "log_monitor" in c], children
