"""Reading a SweepSpec from a mapping or a YAML/JSON file; unknown keys are errors.

The file has the structure of the SweepSpec message; `base` is a job spec exactly as a
job file writes it, and each parameter is its path and one domain::

    - {path: optimizer.learning_rate, log_uniform: {low: 1e-4, high: 1e-2}}
    - {path: "layers[0].units", choice: [64, 128, 256]}     # numbers, or texts
    - {path: "layers[0].dropout", uniform: {low: 0, high: 0.5}}
    - {path: batch_size, integer: {low: 16, high: 128, step: 16}}
    - path: layers[1].activation                            # block style: no quotes
      grid: [relu, tanh]

In a YAML file, 1e-4 is a number (YAML 1.2), not the text YAML 1.1 makes of it; a
path with brackets is quoted inside a {flow mapping}.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from bptrain.specfile import SpecFileError, read_spec_data, spec_from_dict
from bptrain.v1 import sweeps_pb2 as spb

DOMAINS = ("grid", "choice", "uniform", "log_uniform", "integer")
_RANGE_KEYS = {"uniform": ("low", "high"), "log_uniform": ("low", "high")}
_RANGE_KEYS["integer"] = ("low", "high", "step")


class SweepLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads 1e-4 and 3E+2 as numbers, as YAML 1.2 does."""


SweepLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _keys(message: Message) -> dict[str, str]:
    """The message's field names, snake_case and lowerCamel, to their snake_case name."""
    keys = {}
    for field in message.DESCRIPTOR.fields:
        keys[field.name] = keys[field.json_name] = field.name
    return keys


def _mapping(data: Any, where: str, what: str) -> dict:
    if not isinstance(data, dict):
        raise SpecFileError(f"{where}: expected a mapping of {what}, got {type(data).__name__}")
    return data


def _check_keys(data: dict, allowed: dict[str, str] | tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            names = ", ".join(
                sorted(set(allowed.values() if isinstance(allowed, dict) else allowed))
            )
            raise SpecFileError(f"{where}: unknown key {key!r} (expected one of: {names})")


def sweep_spec_from_dict(data: Any, *, source: str = "sweep spec") -> spb.SweepSpec:
    """Map a plain mapping (snake_case or lowerCamel keys) onto a SweepSpec message;
    SpecFileError names the first bad key."""
    data = _mapping(data, source, "SweepSpec fields")
    keys = _keys(spb.SweepSpec())
    _check_keys(data, keys, source)
    fields = {keys[key]: value for key, value in data.items()}
    spec = spb.SweepSpec()
    if "base" in fields:
        spec.base.CopyFrom(spec_from_dict(fields.pop("base"), source=f"{source}: base"))
    parameters = fields.pop("parameters", [])
    if not isinstance(parameters, list):
        raise SpecFileError(
            f"{source}: parameters: expected a list, got {type(parameters).__name__}"
        )
    for index, parameter in enumerate(parameters):
        spec.parameters.append(_parameter(parameter, f"{source}: parameters[{index}]"))
    if "scheduler" in fields:
        scheduler = _mapping(fields["scheduler"], f"{source}: scheduler", "scheduler fields")
        _check_keys(scheduler, _keys(spb.SweepScheduler()), f"{source}: scheduler")
    try:
        spec.MergeFrom(json_format.ParseDict(fields, spb.SweepSpec()))
    except json_format.ParseError as error:
        raise SpecFileError(f"{source}: {error}") from None
    return spec


def _parameter(data: Any, where: str) -> spb.SweepParameter:
    data = _mapping(data, where, "path and one domain")
    _check_keys(data, ("path", *DOMAINS), where)
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise SpecFileError(f"{where}: path: expected a field path such as layers[0].units")
    domains = [key for key in DOMAINS if key in data]
    if len(domains) != 1:
        given = " and ".join(domains) if domains else "none"
        raise SpecFileError(f"{where}: needs exactly one of {', '.join(DOMAINS)} (got {given})")
    domain = domains[0]
    message = spb.SweepParameter(path=path)
    if domain in ("grid", "choice"):
        getattr(message, domain).CopyFrom(_values(data[domain], f"{where}.{domain}"))
    else:
        getattr(message, domain).CopyFrom(_range(domain, data[domain], f"{where}.{domain}"))
    return message


def _kind(value: Any) -> str:
    if isinstance(value, (str, bool)):
        return "texts"
    return "numbers" if isinstance(value, (int, float)) else type(value).__name__


def _values(data: Any, where: str) -> spb.Values:
    """A list of numbers (Values.numbers) or of texts (Values.texts); booleans are the
    texts true and false, as the server takes them."""
    if not isinstance(data, list) or not data:
        raise SpecFileError(f"{where}: expected a non-empty list of numbers or of texts")
    for value in data:
        if _kind(value) not in ("numbers", "texts"):
            raise SpecFileError(f"{where}: expected numbers or texts, got {value!r}")
        if _kind(value) != _kind(data[0]):
            raise SpecFileError(
                f"{where}: takes numbers or texts, not both (got {data[0]!r} and {value!r})"
            )
    if _kind(data[0]) == "numbers":
        return spb.Values(numbers=data)
    return spb.Values(
        texts=[("true" if v else "false") if isinstance(v, bool) else v for v in data]
    )


def _range(domain: str, data: Any, where: str) -> spb.Range | spb.IntRange:
    keys = _RANGE_KEYS[domain]
    data = _mapping(data, where, " and ".join(keys))
    _check_keys(data, keys, where)
    for key in ("low", "high"):
        if key not in data:
            raise SpecFileError(f"{where}: {key} is required")
    bounds = {
        key: _number(value, f"{where}.{key}", domain == "integer") for key, value in data.items()
    }
    return spb.IntRange(**bounds) if domain == "integer" else spb.Range(**bounds)


def _number(value: Any, where: str, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecFileError(f"{where}: expected a number, got {value!r}")
    if not integer:
        return float(value)
    if not (math.isfinite(value) and float(value).is_integer()):
        raise SpecFileError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def load_sweep_file(path: str | Path) -> spb.SweepSpec:
    """Read a .yaml/.yml or .json file into a SweepSpec message."""
    return sweep_spec_from_dict(read_spec_data(path, SweepLoader), source=str(path))
