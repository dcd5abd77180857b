"""Join a Ray cluster as a node of this container's own, then become the given command.

A Ray driver must run where a raylet runs: `ray.init(address=...)` in a container without
one waits for a raylet with the container's IP address and never finds it. The compose
cluster's api container therefore starts one first, with no CPUs (no training work lands
there; the job runners, which need none, may), and then execs `bptrain serve`:

    python -m services.node ray-head:6379 -- bptrain serve --ray-address=ray-head:6379 ...

`ray start` is retried while the head does not answer yet; after RETRY_S it gives up with
exit status 1, and the container's restart policy tries again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

RETRY_S = 60.0
OBJECT_STORE_BYTES = 200_000_000  # final weights pass through it; the workers hold the data


def ray_start(address: str) -> list[str]:
    """The `ray start` command line that joins `address` with no CPUs."""
    return [
        "ray",
        "start",
        f"--address={address}",
        "--num-cpus=0",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
        "--include-log-monitor=false",  # as every node of the compose file
    ]


def parse(argv: list[str]) -> tuple[str, list[str]]:
    """ADDRESS -- COMMAND... -> (address, command); ValueError with the usage otherwise."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0]:
        raise ValueError("usage: python -m services.node HOST:PORT -- COMMAND [ARG...]")
    return argv[0], argv[2:]


def join(address: str, retry_s: float | None = None) -> bool:
    """Start this container's raylet in `address`'s cluster, trying for `retry_s` (default
    RETRY_S); False when it never joined."""
    deadline = time.monotonic() + (RETRY_S if retry_s is None else retry_s)
    while True:
        result = subprocess.run(ray_start(address), capture_output=True, text=True)
        if result.returncode == 0:
            return True
        if time.monotonic() >= deadline:
            print(result.stdout[-2000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
            return False
        time.sleep(2.0)


def main(argv: list[str]) -> int:
    try:
        address, command = parse(argv)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if not join(address):
        print(f"services.node: could not join the Ray cluster at {address}", file=sys.stderr)
        return 1
    os.execvp(command[0], command)
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
