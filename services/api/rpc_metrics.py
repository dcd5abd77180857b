"""RpcMetricsInterceptor: counts every RPC by method and final status code, and times it.

It must be the outermost interceptor: it then sees the code that the error mapping
(or authentication) chose, including calls they aborted. A unary call ends when its
handler returns or raises; a stream ends when its generator is exhausted, raises, or
is closed because the client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from services.api.handlers import enclosed
from services.metrics.service import ServiceMetrics


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status a finished handler leaves: what it set or aborted with, else implied."""
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit) or context.cancelled():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "OK" if error is None else "UNKNOWN"  # gRPC answers UNKNOWN to a stray exception


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Feeds `bptrain_rpc_handled_total{method,code}` and `bptrain_rpc_duration_seconds`."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self._wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED; not a bounded label
        wrapped = self._wrapped.get(handler)  # one wrapper per method, made once
        if wrapped is None:
            method = handler_call_details.method.lstrip("/")
            wrapped = enclosed(handler, lambda context: self._timed(context, method))
            self._wrapped[handler] = wrapped
        return wrapped

    @contextlib.asynccontextmanager
    async def _timed(self, context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as raised:  # counted, then passed on
            error = raised
            raise
        finally:
            self.metrics.rpc_completed(
                method, final_code(context, error), time.perf_counter() - started
            )
