"""Reading an uploaded .npz with every size known before anything is allocated.

An .npz is a zip of .npy members. For X and y, each member's .npy header (magic,
dtype, shape) is read and checked first: a plain numeric dtype, X 2-D, y 1-D or 2-D,
and the bytes the header declares within `max_bytes` (all arrays together, as they
will sit in memory: the bound on decompression too). Only then is the array read,
exactly as many bytes as declared, and the member must end there: a header that lies
about its shape, a member cut short and a zip whose CRC fails are all refused.
Pickled (object) arrays are never loaded.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from services.errors import InvalidSpecError, ResourceExhaustedError

ARRAYS = {"X": (2,), "y": (1, 2)}  # name → allowed numbers of dimensions
MAX_HEADER_BYTES = 10_000


def read_arrays(path: Path, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """X and y from the .npz at `path`, their declared sizes checked against `max_bytes`."""
    if not zipfile.is_zipfile(path):
        raise InvalidSpecError("file", "is not a readable .npz (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = sorted(set(ARRAYS) - set(members))
            if missing:
                raise InvalidSpecError(
                    "file", f"must hold arrays X and y; missing {', '.join(missing)}"
                )
            budget = max_bytes
            arrays = []
            for name, dims in ARRAYS.items():
                with archive.open(members[name]) as member:
                    array, used = _read_member(member, name, dims, budget, max_bytes)
                arrays.append(array)
                budget = None if budget is None else budget - used
            return arrays[0], arrays[1]
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        if isinstance(error, InvalidSpecError):  # a ValueError: ours, raised as it is
            raise
        raise InvalidSpecError("file", f"is not a readable .npz ({_short(error)})") from None


def _read_member(
    member: IO[bytes], name: str, dims: tuple[int, ...], budget: int | None, limit: int | None
) -> tuple[np.ndarray, int]:
    """One array, its header checked before its data is read; (array, its bytes)."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(
            member, max_header_size=MAX_HEADER_BYTES
        )
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(
            member, max_header_size=MAX_HEADER_BYTES
        )
    else:
        raise InvalidSpecError(name, f"has an unknown .npy format version {version}")
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise InvalidSpecError(
            name, f"holds {dtype} values; only plain-data numeric arrays are accepted (no pickles)"
        )
    if len(shape) not in dims:
        allowed = " or ".join(f"{d}-D" for d in dims)
        raise InvalidSpecError(name, f"must be {allowed}, got {len(shape)}-D")
    size = math.prod(shape) * dtype.itemsize
    if budget is not None and size > budget:
        raise ResourceExhaustedError(
            f"{name} declares {size} bytes of data ({shape} {dtype}), past the "
            f"{limit}-byte dataset limit (counted as the arrays sit in memory)"
        )
    flat = np.empty(math.prod(shape), dtype=dtype)  # within the budget: allocate it
    view, got = memoryview(flat).cast("B"), 0
    while got < size:
        n = member.readinto(view[got:])
        if not n:
            raise InvalidSpecError(
                name, f"declares {shape} {dtype} ({size} bytes) but holds only {got} bytes"
            )
        got += n
    if member.read(1):
        raise InvalidSpecError(name, f"holds more data than its header declares ({shape})")
    return flat.reshape(shape, order="F" if fortran else "C"), size


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 120 else text[:120] + "…"
