"""One helper for the API's interceptors: a method handler with its behavior replaced."""

from __future__ import annotations

from collections.abc import Callable

import grpc

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    """ "unary_unary", "unary_stream", "stream_unary" or "stream_stream"."""
    return next(kind for kind in KINDS if getattr(handler, kind) is not None)


def replaced(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[str, Callable], Callable],
    request_deserializer: Callable | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` of the same kind and serializers, its behavior b replaced by
    wrap(kind, b); its request deserializer by `request_deserializer` when given."""
    kind = kind_of(handler)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        wrap(kind, getattr(handler, kind)),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
