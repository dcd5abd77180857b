"""A bound on open streams: beyond it a new stream is refused at once.

Streams cost no thread (the server is asyncio: a follower waiting for the next point is
a suspended coroutine), but each holds memory and a share of every broadcast, so
`StreamLimitInterceptor` lets at most `limit` streaming RPCs (StreamMetrics, GetWeights,
UploadDataset, health Watch, reflection) run at once and refuses the next one at once
with RESOURCE_EXHAUSTED; it never waits in a queue. Unary RPCs are not counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from services.api.handlers import enclosed, kind_of


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the stream limit must be >= 1, got {limit}")
        self.limit = limit
        self.open = 0  # changed on the server's event loop only
        self._wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    @contextlib.asynccontextmanager
    async def _slot(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """One of the stream slots for the whole call; RESOURCE_EXHAUSTED when none is free."""
        if self.open >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server has {self.limit} streams open, its limit; try again later",
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or kind_of(handler) == "unary_unary":
            return handler
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = self._wrapped[handler] = enclosed(handler, self._slot)
        return wrapped
