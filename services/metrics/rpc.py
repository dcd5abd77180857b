"""RpcMetricsInterceptor: counts every RPC by method and final status code, and times it.

It must be the outermost interceptor: it then sees the code that the error mapping
(or authentication) chose, including calls they aborted. A unary call ends when its
handler returns or raises; a stream ends when its generator is exhausted, raises, or
is closed because the client went away.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from services.metrics.service import ServiceMetrics


def final_code(context: grpc.ServicerContext, error: BaseException | None) -> str:
    """The status a finished handler leaves: what it set or aborted with, else implied."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if not context.is_active():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "OK" if error is None else "UNKNOWN"  # gRPC answers UNKNOWN to a stray exception


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Feeds `bptrain_rpc_handled_total{method,code}` and `bptrain_rpc_duration_seconds`."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED; not a bounded label
        method = handler_call_details.method.lstrip("/")
        for kind, wrap in (
            ("unary_unary", self._timed_unary),
            ("stream_unary", self._timed_unary),
            ("unary_stream", self._timed_stream),
            ("stream_stream", self._timed_stream),
        ):
            behavior = getattr(handler, kind)
            if behavior is not None:
                factory = getattr(grpc, f"{kind}_rpc_method_handler")
                return factory(
                    wrap(behavior, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _timed_unary(self, behavior: Callable, method: str) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return behavior(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                self.metrics.rpc_completed(
                    method, final_code(context, error), time.perf_counter() - started
                )

        return handle

    def _timed_stream(self, behavior: Callable, method: str) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            error: BaseException | None = None
            is_closed = False
            try:
                yield from behavior(request, context)
            except GeneratorExit:
                is_closed = True  # closed before its end: the client cancelled or left
                raise
            except BaseException as raised:
                error = raised
                raise
            finally:
                code = "CANCELLED" if is_closed else final_code(context, error)
                self.metrics.rpc_completed(method, code, time.perf_counter() - started)

        return handle
