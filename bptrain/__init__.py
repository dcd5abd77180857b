"""bptrain's client side: the SDK (`Client`), the CLI and the generated API stubs.

The names below load on first use (PEP 562), so that importing the generated stubs
(`bptrain.v1`), as the server does, loads nothing else of the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bptrain.client import BptrainError, Client, JobHandle
    from bptrain.model import Model
    from bptrain.specfile import SpecFileError, load_spec_file
    from bptrain.sweeps import SweepHandle
    from bptrain.sweepspec import load_sweep_file

_HOMES = {
    "BptrainError": "bptrain.client",
    "Client": "bptrain.client",
    "JobHandle": "bptrain.client",
    "Model": "bptrain.model",
    "SpecFileError": "bptrain.specfile",
    "load_spec_file": "bptrain.specfile",
    "SweepHandle": "bptrain.sweeps",
    "load_sweep_file": "bptrain.sweepspec",
}

__all__ = [
    "BptrainError",
    "Client",
    "JobHandle",
    "Model",
    "SpecFileError",
    "SweepHandle",
    "load_spec_file",
    "load_sweep_file",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bptrain' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
