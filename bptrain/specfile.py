"""Reading a JobSpec from a YAML or JSON file; unknown fields are errors, not silently dropped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from bptrain.v1 import training_pb2 as pb


class SpecFileError(ValueError):
    """The file cannot be read as a JobSpec; the message says where and why."""


def spec_from_dict(data: dict[str, Any], *, source: str = "spec") -> pb.JobSpec:
    """Map a plain mapping (snake_case or lowerCamel keys) onto a JobSpec message."""
    if not isinstance(data, dict):
        raise SpecFileError(
            f"{source}: expected a mapping of JobSpec fields, got {type(data).__name__}"
        )
    try:
        return json_format.ParseDict(data, pb.JobSpec())
    except json_format.ParseError as error:
        raise SpecFileError(f"{source}: {error}") from None


def read_spec_data(path: str | Path, loader: type = yaml.SafeLoader) -> Any:
    """The parsed contents of a .yaml/.yml or .json file (SpecFileError if it cannot be);
    `loader`: a safe YAML loader (yaml.SafeLoader or a subclass)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecFileError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise SpecFileError(f"{path}: not UTF-8 text: {error.reason}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=loader)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SpecFileError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {error}"
        ) from None


def load_spec_file(path: str | Path) -> pb.JobSpec:
    """Read a .yaml/.yml or .json file into a JobSpec message."""
    return spec_from_dict(read_spec_data(path), source=str(path))
