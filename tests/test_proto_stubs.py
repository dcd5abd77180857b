"""The checked-in stubs under bptrain/v1/ are what `make proto` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("training", "sweeps")
GENERATED = tuple(
    f"{proto}{suffix}" for proto in PROTOS for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
)


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    proto_include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{proto_include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *(str(ROOT / f"protos/bptrain/v1/{proto}.proto") for proto in PROTOS),
        ]
    )
    assert status == 0
    for name in GENERATED:
        fresh = (tmp_path / "bptrain/v1" / name).read_text()
        checked_in = (ROOT / "bptrain/v1" / name).read_text()
        if fresh != checked_in:
            pytest.fail(f"bptrain/v1/{name} is stale: run `make proto` and commit the result")


def test_generated_code_imports_without_path_patching() -> None:
    from bptrain.v1 import training_pb2, training_pb2_grpc

    assert training_pb2_grpc.TrainingServiceStub is not None
    assert training_pb2.DESCRIPTOR.package == "bptrain.v1"


def test_the_stubs_load_nothing_else_of_the_sdk() -> None:
    # The server imports the stubs; that must not pull in the client, its CLI or YAML.
    code = (
        "import sys, bptrain.v1.training_pb2, bptrain.v1.training_pb2_grpc; "
        "loaded = sorted(m for m in sys.modules if m.startswith('bptrain') or m == 'yaml'); "
        "print(' '.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == [
        "bptrain",
        "bptrain.v1",
        "bptrain.v1.training_pb2",
        "bptrain.v1.training_pb2_grpc",
    ]


def test_the_sdk_names_load_on_first_use() -> None:
    import bptrain

    assert bptrain.Client.__module__ == "bptrain.client"
    assert bptrain.load_spec_file.__module__ == "bptrain.specfile"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = bptrain.Nope
