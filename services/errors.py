"""Domain errors: what went wrong, in the service's own words.

Each maps to one gRPC status code in `services.api.errors` (the one place
that knows about gRPC). Domain code raises these; it never sees protobuf.
"""

from __future__ import annotations

QUOTE_CHARS = 48


def quoted(value: str) -> str:
    """A client's value for a message: repr'd whole when short, else a prefix and its
    length, so an error message never grows with the input."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return f"{value[:QUOTE_CHARS]!r}… ({len(value)} characters)"


class ServiceError(Exception):
    """Base of every error a client may be told about (the client side has its own,
    `bptrain.BptrainError`, for the status it receives)."""


class InvalidSpecError(ServiceError, ValueError):
    """A field of a request is invalid; the message names the field.

    `field` is a dotted path such as ``optimizer.learning_rate``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")

    def under(self, parent: str) -> InvalidSpecError:
        """The same error, with its field nested under `parent` (``parent.field``)."""
        return InvalidSpecError(f"{parent}.{self.field}", self.problem)


class NotFoundError(ServiceError, LookupError):
    """An unknown job or dataset."""


class AlreadyExistsError(ServiceError):
    """A client-chosen key is already taken by something else."""


class FailedPreconditionError(ServiceError):
    """The request is valid but the resource is not in a state that allows it."""


class OutOfRangeError(ServiceError):
    """A cursor points past what is stored."""


class ResourceExhaustedError(ServiceError):
    """A queue, quota or size limit was reached."""


class UnavailableError(ServiceError):
    """A backend the request needs (Ray) cannot be reached."""
