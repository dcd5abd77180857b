"""Exceptions → gRPC status codes: domain errors keep their message, others say nothing."""

from __future__ import annotations

import grpc
import pytest

from services.api.errors import INTERNAL_MESSAGE, status_for
from services.errors import (
    FailedPreconditionError,
    InvalidSpecError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            InvalidSpecError("optimizer.learning_rate", "must be > 0, got -1.0"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (NotFoundError("unknown job 'job-1'"), grpc.StatusCode.NOT_FOUND),
        (
            FailedPreconditionError("job job-1 is RUNNING, not SUCCEEDED"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (OutOfRangeError("after_step 9 is past step 4"), grpc.StatusCode.OUT_OF_RANGE),
        (ResourceExhaustedError("the job queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UnavailableError("Ray cannot be reached"), grpc.StatusCode.UNAVAILABLE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.name,
)
def test_each_domain_error_maps_to_its_code_and_keeps_its_message(
    error: Exception, code: grpc.StatusCode
) -> None:
    assert status_for(error) == (code, str(error))


def test_invalid_spec_message_names_the_field() -> None:
    code, message = status_for(InvalidSpecError("layers[2].units", "must be 10, got 9"))

    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message == "layers[2].units must be 10, got 9"


def test_a_subclass_of_a_domain_error_maps_like_its_parent() -> None:
    class JobVanishedError(NotFoundError):
        pass

    assert status_for(JobVanishedError("gone")) == (grpc.StatusCode.NOT_FOUND, "gone")


@pytest.mark.parametrize(
    "error",
    [
        KeyError("secret"),
        ValueError("secret"),  # InvalidSpecError is a ValueError; a plain one is not invalid input
        LookupError("secret"),  # NotFoundError is a LookupError; a plain one is not not-found
        RuntimeError("secret at /home/user/.ssh/id_rsa"),
        ZeroDivisionError("secret"),
        ServiceError("secret"),  # the base class carries no status of its own
    ],
    ids=lambda error: type(error).__name__,
)
def test_any_other_exception_is_internal_and_hides_its_text(error: Exception) -> None:
    code, message = status_for(error)

    assert code is grpc.StatusCode.INTERNAL
    assert message == INTERNAL_MESSAGE
    assert "secret" not in message
    assert type(error).__name__ not in message
