"""The registry `bptrain serve` exports: the service's metrics plus the process's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector


def build_registry() -> CollectorRegistry:
    """A fresh registry with process_* (CPU, memory, fds), python_gc_* and python_info."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
