"""Bearer-token authentication for every RPC, unary and streaming, except health probes.

Clients send ``authorization: Bearer <token>`` metadata. The token names the calling
principal (services/tenancy.py); the handler reads it with `caller()`. Tokens are
compared in constant time against every configured token, so timing reveals neither a
prefix nor which token matched. Without tokens the server has one user, `LOCAL`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
from collections.abc import AsyncIterator, Iterable, Mapping

import grpc

from services.api.handlers import enclosed
from services.tenancy import LOCAL, MAX_TOKEN_CHARS, Principal

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes need no token
UNAUTHENTICATED_MESSAGE = "a valid bearer token is required (metadata 'authorization: Bearer …')"

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller", default=LOCAL)


def caller() -> Principal:
    """The principal of the call being handled (LOCAL on a server without tokens)."""
    return _caller.get()


def _presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


@contextlib.asynccontextmanager
async def _denied(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    yield  # never reached: abort raises


@contextlib.asynccontextmanager
async def _as(principal: Principal) -> AsyncIterator[None]:
    token = _caller.set(principal)
    try:
        yield
    finally:
        # A stream whose client left is closed by asyncio's generator finalizer, in another
        # context, where there is nothing to restore (and reset would raise ValueError).
        with contextlib.suppress(ValueError):
            _caller.reset(token)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with one of the tokens, as the principal it names;
    health stays open for probes."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        if not principals:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._principals = tuple((token.encode(), p) for token, p in principals.items())
        # (handler, principal or None for denied) -> its wrapper, made once
        self._wrapped: dict[tuple, grpc.RpcMethodHandler] = {}

    def principal_of(self, presented: str) -> Principal | None:
        """The principal `presented` names, None for no valid token."""
        if not presented or len(presented) > MAX_TOKEN_CHARS:  # no configured token is this long
            return None
        candidate = presented.encode()
        found = None
        for token, principal in self._principals:  # every compare, each in constant time
            if hmac.compare_digest(candidate, token):
                found = principal
        return found

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        principal = self.principal_of(_presented_token(handler_call_details.invocation_metadata))
        wrapped = self._wrapped.get((handler, principal))
        if wrapped is None:
            if principal is None:  # a handler of the same kind that answers UNAUTHENTICATED
                wrapped = enclosed(handler, _denied)
            else:
                wrapped = enclosed(handler, lambda context: _as(principal))
            self._wrapped[(handler, principal)] = wrapped
        return wrapped
