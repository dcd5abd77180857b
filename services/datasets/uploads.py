"""Uploaded datasets: received in chunks, checked, stored once by sha256.

A dataset file is a numpy .npz holding X: (N, D) float and y: (N,) integer class
labels or (N, K) float regression targets. Its arrays' headers are checked before
their data is read (`npz_file`: plain numeric dtypes, shapes, declared bytes within the
dataset limit, no pickles), then their values (finite, labels, rows), and only then is
the file renamed into place: a bad, truncated or over-quota upload leaves nothing behind.

A dataset belongs to the principal that uploaded it (services/tenancy.py): each owner
has its own entry (name, time, quota charge) while the bytes are stored once, so
uploading bytes another principal also holds reveals nothing about them.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.datasets.arrays import check_arrays
from services.datasets.npz_file import read_arrays
from services.errors import InvalidSpecError, NotFoundError, ResourceExhaustedError, quoted
from services.tenancy import LOCAL, Principal

MAX_NAME_LENGTH = 200

_COLUMNS = """
    dataset_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    task        TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    features    INTEGER NOT NULL,
    outputs     INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    owner       TEXT NOT NULL,
    PRIMARY KEY (owner, dataset_id)
"""
_SCHEMA = f"CREATE TABLE IF NOT EXISTS datasets ({_COLUMNS});"
# A table from before owners (keyed by dataset_id alone) is rebuilt once; its datasets
# belong to "local" (LOCAL: the single user without tokens; with tokens, where "local" is
# reserved, admins see them).
_ADD_OWNERS = f"""
BEGIN IMMEDIATE;
CREATE TABLE datasets_with_owners ({_COLUMNS});
INSERT INTO datasets_with_owners
    SELECT dataset_id, name, task, rows, features, outputs, size_bytes, created_at, '{LOCAL.name}'
    FROM datasets;
DROP TABLE datasets;
ALTER TABLE datasets_with_owners RENAME TO datasets;
COMMIT;
"""


def unknown_dataset(dataset_id: str) -> NotFoundError:
    """The one answer for a dataset id that does not exist or that the caller may not see."""
    return NotFoundError(f"unknown dataset {quoted(dataset_id)}")


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """What the service knows of an uploaded dataset. `dataset_id` is its file's sha256."""

    dataset_id: str
    name: str
    task: str  # "classification" | "regression"
    rows: int
    features: int  # D
    outputs: int  # C classes, or K targets
    size_bytes: int
    created_at: float
    owner: str = LOCAL.name  # the principal that uploaded it


class Upload:
    """One upload in progress: bytes go to a temporary file and are hashed on the way."""

    def __init__(self, registry: DatasetRegistry, name: str, principal: Principal) -> None:
        self.registry = registry
        self.name = name
        self.principal = principal
        self.size = 0
        self._held = registry.held_bytes(principal.name)  # checked again when stored
        self._digest = hashlib.sha256()
        self._path = registry.directory / f".upload-{uuid.uuid4().hex}"
        self._file = open(self._path, "wb")  # noqa: SIM115 (closed in finish/discard)

    def write(self, chunk: bytes) -> None:
        """Append a chunk. Past the dataset limit or the principal's dataset_bytes quota
        (counting what it holds now, so even bytes it already holds are refused there),
        the received bytes are removed and ResourceExhaustedError raised."""
        self.size += len(chunk)
        if self.size > self.registry.max_bytes:
            self.discard()
            raise ResourceExhaustedError(
                f"the upload is over the {self.registry.max_bytes}-byte dataset limit"
            )
        if self.registry.is_over_quota(self._held + self.size):
            self.discard()
            raise self.registry.quota_error(self.principal, self._held)
        self._digest.update(chunk)
        self._file.write(chunk)

    def finish(self, sha256: str) -> DatasetInfo:
        """Check the digest and the data, then store it; returns the dataset."""
        self._file.close()
        if sha256.lower() != self._digest.hexdigest():
            raise InvalidSpecError(
                "sha256", "does not match the bytes received (corrupted or truncated upload)"
            )
        X, y = read_arrays(self._path, max_bytes=self.registry.max_bytes)
        task, outputs = check_arrays(X, y)
        info = DatasetInfo(
            dataset_id=self._digest.hexdigest(),
            name=self.name,
            task=task,
            rows=int(X.shape[0]),
            features=int(X.shape[1]),
            outputs=outputs,
            size_bytes=self.size,
            created_at=time.time(),
            owner=self.principal.name,
        )
        return self.registry._store(self._path, info, self.principal)

    def discard(self) -> None:
        """Remove what was received (no-op once `finish` stored it)."""
        self._file.close()
        self._path.unlink(missing_ok=True)


