"""The gRPC server: TrainingService, health and reflection, behind the error interceptor."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bptrain.v1 import training_pb2, training_pb2_grpc
from services.api.auth import TokenAuthInterceptor
from services.api.errors import ErrorMappingInterceptor
from services.api.servicer import TrainingServicer
from services.api.streams import StreamLimitInterceptor
from services.jobs.manager import JobManager
from services.metrics import RpcMetricsInterceptor

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
UNARY_THREADS = 8  # kept from streams by default: unary RPCs and health checks


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

    With `tokens`, every RPC but health needs ``authorization: Bearer <token>``.
    At most `max_streams` streaming RPCs run at once (the next is RESOURCE_EXHAUSTED), so
    `threads` − `max_streams` threads are always left for unary RPCs and health checks;
    None: all threads but 8 (and at least 1).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    threads: int = 32
    max_concurrent_rpcs: int = 256
    max_streams: int | None = None
    tokens: frozenset[str] = frozenset()
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.threads < 2:
            raise ValueError(f"threads must be >= 2, got {self.threads}")
        if self.max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs must be >= 1, got {self.max_concurrent_rpcs}")
        if self.max_streams is not None and not 1 <= self.max_streams < self.threads:
            raise ValueError(
                f"max_streams must be in [1, threads - 1 = {self.threads - 1}], "
                f"got {self.max_streams}"
            )

    @property
    def stream_limit(self) -> int:
        if self.max_streams is not None:
            return self.max_streams
        return max(1, self.threads - UNARY_THREADS)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()


def create_server(config: ServerConfig, manager: JobManager) -> RunningServer:
    """Build and start the server; returns it with the port it bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="grpc"),
        interceptors=[
            RpcMetricsInterceptor(manager.metrics),  # outermost: sees every final status code
            *([TokenAuthInterceptor(config.tokens)] if config.tokens else []),
            StreamLimitInterceptor(config.stream_limit),
            ErrorMappingInterceptor(),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(manager), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
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
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)
