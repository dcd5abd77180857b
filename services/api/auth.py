"""Bearer-token authentication for every RPC, unary and streaming, except health probes.

Clients send ``authorization: Bearer <token>`` metadata. Tokens are compared in
constant time against every configured token, so timing does not reveal a prefix.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

import grpc

from services.api.handlers import replaced

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # probes need no token
MAX_TOKEN_CHARS = 256
UNAUTHENTICATED_MESSAGE = "a valid bearer token is required (metadata 'authorization: Bearer …')"


def parse_tokens(text: str) -> frozenset[str]:
    """Tokens from a comma- or newline-separated list (as in $BPTRAIN_TOKENS or a file)."""
    tokens = frozenset(t.strip() for t in text.replace("\n", ",").split(",") if t.strip())
    for token in tokens:
        if not 16 <= len(token) <= MAX_TOKEN_CHARS:
            raise ValueError(f"every token must be 16 to {MAX_TOKEN_CHARS} characters long")
    return tokens


def _presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


def _deny(kind: str, behavior: Callable) -> Callable:
    def deny(request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    return deny


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Lets a call through only with one of `tokens`; health stays open for probes."""

    def __init__(self, tokens: frozenset[str]) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._tokens = tuple(token.encode() for token in tokens)

    def is_allowed(self, presented: str) -> bool:
        if len(presented) > MAX_TOKEN_CHARS:  # no configured token is this long
            return False
        candidate = presented.encode()
        # Compare with every token (no early exit), each compare in constant time.
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]
        return bool(presented) and any(matches)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        if self.is_allowed(_presented_token(handler_call_details.invocation_metadata)):
            return handler
        return replaced(handler, _deny)  # a handler of the same kind that answers UNAUTHENTICATED
