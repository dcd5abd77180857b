"""The connection under `bptrain.Client`: the channel (TLS, reconnect pacing, message
limits), the bearer token on every call, and gRPC errors as `BptrainError`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RECONNECT_PAUSE_S = (0.2, 5.0)  # a follower's pause between reconnects: first, most
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


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


@dataclass(frozen=True)
class Resumable:
    """A server stream that can be opened again after a cursor and ends with an item
    whose `final` field is set (StreamMetrics, StreamSweep).

    open_after(cursor): the stream of items after `cursor`; position(item): the cursor
    after a non-final item (None: unchanged); stream, unit, owner: words for messages
    ("metrics stream", "step", "job")."""

    open_after: Callable[[int], Iterable[Any]]
    position: Callable[[Any], int | None]
    stream: str
    unit: str
    owner: str


def follow(
    source: Resumable,
    cursor: int,
    reconnect_for_s: float | None,
    on_reconnect: Callable[[str, int], None] | None,
) -> Iterator[Any]:
    """Every item of `source` after `cursor`, through the final one, reopening the
    stream after the last cursor seen when it drops (UNAVAILABLE, DEADLINE_EXCEEDED, or
    an end without the final item), with pauses growing from 0.2 s to 5 s, for as long
    as `reconnect_for_s` allows since the last item (None: until the final item).
    `on_reconnect(status, cursor)` is called before each attempt. Other errors
    (NOT_FOUND, PERMISSION_DENIED, ...) raise BptrainError at once."""
    pause, longest = RECONNECT_PAUSE_S
    last_item = time.monotonic()
    while True:
        try:
            for item in source.open_after(cursor):
                pause, last_item = RECONNECT_PAUSE_S[0], time.monotonic()
                if item.HasField("final"):
                    yield item
                    return
                moved = source.position(item)
                cursor = cursor if moved is None else moved
                yield item
            code = "UNAVAILABLE"
            details = f"the {source.stream} ended before the {source.owner} did"
        except grpc.RpcError as error:
            if error.code() not in RETRYABLE:
                raise raise_from(error) from None
            code, details = error.code().name, error.details() or ""
        waited = time.monotonic() - last_item
        if reconnect_for_s is not None and waited + pause > reconnect_for_s:
            raise BptrainError(code, f"{details} (no answer for {waited:.0f} s)")
        log.info("%s dropped (%s); resuming after %s %d", source.stream, code, source.unit, cursor)
        if on_reconnect is not None:
            on_reconnect(code, cursor)
        time.sleep(pause)
        pause = min(2 * pause, longest)


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