class DatasetRegistry:
    """Uploaded datasets: files `DIRECTORY/<sha256>.npz`, one entry per owner in SQLite.

    A user sees only its own entries; an admin sees every entry. `max_bytes` bounds one
    upload; `quota_bytes` (None: unlimited) bounds the bytes of one principal's entries.
    """

    def __init__(
        self, directory: Path, database: Path, *, max_bytes: int, quota_bytes: int | None = None
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError(f"quota_bytes must be >= 0 or None, got {quota_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.quota_bytes = quota_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(datasets)")}
            if columns and "owner" not in columns:
                self._db.executescript(_ADD_OWNERS)
            self._db.executescript(_SCHEMA)
        for leftover in self.directory.glob(".upload-*"):  # from a server that stopped mid-upload
            leftover.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def begin(self, name: str, *, principal: Principal) -> Upload:
        """An upload that `principal` will own."""
        if not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise InvalidSpecError("name", f"must be 1 to {MAX_NAME_LENGTH} characters")
        return Upload(self, name, principal)

    def path(self, dataset_id: str) -> Path:
        return self.directory / f"{dataset_id}.npz"

    def get(self, dataset_id: str, *, principal: Principal) -> DatasetInfo:
        """The principal's entry for `dataset_id`; for an admin without one, the oldest
        entry of anyone's. NotFoundError, the same as for an unknown id, otherwise."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM datasets WHERE dataset_id = ? AND (owner = ? OR ?) "
                "ORDER BY owner = ? DESC, created_at LIMIT 1",
                (dataset_id, principal.name, principal.is_admin, principal.name),
            ).fetchone()
        if row is None:
            raise unknown_dataset(dataset_id)
        return DatasetInfo(**dict(row))

    def list(self, *, principal: Principal) -> list[DatasetInfo]:
        """The principal's datasets, newest first; an admin's list holds everyone's."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM datasets WHERE owner = ? OR ? ORDER BY created_at DESC",
                (principal.name, principal.is_admin),
            ).fetchall()
        return [DatasetInfo(**dict(row)) for row in rows]

    def owners(self, dataset_id: str) -> set[str]:
        """Every principal holding an entry for `dataset_id` (for the service, not a client)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner FROM datasets WHERE dataset_id = ?", (dataset_id,)
            ).fetchall()
        return {row["owner"] for row in rows}

    def delete(self, dataset_id: str, *, principal: Principal) -> DatasetInfo:
        """Remove the principal's entry (an admin's delete removes every owner's); the
        file goes with the last entry. Returns the entry `get` gave."""
        info = self.get(dataset_id, principal=principal)
        with self._lock:
            self._db.execute(
                "DELETE FROM datasets WHERE dataset_id = ? AND (owner = ? OR ?)",
                (dataset_id, principal.name, principal.is_admin),
            )
            remaining = self._db.execute(
                "SELECT 1 FROM datasets WHERE dataset_id = ? LIMIT 1", (dataset_id,)
            ).fetchone()
            if remaining is None:
                self.path(dataset_id).unlink(missing_ok=True)
        return info

    def held_bytes(self, owner: str) -> int:
        """The bytes of `owner`'s datasets, as its dataset_bytes quota counts them."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(size_bytes), 0) AS held FROM datasets WHERE owner = ?",
                (owner,),
            ).fetchone()
        return int(row["held"])

    def is_over_quota(self, held_bytes: int) -> bool:
        return self.quota_bytes is not None and held_bytes > self.quota_bytes

    def quota_error(self, principal: Principal, held_bytes: int) -> ResourceExhaustedError:
        return ResourceExhaustedError(
            f"principal {principal.name} holds {held_bytes} bytes of datasets; this upload "
            f"would take it past its dataset_bytes quota of {self.quota_bytes} bytes"
        )

    def _store(self, received: Path, info: DatasetInfo, principal: Principal) -> DatasetInfo:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM datasets WHERE dataset_id = ? AND owner = ?",
                (info.dataset_id, principal.name),
            ).fetchone()
            if row is not None:  # the same bytes again from their owner: one entry
                received.unlink(missing_ok=True)
                return DatasetInfo(**dict(row))
            held = self._db.execute(
                "SELECT COALESCE(SUM(size_bytes), 0) FROM datasets WHERE owner = ?",
                (principal.name,),
            ).fetchone()[0]
            if self.is_over_quota(held + info.size_bytes):  # another upload finished first
                received.unlink(missing_ok=True)
                raise self.quota_error(principal, held)
            # Another owner's copy holds the same bytes: replacing it is atomic and harmless.
            os.replace(received, self.path(info.dataset_id))
            self._db.execute(
                "INSERT INTO datasets (dataset_id, name, task, rows, features, outputs, "
                "size_bytes, created_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.dataset_id,
                    info.name,
                    info.task,
                    info.rows,
                    info.features,
                    info.outputs,
                    info.size_bytes,
                    info.created_at,
                    info.owner,
                ),
            )
        return info
