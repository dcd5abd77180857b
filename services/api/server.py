"""The gRPC server: TrainingService, health and reflection, behind the error interceptor."""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bptrain.v1 import training_pb2, training_pb2_grpc
from services.api.errors import ErrorMappingInterceptor
from services.api.servicer import TrainingServicer
from services.jobs.manager import JobManager

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where the API listens. Port 0 picks a free port (create_server returns it)."""

    host: str = "127.0.0.1"
    port: int = 50051
    threads: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.threads < 2:
            raise ValueError(f"threads must be >= 2, got {self.threads}")


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
        interceptors=[ErrorMappingInterceptor()],
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
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"could not listen on {address} (is the port in use?)")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)
