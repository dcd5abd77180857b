"""A JobSpec field by its path (``optimizer.learning_rate``, ``layers[0].units``): what a
sweep's parameter sets in each trial's spec.

A path names one scalar field of the spec as the API writes it (the JobSpec message):
a top-level field (``batch_size``, ``l2``, ``consistency``), a field of ``optimizer``,
``schedule`` or ``stop_when``, a field of one of the base spec's layers, or one of
``dataset.validation_fraction``, ``dataset.samples``, ``dataset.features``,
``dataset.classes``, ``dataset.noise``. What names the job or its data (``name``,
``dataset.name``, ``dataset.dataset_id``) cannot be swept. Paths are checked against the
domain dataclasses, so a field added to the spec is tunable without a change here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from services.errors import InvalidSpecError, quoted
from services.jobs.early_stopping import StopWhenSpec
from services.jobs.spec import JobSpec, LayerSpec, ScheduleSpec
from services.paramserver.optimizers import OptimizerConfig

Value = float | int | str | bool

_SEGMENT = re.compile(r"([a-z_][a-z0-9_]*)(?:\[(\d{1,4})\])?")
_PARTS: dict[str, type] = {
    "optimizer": OptimizerConfig,
    "schedule": ScheduleSpec,
    "stop_when": StopWhenSpec,
}
_DATASET_OPTIONS = ("samples", "features", "classes", "noise")
_NOT_TUNABLE = {"name", "layers", "dataset", *_PARTS}


@dataclass(frozen=True)
class FieldPath:
    """A checked path: `keys` lead to the field in `JobSpec.to_dict()`; `kind` is the
    field's type (int, float, str or bool)."""

    text: str
    keys: tuple[str | int, ...]
    kind: type

    def set(self, spec: dict[str, Any], value: Value) -> None:
        """Set the field in a spec dict (`JobSpec.to_dict()`), in place."""
        *parents, last = self.keys
        node: Any = spec
        for key in parents:
            if isinstance(key, int) and key >= len(node):
                raise InvalidSpecError("path", f"{self.text}: the base spec has {len(node)} layers")
            node = node[key]
        node[last] = self.coerce(value)

    def coerce(self, value: Value) -> Value:
        """`value` as the field's type, or InvalidSpecError."""
        if self.kind is bool:
            if isinstance(value, str) and value in ("true", "false"):
                return value == "true"
            raise InvalidSpecError("path", f"{self.text} takes the texts true or false")
        if self.kind is str:
            if not isinstance(value, str):
                raise InvalidSpecError("path", f"{self.text} takes texts, not {value!r}")
            return value
        if isinstance(value, str):
            raise InvalidSpecError("path", f"{self.text} takes numbers, not {quoted(value)}")
        if self.kind is int:
            if not (math.isfinite(value) and float(value).is_integer()):
                raise InvalidSpecError("path", f"{self.text} takes integers, not {value!r}")
            return int(value)
        return float(value)


def parse(text: str) -> FieldPath:
    """The field `text` names; InvalidSpecError("path", ...) for anything else."""
    segments = text.split(".")
    matches = [_SEGMENT.fullmatch(segment) for segment in segments]
    if not text or any(match is None for match in matches):
        raise InvalidSpecError(
            "path", f"must be a field path like layers[0].units, got {quoted(text)}"
        )
    (head, index), rest = matches[0].groups(), [m.groups() for m in matches[1:]]  # type: ignore[union-attr]
    if any(i is not None for _, i in rest) or (index is not None) != (head == "layers"):
        raise InvalidSpecError(
            "path", f"only layers takes an index (layers[0].units), got {quoted(text)}"
        )
    names = [name for name, _ in rest]
    if head == "layers":
        return _leaf(text, LayerSpec, names, ("layers", int(index)), "a layer has")
    if head in _PARTS:
        return _leaf(text, _PARTS[head], names, (head,), f"{head} has")
    if head == "dataset":
        return _dataset_leaf(text, names)
    if names or head in _NOT_TUNABLE:
        raise _unknown(text, "a sweep can set", _tunable(JobSpec) - _NOT_TUNABLE)
    return _leaf(text, JobSpec, [head], (), "a sweep can set")


def _dataset_leaf(text: str, names: list[str]) -> FieldPath:
    if len(names) == 1 and names[0] == "validation_fraction":
        return FieldPath(text, ("dataset", "validation_fraction"), float)
    if len(names) == 1 and names[0] in _DATASET_OPTIONS:
        kind = float if names[0] == "noise" else int
        return FieldPath(text, ("dataset", "options", names[0]), kind)
    raise _unknown(text, "dataset has", {"validation_fraction", *_DATASET_OPTIONS})


def _leaf(
    text: str, owner: type, names: list[str], prefix: tuple[str | int, ...], where: str
) -> FieldPath:
    fields = _scalar_fields(owner)
    if len(names) != 1 or names[0] not in fields:
        raise _unknown(text, where, set(fields))
    return FieldPath(text, (*prefix, names[0]), fields[names[0]])


def _scalar_fields(owner: type) -> dict[str, type]:
    """The dataclass's fields whose type is int, float, str or bool (optional or not)."""
    hints = typing.get_type_hints(owner)
    scalars: dict[str, type] = {}
    for field in dataclasses.fields(owner):
        hint = hints[field.name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [t for t in options if t in (int, float, str, bool)]
        if len(kinds) == 1 and all(t in (kinds[0], type(None)) for t in options):
            scalars[field.name] = kinds[0]
    return scalars


def _tunable(owner: type) -> set[str]:
    return set(_scalar_fields(owner))


def _unknown(text: str, where: str, names: set[str]) -> InvalidSpecError:
    return InvalidSpecError(
        "path", f"unknown field {quoted(text)}: {where} {', '.join(sorted(names))}"
    )


def with_values(base: JobSpec, values: dict[FieldPath, Value], *, name: str) -> JobSpec:
    """The base spec with each path set to its value, renamed; checked as any spec
    (InvalidSpecError names the field)."""
    data = copy.deepcopy(base.to_dict())
    for path, value in values.items():
        path.set(data, value)
    data["name"] = name
    return JobSpec.from_dict(data)


__all__ = ["FieldPath", "Value", "parse", "with_values"]
