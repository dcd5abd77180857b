"""SharedArrays: a few NumPy arrays in one memory-mapped file under /dev/shm that the
processes of one node share (the colocated workers' shared memory: bsp's G and θ,
asp/ssp's parameter-server state).

The file's pages are reserved when it is made, so a full tmpfs is a `SharedMemoryFull`
error at set-up rather than a SIGBUS mid-step.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

_SHM_DIR = Path("/dev/shm")


class SharedMemoryFull(OSError):
    """The node's shared-memory file system has no room for the arrays (a container's
    small /dev/shm, say): the caller uses another transport."""


class SharedArrays:
    """A few arrays in one memory-mapped file that processes on one node share.

    The creator makes the file; the others open it by name; once every process has it
    mapped, `unlink` removes the name (the mapping lives on until the last one closes),
    so a killed job leaves nothing behind in /dev/shm.
    """

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], str]], *, create: bool):
        self.path = path
        offsets, total = {}, 0
        for name, (shape, dtype) in specs.items():
            total = -(-total // 64) * 64  # every array 64-byte aligned
            offsets[name] = total
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        total = max(total, 1)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, total)
                try:  # reserve the pages now: a full tmpfs is an error here, not a SIGBUS later
                    os.posix_fallocate(fd, 0, total)
                except OSError as error:
                    path.unlink(missing_ok=True)
                    size = f"{total / 1e6:.1f} MB"
                    raise SharedMemoryFull(
                        f"no room for {size} of shared arrays in {path.parent}: {error}"
                    ) from None
            self._map = mmap.mmap(fd, total)
        finally:
            os.close(fd)
        self.arrays = {
            name: np.ndarray(shape, dtype=dtype, buffer=self._map, offset=offsets[name])
            for name, (shape, dtype) in specs.items()
        }

    @staticmethod
    def path_for(tag: str) -> Path:
        """The file's path for a tag that the processes agree on (unique per mesh)."""
        directory = _SHM_DIR if _SHM_DIR.is_dir() else Path(tempfile.gettempdir())
        return directory / f"bptrain-{tag}"

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.arrays.clear()
        with contextlib.suppress(BufferError):  # a view still alive: freed at exit
            self._map.close()
