"""SQLite store of jobs and their metric history (one file, WAL, safe across threads)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.errors import InvalidSpecError, NotFoundError, quoted
from services.jobs.records import JobRecord, JobState, MetricPoint
from services.jobs.spec import JobSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    spec_json    TEXT NOT NULL,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    total_steps  INTEGER NOT NULL DEFAULT 0,
    weights_path TEXT NOT NULL DEFAULT '',
    placement_json TEXT NOT NULL DEFAULT '[]',
    submission_id TEXT,
    runner       TEXT NOT NULL DEFAULT '',
    owner        TEXT NOT NULL DEFAULT 'local'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS metrics (
    job_id  TEXT NOT NULL REFERENCES jobs (job_id),
    step    INTEGER NOT NULL,
    point   TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
"""

_UPDATABLE = {
    "state",
    "reason",
    "started_at",
    "finished_at",
    "total_steps",
    "weights_path",
    "placement",
    "runner",
}
# Columns added after the first release: (table, column, declaration) for older files.
_ADDED_COLUMNS = (
    ("jobs", "placement_json", "TEXT NOT NULL DEFAULT '[]'"),
    ("jobs", "submission_id", "TEXT"),
    ("jobs", "runner", "TEXT NOT NULL DEFAULT ''"),
    # Jobs stored before owners belong to "local" (services/tenancy.py's LOCAL): the single
    # user of a server without tokens; with tokens (where "local" is reserved) admins see them.
    ("jobs", "owner", "TEXT NOT NULL DEFAULT 'local'"),
    ("jobs", "sweep_id", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "trial_number", "INTEGER NOT NULL DEFAULT 0"),
)
# Indexes on added columns, made once those columns exist. A submission id is unique
# per owner; the index that made it unique server-wide goes.
_ADDED_INDEXES = (
    "DROP INDEX IF EXISTS jobs_by_submission",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_owner_submission "
    "ON jobs (owner, submission_id) WHERE submission_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq)",
)


MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


def page_limit(page_size: int) -> int:
    """How many rows a page holds: `page_size` (0: the default), at most MAX_PAGE_SIZE."""
    if page_size < 0:
        raise InvalidSpecError("page_size", f"must be >= 0, got {page_size}")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_before(page_token: str) -> int | None:
    """The sequence number a page token names (None for the first page). A token is a
    row's sequence number: decimal digits that fit SQLite's int64."""
    is_token = page_token.isascii() and page_token.isdigit() and int(page_token) < 2**63
    if page_token and not is_token:
        raise InvalidSpecError("page_token", "is not a token this server gave")
    return int(page_token) if page_token else None


def unknown_job(job_id: str) -> NotFoundError:
    """The one answer for a job id that does not exist or that the caller may not see."""
    return NotFoundError(f"unknown job {quoted(job_id)}")


