"""Validate compose files against the compose-spec JSON schema; exit 1 naming each error.

The schema is the compose-spec's `compose-spec.json` as the pinned npm package dclint
ships it (deploy/lint/node_modules, installed by `make lint`): nothing is downloaded here.

    python deploy/lint/validate_compose.py docker-compose.yml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent / "node_modules/dclint/schemas/compose.schema.json"


def compose_errors(path: Path, schema_path: Path = SCHEMA) -> list[str]:
    """Every schema violation in the compose file at `path`, as 'where: what' lines."""
    schema = json.loads(schema_path.read_text())
    document = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def main(paths: list[str]) -> int:
    if not SCHEMA.is_file():
        print(f"{SCHEMA} is missing: run `make lint` (npm ci in deploy/lint)", file=sys.stderr)
        return 2
    failed = False
    for name in paths:
        errors = compose_errors(Path(name))
        for error in errors:
            print(f"{name}: {error}", file=sys.stderr)
        failed |= bool(errors)
        if not errors:
            print(f"{name}: valid against the compose-spec schema")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["docker-compose.yml"]))
