"""The embedded Ray's reaper: when `bptrain serve` dies, however it dies, its Ray goes too.

Ray ties its GCS and raylet to the process that started them (the kernel kills them with
it), but not everything they start: after a SIGKILL of the server, `ray::DashboardAgent`
and `ray::RuntimeEnvAgent` live on (their own parent check hangs on the dead GCS), and a
job's runner and workers go on for a moment, writing checkpoints past what the store
recorded. So a server with an embedded Ray starts this small process beside it:

    python -m services.reaper OWNER_PID         (stdin: a pipe the owner holds open)

Every PERIOD_S it notes the owner's descendants; when the pipe closes (the owner exited
or was killed) it SIGKILLs every noted process that is still the same process (psutil
compares start times, so a reused pid is never hit), and their children, then exits.
On a clean shutdown `ray.shutdown()` has already stopped them, and it finds nothing to do.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys

import psutil

PERIOD_S = 0.5


def start(owner: int | None = None) -> subprocess.Popen:
    """Start the reaper of `owner` (default: this process); keep the returned handle
    alive for as long as the owner runs (its stdin is the pipe the reaper watches)."""
    owner = os.getpid() if owner is None else owner
    return subprocess.Popen(
        [sys.executable, "-m", "services.reaper", str(owner)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a signal to the server's process group spares it
    )


def watch(owner: int, pipe: int = 0) -> list[int]:
    """Note `owner`'s descendants until `pipe` reaches end of file or the owner is gone;
    then kill what is left of them. Returns the pids killed."""
    me = os.getpid()
    noted: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(owner)
    except psutil.NoSuchProcess:
        return []
    while True:
        try:
            for child in root.children(recursive=True):
                if child.pid != me:
                    noted.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        readable, _, _ = select.select([pipe], [], [], PERIOD_S)
        if readable and not os.read(pipe, 4096):
            break
    return reap(noted.values(), spare=me)


def reap(processes, spare: int) -> list[int]:
    """SIGKILL each of `processes` that still runs, and its children; wait for them."""
    alive: dict[int, psutil.Process] = {}
    for process in processes:
        try:
            if process.is_running():
                alive[process.pid] = process
                for child in process.children(recursive=True):
                    alive.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            continue
    alive.pop(spare, None)
    for process in alive.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()  # checks that the pid still names the same process
    psutil.wait_procs(list(alive.values()), timeout=5.0)
    return sorted(alive)


if __name__ == "__main__":
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # it ends when its owner does
    watch(int(sys.argv[1]))
