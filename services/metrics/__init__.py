"""Prometheus metrics of the API process: RPCs, jobs and training, served on /metrics.

Everything is exported from the API process, which sees every RPC and every
metric point the runners report; no Ray actor runs an HTTP server of its own.
"""

from services.metrics.exporter import DEFAULT_METRICS_PORT, MetricsConfig, MetricsExporter
from services.metrics.registry import build_registry
from services.metrics.service import ServiceMetrics

__all__ = [
    "DEFAULT_METRICS_PORT",
    "MetricsConfig",
    "MetricsExporter",
    "ServiceMetrics",
    "build_registry",
]
