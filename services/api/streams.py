"""A bound on open streams, so that streams never take every server thread.

A streaming RPC (StreamMetrics, GetWeights, UploadDataset, health Watch, reflection)
holds one of the server's threads for its whole life. `StreamLimitInterceptor` lets at
most `limit` of them run at once and refuses the next one at once with
RESOURCE_EXHAUSTED, so the remaining threads always serve unary RPCs and health checks
(a refused stream never waits in the queue behind the others).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

STREAM_KINDS = ("unary_stream", "stream_unary", "stream_stream")


class StreamLimitInterceptor(grpc.ServerInterceptor):
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the stream limit must be >= 1, got {limit}")
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def _refuse(self, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server has {self.limit} streams open, its limit; try again later",
        )

    def _limited_output(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not self._slots.acquire(blocking=False):
                self._refuse(context)
            try:
                yield from behavior(request, context)
            finally:
                self._slots.release()

        return handle

    def _limited_input(self, behavior: Callable) -> Callable:
        def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            if not self._slots.acquire(blocking=False):
                self._refuse(context)
            try:
                return behavior(requests, context)
            finally:
                self._slots.release()

        return handle

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        for kind in STREAM_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                wrap = self._limited_input if kind == "stream_unary" else self._limited_output
                factory = getattr(grpc, f"{kind}_rpc_method_handler")
                return factory(
                    wrap(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
