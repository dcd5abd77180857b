"""One helper for the API's (asyncio) interceptors: a method handler run inside a scope.

Every handler the server holds is asynchronous: a coroutine (unary responses, or a
stream written with `context.write`) or an async generator (a stream of yields). An
interceptor gives `enclosed` an async context manager, the scope: the handler's whole
call runs inside it, streams included, so the scope sees how the call ends (its
exception, a cancellation) and may turn an exception into a status. `check` sees each
request (the one request, or each of a request stream) before the handler does.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

Scope = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[Any]]


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    """ "unary_unary", "unary_stream", "stream_unary" or "stream_stream"."""
    return next(kind for kind in KINDS if getattr(handler, kind) is not None)


def enclosed(
    handler: grpc.RpcMethodHandler,
    scope: Scope,
    *,
    check: Callable[[Any], Any] | None = None,
    request_deserializer: Callable | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` of the same kind and serializers, each call run inside `scope(context)`,
    each request passed through `check` first; its deserializer replaced when given."""
    kind = kind_of(handler)
    behavior = getattr(handler, kind)
    if check is None:
        take: Callable[[Any], Any] = _same
    elif kind.startswith("stream_"):
        take = _checking(check)
    else:
        take = check
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            async with scope(context):
                async for response in behavior(take(request), context):
                    yield response

        wrapped: Callable = generator
    else:

        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await behavior(take(request), context)

        wrapped = coroutine
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        wrapped,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _same(request: Any) -> Any:
    return request


def _checking(check: Callable[[Any], Any]) -> Callable[[AsyncIterator], AsyncIterator]:
    async def checked(requests: AsyncIterator) -> AsyncIterator:
        async for request in requests:
            yield check(request)

    return checked
