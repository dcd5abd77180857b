"""Trained weights as a .npz file: W1, b1, W2, ... plus the architecture as JSON.

W^l is (in, out) and b^l is (out,), as in training: a forward pass is
a = σ_l(a W^l + b^l) layer by layer. The file loads with ``allow_pickle=False``.

θ arrives as the values of one export's ObjectRefs (`JobRunner.final_weights`,
`JobRunner.latest_weights`): (step, θ's part) per shard holder, in shard order.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.jobs.shards import joined
from services.jobs.spec import JobSpec
from worker.layout import ParamLayout

CHUNK_BYTES = 256 * 1024


def join_exported(parts: list[tuple[int, np.ndarray]]) -> tuple[int, np.ndarray]:
    """(step, θ (P,)) from one export's values: the parts joined in shard order; the
    step is the lowest of theirs (they agree for bsp)."""
    return min(step for step, _ in parts), joined([theta for _, theta in parts])


def write_weights(path: Path, spec: JobSpec, theta: np.ndarray) -> None:
    """Write θ (P,) as named per-layer arrays, atomically (temp file + rename)."""
    arrays = ParamLayout(spec.sizes).to_dict(theta)
    architecture = {
        "sizes": spec.sizes,
        "activations": spec.activations,
        "loss": spec.loss,
        "format": "bptrain.v1.npz",
    }
    buffer = io.BytesIO()
    np.savez(buffer, architecture=np.array(json.dumps(architecture)), **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "wb") as file:
        file.write(buffer.getvalue())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def read_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in CHUNK_BYTES pieces."""
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