class _Reader:
    """A thread's read connection; held by that thread only (thread-local), so it is
    closed when the thread ends, or with the store. `records`: the jobs it read since the
    file last changed (`data_version`, SQLite's count of commits by other connections)."""

    __slots__ = ("__weakref__", "data_version", "db", "records")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.data_version = -1
        self.records: dict[str, JobRecord] = {}

    def unchanged_records(self) -> dict[str, JobRecord]:
        """`records`, emptied first if any connection committed since they were read
        (call inside the read transaction, before reading)."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self.data_version or len(self.records) >= RECORDS_KEPT:
            self.records.clear()
            self.data_version = version
        return self.records


SPEC_CACHE_SIZE = 256  # distinct stored specs kept parsed
RECORDS_KEPT = 256  # jobs a thread's reader keeps read until the file changes


@functools.lru_cache(maxsize=SPEC_CACHE_SIZE)
def stored_spec(spec_json: str) -> JobSpec:
    """A stored spec's text, parsed and validated once: a spec never changes once stored
    and a JobSpec is immutable, so every record of that text shares one. GetJob and each
    row of ListJobs read it again; parsing cost about 55 µs a record."""
    return JobSpec.from_dict(json.loads(spec_json))


class JobStore:
    """Jobs, specs and metric points in one SQLite file.

    A metric point is keyed by (job, step): writing a step again replaces it, so a
    step recomputed after a restore is shown once, with its newest value.

    Writes go through one connection under a lock. Reads of jobs and points use a
    connection of the reading thread's own, each read in one transaction: in WAL mode
    a reader sees the last commit and never waits for the writer, so a read is cheap
    enough to run on the API's event loop (GetJob does).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._local = threading.local()  # .reader: this thread's _Reader
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()  # live threads' readers
        self._readers_lock = threading.Lock()  # not the writer's: a read never waits for it
        self._closed = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
            for statement in _ADDED_INDEXES:
                self._db.execute(statement)

    def _add_missing_columns(self) -> None:
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            for reader in list(self._readers):
                reader.db.close()
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection, inside one read transaction (one snapshot)."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            with self._readers_lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("the job store is closed")
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.row_factory = sqlite3.Row
                reader = self._local.reader = _Reader(db)
                self._readers.add(reader)
        reader.db.execute("BEGIN")
        try:
            yield reader.db
        finally:
            reader.db.execute("COMMIT")

    def create(self, record: JobRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (job_id, owner, state, reason, spec_json, created_at, "
                "submission_id, sweep_id, trial_number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.owner,
                    record.state.value,
                    record.reason,
                    json.dumps(record.spec.to_dict()),
                    record.created_at,
                    record.submission_id or None,
                    record.sweep_id,
                    record.trial_number,
                ),
            )

    def update(self, job_id: str, **fields: Any) -> None:
        """Set some of state, reason, started_at, finished_at, total_steps, weights_path,
        placement, runner."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        if "placement" in fields:
            fields["placement_json"] = json.dumps(list(fields.pop("placement")))
        values = [v.value if isinstance(v, JobState) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values, job_id)
            )
        if cursor.rowcount == 0:
            raise unknown_job(job_id)

    def get(self, job_id: str) -> JobRecord:
        """The job as stored. A thread that reads a job again before anything is written
        to the file gets the record it read (records are immutable): a polled job costs
        one SQLite statement a read instead of two and a JSON parse, until the next
        write (a running job's points come a few times a second)."""
        with self._reading() as db:
            records = self._local.reader.unchanged_records()
            record = records.get(job_id)
            if record is not None:
                return record
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise unknown_job(job_id)
            record = records[job_id] = _record(db, row)
            return record

    def list(
        self,
        *,
        owner: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> tuple[list[JobRecord], str]:
        """Jobs newest first, of one `owner` or (None) everyone's; returns (page, token
        of the next page or "")."""
        before = page_before(page_token)
        clauses, args = [], []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if state is not None:
            clauses.append("state = ?")
            args.append(state.value)
        if before is not None:
            clauses.append("seq < ?")
            args.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit + 1)
            ).fetchall()
            records = [_record(db, row) for row in rows[:limit]]
        next_token = str(rows[limit - 1]["seq"]) if len(rows) > limit else ""
        return records, next_token

    def find_submission(self, submission_id: str, *, owner: str) -> JobRecord | None:
        """The job `owner` created with this idempotency key, if any."""
        with self._reading() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE owner = ? AND submission_id = ?", (owner, submission_id)
            ).fetchone()
            return _record(db, row) if row is not None else None

    def owners_in_states(self, states: tuple[JobState, ...]) -> dict[str, str]:
        """{job id: owner} of the jobs in `states`, oldest first."""
        marks = ", ".join("?" for _ in states)
        with self._reading() as db:
            rows = db.execute(
                f"SELECT job_id, owner FROM jobs WHERE state IN ({marks}) ORDER BY seq",
                [s.value for s in states],
            ).fetchall()
        return {row["job_id"]: row["owner"] for row in rows}

    def ids_in_states(self, states: tuple[JobState, ...]) -> list[str]:
        """Ids of the jobs in `states`, oldest first."""
        return list(self.owners_in_states(states))

    def count_by_state(self) -> dict[JobState, int]:
        """{state: how many jobs are in it} for every state (0 where none)."""
        counts = dict.fromkeys(JobState, 0)
        with self._reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        for state, count in rows:
            counts[JobState(state)] = count
        return counts

    def add_metrics(self, job_id: str, points: list[MetricPoint]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO metrics (job_id, step, point) VALUES (?, ?, ?)",
                    [(job_id, p.step, _point_json(p)) for p in points],
                )
            except BaseException:
                # Left open, the transaction would swallow every later write on this connection.
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def metrics_after(self, job_id: str, after_step: int, limit: int = 1000) -> list[MetricPoint]:
        """Stored points with step > after_step, in step order."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT point FROM metrics WHERE job_id = ? AND step > ? ORDER BY step LIMIT ?",
                (job_id, after_step, limit),
            ).fetchall()
        return [_point(row["point"]) for row in rows]

    def metric_history(self, job_id: str, name: str, at_most: int) -> list[tuple[int, float]]:
        """(step, value) of one MetricPoint field, `name`, for every stored step up to
        `at_most` where it has a value, in step order (a replacement runner's `stop_when`
        resumes from them). Read inside SQLite; a point whose JSON SQLite cannot read
        (a NaN or an infinity, which Python's json writes) is parsed here."""
        if name not in _POINT_FIELDS:
            raise ValueError(f"a metric point has no field {name!r}")
        with self._reading() as db:
            rows = db.execute(
                "SELECT step, CASE WHEN json_valid(point) THEN json_extract(point, ?) "
                "ELSE point END FROM metrics WHERE job_id = ? AND step <= ? ORDER BY step",
                (f"$.{name}", job_id, at_most),
            ).fetchall()
        history = []
        for step, value in rows:
            if isinstance(value, str):
                value = getattr(_point(value), name)
            if value is not None:
                history.append((int(step), float(value)))
        return history


def _record(db: sqlite3.Connection, row: sqlite3.Row) -> JobRecord:
    latest = db.execute(
        "SELECT point FROM metrics WHERE job_id = ? ORDER BY step DESC LIMIT 1",
        (row["job_id"],),
    ).fetchone()
    latest_point = _point(latest["point"]) if latest else None
    return JobRecord(
        job_id=row["job_id"],
        owner=row["owner"],
        spec=stored_spec(row["spec_json"]),
        state=JobState(row["state"]),
        reason=row["reason"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        total_steps=row["total_steps"],
        step=latest_point.step if latest_point else 0,
        weights_path=row["weights_path"],
        placement=tuple(json.loads(row["placement_json"])),
        submission_id=row["submission_id"] or "",
        runner=row["runner"],
        sweep_id=row["sweep_id"],
        trial_number=row["trial_number"],
        latest=latest_point,
    )


_POINT_FIELDS = tuple(f.name for f in dataclasses.fields(MetricPoint))


def _point_json(point: MetricPoint) -> str:
    """A point as stored: its fields as one JSON object (a flat dict: `dataclasses.asdict`
    deep-copies and took most of a point's 37 µs here)."""
    return json.dumps({name: getattr(point, name) for name in _POINT_FIELDS})


def _point(text: str) -> MetricPoint:
    data = json.loads(text)
    data["gradient_norms"] = tuple(data["gradient_norms"])
    return MetricPoint(**data)
