"""Bounds at the edge: what every request must satisfy before a handler sees it.

- A request that is not valid protobuf (random bytes, a `string` that is not UTF-8) is
  the client's error: `tolerant` turns a failed parse into a `Malformed` value, which
  the error interceptor answers with INVALID_ARGUMENT naming the request type (grpcio
  would answer INTERNAL and the RPC metrics would never see it).
- `check_bounds` walks a parsed request once, cheap checks only: every string at most
  `MAX_STRING_CHARS`, every repeated field at most `MAX_REPEATED` items (counted before
  any item is looked at). Per-field rules (choices, ranges) come after, in the handlers.
- `bounded_message` cuts any status message to 1000 bytes; domain errors quote client
  values with `services.errors.quoted` (a short prefix and the length) in the first place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.errors import InvalidSpecError

MAX_STRING_CHARS = 256  # ids, names, choices, tokens, digests: none needs more
MAX_REPEATED = 256  # layers (64 allowed) and the like
MAX_MESSAGE_BYTES = 1000  # of any status message, UTF-8 (clients' metadata limits are KBs)


@dataclass(frozen=True)
class Malformed:
    """A request body that did not parse as `type_name`."""

    type_name: str
    size: int


def tolerant(deserializer: Callable[[bytes], Message] | None) -> Callable | None:
    """`deserializer`, returning `Malformed` where it would raise."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = descriptor.name if descriptor is not None else "request"

    def parse(data: bytes) -> Message | Malformed:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, UnicodeDecodeError, RuntimeWarning...: all the client's
            return Malformed(type_name, len(data))

    return parse


def check_bounds(message: Message, path: str = "") -> None:
    """Raises InvalidSpecError naming the first string or repeated field over its bound."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if not field.is_repeated:
            _check_value(field, name, value)
            continue
        if len(value) > MAX_REPEATED:
            raise InvalidSpecError(name, f"has {len(value)} items; at most {MAX_REPEATED}")
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            continue  # no maps in bptrain's requests; nothing to bound item by item
        for i, item in enumerate(value):
            _check_value(field, f"{name}[{i}]", item)


def _check_value(field: FieldDescriptor, name: str, value: object) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        check_bounds(value, f"{name}.")
    elif field.type == FieldDescriptor.TYPE_STRING:
        _check_string(name, value)


def _check_string(name: str, value: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise InvalidSpecError(name, f"is {len(value)} characters long; at most {MAX_STRING_CHARS}")


def bounded_message(text: str) -> str:
    """A status message cut to MAX_MESSAGE_BYTES of UTF-8."""
    data = text.encode()
    if len(data) <= MAX_MESSAGE_BYTES:
        return text
    return data[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "…"
