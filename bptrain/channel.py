"""The connection under `bptrain.Client`: the channel (TLS, reconnect pacing, message
limits), the bearer token on every call, and gRPC errors as `BptrainError`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RECONNECT_PAUSE_S = (0.2, 5.0)  # a follower's pause between reconnects: first, most


class BptrainError(Exception):
    """A call the server refused or could not answer; `code` is the gRPC status name."""

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")


def raise_from(error: grpc.RpcError) -> BptrainError:
    return BptrainError(error.code().name, error.details() or "")


def call(method: Callable, request: Any, **kwargs: Any) -> Any:
    try:
        return method(request, **kwargs)
    except grpc.RpcError as error:
        raise raise_from(error) from None


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def open_channel(
    target: str, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # A server that restarts is tried again within seconds, not gRPC's two minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", int(RECONNECT_PAUSE_S[1] * 1000)),
    ]
    if tls_ca is None and tls_cert is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )
    return grpc.secure_channel(target, credentials, options=options)
