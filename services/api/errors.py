"""The one place where exceptions become gRPC status codes.

`ErrorMappingInterceptor` wraps every handler, unary or streaming: a domain error
becomes its status code with its own message (cut to 1000 bytes); anything else becomes
INTERNAL with a generic message, and the traceback goes to the log, never to the client.
Before the handler runs, the request passes the edge (`services.api.edge`): a body
that is not protobuf, or a string or list over its bound, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message

from services.api.edge import Malformed, bounded_message, check_bounds, tolerant
from services.api.handlers import enclosed
from services.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidSpecError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidSpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
)

INTERNAL_MESSAGE = "internal error; the server log has the details"


def status_for(error: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in STATUS_OF:
        if isinstance(error, kind):
            return code, bounded_message(str(error))
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _at_the_edge(request: Any) -> Any:
    """`request` once it passed the edge; raises InvalidSpecError otherwise."""
    if isinstance(request, Malformed):
        raise InvalidSpecError(request.type_name, f"is not valid protobuf ({request.size} bytes)")
    if isinstance(request, Message):  # (a handler without a deserializer gets bytes)
        check_bounds(request)
    return request


def _already_aborted(context: grpc.aio.ServicerContext) -> bool:
    code = context.code()
    return code is not None and code is not grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def _mapped(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    try:
        yield
    except Exception as error:  # (a client that left raises CancelledError: not mapped)
        if isinstance(error, grpc.aio.AbortError) or _already_aborted(context):
            raise
        code, message = status_for(error)
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s failed", method, exc_info=error)
        await context.abort(code, message)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions from every handler of every service to status codes."""

    def __init__(self) -> None:
        self._wrapped: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrapped.get(handler)  # one wrapper per method, made once
        if wrapped is None:
            method = handler_call_details.method
            wrapped = self._wrapped[handler] = enclosed(
                handler,
                lambda context: _mapped(context, method),
                check=_at_the_edge,
                request_deserializer=tolerant(handler.request_deserializer),
            )
        return wrapped
