"""The one place where exceptions become gRPC status codes.

`ErrorMappingInterceptor` wraps every handler, unary or streaming: a domain error
becomes its status code with its own message; anything else becomes INTERNAL with a
generic message, and the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

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
            return code, str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _abort(error: Exception, context: grpc.ServicerContext, method: str) -> None:
    code, message = status_for(error)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=error)
    context.abort(code, message)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = context.code()
    return code is not None and code is not grpc.StatusCode.OK


def _map_unary(behavior: Callable, method: str) -> Callable:
    @functools.wraps(behavior)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as error:
            if _already_aborted(context):
                raise
            _abort(error, context, method)

    return wrapper


def _map_stream(behavior: Callable, method: str) -> Callable:
    @functools.wraps(behavior)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from behavior(request, context)
        except Exception as error:
            if _already_aborted(context):
                raise
            _abort(error, context, method)

    return wrapper


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps exceptions from every handler of every service to status codes."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _map_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _map_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _map_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _map_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
