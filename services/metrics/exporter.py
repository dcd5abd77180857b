"""The /metrics HTTP endpoint of the API process (prometheus_client's threaded server)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporters use


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where /metrics listens. Port 0 picks a free port (the exporter reports it)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics port must be in [0, 65535], got {self.port}")


class MetricsExporter:
    """Serves `registry` in the Prometheus text format on http://host:port/metrics."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, config: MetricsConfig, registry: CollectorRegistry) -> MetricsExporter:
        try:
            server, thread = start_http_server(config.port, addr=config.host, registry=registry)
        except OSError as error:
            raise OSError(
                f"could not serve metrics on {config.host}:{config.port} ({error.strerror})"
            ) from error
        return cls(server, thread)

    @property
    def port(self) -> int:
        return self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
