"""The import contracts in pyproject.toml cover the code as it is: a new client module
cannot slip past "the server uses only the generated stubs of bptrain"."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parent.parent


def test_the_server_is_kept_from_every_client_module_but_the_stubs() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    (stubs_only,) = [c for c in contracts if "only the generated stubs" in c["name"]]
    client = {
        f"bptrain.{path.stem}"
        for path in (ROOT / "bptrain").glob("*.py")
        if path.stem != "__init__"
    }
    assert client - set(stubs_only["forbidden_modules"]) == set()
