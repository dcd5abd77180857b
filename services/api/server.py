"""The gRPC server (asyncio): TrainingService, health and reflection, behind the interceptors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bptrain.v1 import sweeps_pb2, sweeps_pb2_grpc, training_pb2, training_pb2_grpc
from services.api.auth import TokenAuthInterceptor
from services.api.errors import ErrorMappingInterceptor
from services.api.followers import Followers
from services.api.rpc_metrics import RpcMetricsInterceptor
from services.api.servicer import TrainingServicer
from services.api.streams import StreamLimitInterceptor
from services.api.sweep_servicer import SweepChanges, SweepServicer
from services.jobs.manager import JobManager
from services.sweeps.manager import SweepManager
from services.tenancy import Principal

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
SWEEP_SERVICE_NAME = sweeps_pb2.DESCRIPTOR.services_by_name["SweepService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """Server certificate and key (PEM files); with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {name} file {path} does not exist")

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where and how the API listens. Port 0 picks a free port (create_server returns it).

    The server is asyncio: a stream (a follower of a job, above all) is a suspended
    coroutine, not a thread. `threads` run the blocking domain calls (SQLite, Ray,
    files, spec validation). At most `max_streams` streaming RPCs are open at once (the
    next is RESOURCE_EXHAUSTED at once) and at most `max_concurrent_rpcs` RPCs of any
    kind; the difference (2048 by default) is what unary RPCs and health checks always
    have beside the streams.
    With `principals`, every RPC but health needs ``authorization: Bearer <token>``, and
    the token's principal owns what the call makes (services/tenancy.py).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    threads: int = 16
    max_concurrent_rpcs: int = 4096
    max_streams: int = 2048
    principals: Mapping[str, Principal] = field(default_factory=dict)  # token -> principal
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 1 <= self.threads <= 1024:
            raise ValueError(f"threads must be in [1, 1024], got {self.threads}")
        if self.max_concurrent_rpcs < 2:
            raise ValueError(f"max_concurrent_rpcs must be >= 2, got {self.max_concurrent_rpcs}")
        if not 1 <= self.max_streams <= self.max_concurrent_rpcs:
            raise ValueError(
                f"max_streams must be in [1, max_concurrent_rpcs = {self.max_concurrent_rpcs}], "
                f"got {self.max_streams}"
            )


@dataclass
class RunningServer:
    """A started server on its own event loop thread; `stop` from any other thread."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    followers: Followers
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    def stop(self, grace_s: float = 5.0) -> None:
        """Health turns NOT_SERVING, then calls in flight get `grace_s` to finish."""
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(grace_s), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def create_server(
    config: ServerConfig, manager: JobManager, sweeps: SweepManager | None = None
) -> RunningServer:
    """Build and start the server on a new event loop thread; returns it with its port.
    With `sweeps`, it serves SweepService too."""
    loop = asyncio.new_event_loop()
    loop.set_default_executor(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="api")
    )
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
    thread.start()
    try:
        return asyncio.run_coroutine_threadsafe(_start(config, manager, sweeps), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        raise


async def _start(
    config: ServerConfig, manager: JobManager, sweeps: SweepManager | None
) -> RunningServer:
    server = grpc.aio.server(
        interceptors=[
            RpcMetricsInterceptor(manager.metrics),  # outermost: sees every final status code
            *([TokenAuthInterceptor(config.principals)] if config.principals else []),
            StreamLimitInterceptor(config.max_streams),
            ErrorMappingInterceptor(),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    loop = asyncio.get_running_loop()
    followers = Followers(manager.store)
    followers.bind(loop)
    manager.add_listener(followers.changed)
    training_pb2_grpc.add_TrainingServiceServicer_to_server(
        TrainingServicer(manager, followers), server
    )
    services = [SERVICE_NAME]
    if sweeps is not None:
        changes = SweepChanges()
        changes.bind(loop)
        sweeps.add_listener(changes.changed)
        sweeps_pb2_grpc.add_SweepServiceServicer_to_server(
            SweepServicer(sweeps, manager, changes), server
        )
        services.append(SWEEP_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    try:
        if config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, config.tls.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"could not listen on {address} (is the port in use?)")
    await server.start()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        followers=followers,
        loop=loop,
        thread=threading.current_thread(),
    )
