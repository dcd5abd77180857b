"""Container health probes, run as `python -m services.probe CHECK [TARGET]`; exit 0 = healthy.

- ``grpc HOST:PORT``: the API answers the standard gRPC health check with SERVING
  (health needs no bearer token, so the probe needs no secret).
- ``raylet``: this container runs a Ray node (a live ``raylet`` process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 5.0


def is_serving(target: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True when the server at `target` reports SERVING for the whole server ("")."""
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def runs_raylet(proc: Path = Path("/proc")) -> bool:
    """True when a process named ``raylet`` is alive in this (container's) PID namespace."""
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "raylet":
                return True
        except OSError:
            continue  # the process ended while we looked
    return False


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "grpc":
        return 0 if is_serving(argv[1]) else 1
    if argv == ["raylet"]:
        return 0 if runs_raylet() else 1
    print("usage: python -m services.probe grpc HOST:PORT | raylet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
