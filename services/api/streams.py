"""A bound on open streams, so that streams never take every server thread.

A streaming RPC (StreamMetrics, GetWeights, UploadDataset, health Watch, reflection)
holds one of the server's threads for its whole life. `StreamLimitInterceptor` lets at
most `limit` of them run at once and refuses the next one at once with
RESOURCE_EXHAUSTED, so the remaining threads always serve unary RPCs and health checks
(a refused stream never waits in the queue behind the others).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from services.api.handlers import kind_of, replaced


class StreamLimitInterceptor(grpc.ServerInterceptor):
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the stream limit must be >= 1, got {limit}")
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """One of the stream slots for the body of a call; RESOURCE_EXHAUSTED when none is free."""
        if not self._slots.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server has {self.limit} streams open, its limit; try again later",
            )
        try:
            yield
        finally:
            self._slots.release()

    def _limited(self, kind: str, behavior: Callable) -> Callable:
        if kind == "stream_unary":

            def answer(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                with self._slot(context):
                    return behavior(requests, context)

            return answer

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._slot(context):
                yield from behavior(request, context)

        return stream

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or kind_of(handler) == "unary_unary":
            return handler
        return replaced(handler, self._limited)
