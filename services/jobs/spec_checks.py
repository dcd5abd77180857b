"""The field checks spec parts are built with: each raises `InvalidSpecError` naming the field."""

from __future__ import annotations

import math
from typing import Any

from services.errors import InvalidSpecError, quoted


def check_range(name: str, value: float, low: float, high: float) -> None:
    """`value` is finite and within [low, high]."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpecError(name, f"must be a finite number, got {value}")
    if value < low:
        raise InvalidSpecError(name, f"must be >= {low}, got {value}")
    if value > high:
        raise InvalidSpecError(name, f"must be <= {high}, got {value}")


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """`value` is one of `choices`."""
    if value not in choices:
        raise InvalidSpecError(name, f"must be one of {', '.join(choices)}, got {quoted(value)}")


def nested(path: str, factory: Any, **fields: Any) -> Any:
    """Build a nested spec part, naming `path` in any field error (``layers[1].units``)."""
    try:
        return factory(**fields)
    except InvalidSpecError as error:
        raise error.under(path) from None
