"""SQLite store of sweeps, their trials and their events (the jobs' file, tables of its own).

Optuna keeps the search's own state (trials asked, values reported, rungs) in its
storage (services/sweeps/search.py); this store holds what the API shows and what the
driver decided, written before it acts on it, so a restarted server repeats nothing.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from services.errors import NotFoundError, quoted
from services.jobs.records import JobState
from services.jobs.store import page_before
from services.sweeps.records import EventKind, SweepEvent, SweepRecord, TrialRecord
from services.sweeps.spec import SweepSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id       TEXT NOT NULL UNIQUE,
    owner          TEXT NOT NULL,
    owner_is_admin INTEGER NOT NULL,
    state          TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    spec_json      TEXT NOT NULL,
    created_at     REAL NOT NULL,
    finished_at    REAL,
    submission_id  TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS sweeps_by_owner_submission
    ON sweeps (owner, submission_id) WHERE submission_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sweeps_by_owner ON sweeps (owner, seq);
CREATE TABLE IF NOT EXISTS sweep_trials (
    sweep_id  TEXT NOT NULL REFERENCES sweeps (sweep_id),
    number    INTEGER NOT NULL,
    trial     TEXT NOT NULL,
    PRIMARY KEY (sweep_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sweep_events (
    sweep_id  TEXT NOT NULL REFERENCES sweeps (sweep_id),
    seq       INTEGER NOT NULL,
    event     TEXT NOT NULL,
    PRIMARY KEY (sweep_id, seq)
) WITHOUT ROWID;
"""


def unknown_sweep(sweep_id: str) -> NotFoundError:
    """The one answer for a sweep id that does not exist or that the caller may not see."""
    return NotFoundError(f"unknown sweep {quoted(sweep_id)}")


class SweepStore:
    """Sweeps, trials and events in one SQLite file (WAL, safe across threads)."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, SweepSpec] = {}  # by sweep id (_spec)
        self._db = sqlite3.connect(Path(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, record: SweepRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sweeps (sweep_id, owner, owner_is_admin, state, spec_json, "
                "created_at, submission_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.sweep_id,
                    record.owner,
                    int(record.owner_is_admin),
                    record.state.value,
                    json.dumps(record.spec.to_dict()),
                    record.created_at,
                    record.submission_id or None,
                ),
            )

    def finish(self, sweep_id: str, state: JobState, reason: str, at: float) -> bool:
        """Record the sweep's end, unless it has ended already (then False)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE sweeps SET state = ?, reason = ?, finished_at = ? "
                "WHERE sweep_id = ? AND state = ?",
                (state.value, reason, at, sweep_id, JobState.RUNNING.value),
            )
        return cursor.rowcount == 1

    def request_cancel(self, sweep_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE sweeps SET cancel_requested = 1 WHERE sweep_id = ?", (sweep_id,)
            )

    def get(self, sweep_id: str) -> SweepRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM sweeps WHERE sweep_id = ?", (sweep_id,)
            ).fetchone()
            if row is None:
                raise unknown_sweep(sweep_id)
            return self._record(row)

    def find_submission(self, submission_id: str, *, owner: str) -> SweepRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM sweeps WHERE owner = ? AND submission_id = ?",
                (owner, submission_id),
            ).fetchone()
            return None if row is None else self._record(row)

    def list(
        self, *, owner: str | None, state: JobState | None, limit: int, page_token: str
    ) -> tuple[list[SweepRecord], str]:
        """Newest first; the token is the last listed sweep's sequence number."""
        before = page_before(page_token)
        before = 2**63 - 1 if before is None else before
        query = "SELECT * FROM sweeps WHERE seq < ?"
        args: list[Any] = [before]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        if state is not None:
            query += " AND state = ?"
            args.append(state.value)
        query += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
            records = [self._record(row) for row in rows[:limit]]
        token = str(rows[limit - 1]["seq"]) if len(rows) > limit else ""
        return records, token

    def ids_running(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sweep_id FROM sweeps WHERE state = ? ORDER BY seq",
                (JobState.RUNNING.value,),
            ).fetchall()
        return [row["sweep_id"] for row in rows]

    def count_by_state(self) -> dict[JobState, int]:
        """{state: how many sweeps are in it} for every state (0 where none)."""
        counts = dict.fromkeys(JobState, 0)
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM sweeps GROUP BY state")
            counts.update({JobState(row["state"]): row["n"] for row in rows})
        return counts

    def put_trial(self, sweep_id: str, trial: TrialRecord) -> None:
        """Insert or replace the trial (by its number)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sweep_trials (sweep_id, number, trial) VALUES (?, ?, ?)",
                (sweep_id, trial.number, _trial_json(trial)),
            )

    def add_event(
        self, sweep_id: str, kind: EventKind, at: float, trial: TrialRecord, message: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sweep_events (sweep_id, seq, event) VALUES (?, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM sweep_events WHERE sweep_id = ?), ?)",
                (
                    sweep_id,
                    sweep_id,
                    json.dumps(
                        {
                            "kind": kind.value,
                            "at": at,
                            "trial": _trial_dict(trial),
                            "message": message,
                        }
                    ),
                ),
            )

    def events_after(self, sweep_id: str, after_seq: int, limit: int = 1000) -> list[SweepEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event FROM sweep_events WHERE sweep_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (sweep_id, after_seq, limit),
            ).fetchall()
        events = []
        for row in rows:
            data = json.loads(row["event"])
            events.append(
                SweepEvent(
                    seq=row["seq"],
                    kind=EventKind(data["kind"]),
                    at=data["at"],
                    trial=_trial(data["trial"]),
                    message=data["message"],
                )
            )
        return events

    def _spec(self, sweep_id: str, text: str) -> SweepSpec:
        """A sweep's spec, parsed and checked once: it never changes once stored, and
        building it validates the base job and every parameter's extremes (several
        JobSpecs), while the driver reads its sweeps many times a second."""
        spec = self._specs.get(sweep_id)
        if spec is None:
            spec = self._specs[sweep_id] = SweepSpec.from_dict(json.loads(text))
        return spec

    def _record(self, row: sqlite3.Row) -> SweepRecord:
        trials = self._db.execute(
            "SELECT trial FROM sweep_trials WHERE sweep_id = ? ORDER BY number",
            (row["sweep_id"],),
        ).fetchall()
        return SweepRecord(
            sweep_id=row["sweep_id"],
            spec=self._spec(row["sweep_id"], row["spec_json"]),
            owner=row["owner"],
            owner_is_admin=bool(row["owner_is_admin"]),
            state=JobState(row["state"]),
            reason=row["reason"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            submission_id=row["submission_id"] or "",
            cancel_requested=bool(row["cancel_requested"]),
            trials=tuple(_trial(json.loads(t["trial"])) for t in trials),
        )


def _trial_dict(trial: TrialRecord) -> dict[str, Any]:
    data = dataclasses.asdict(trial)
    data["state"] = trial.state.value if trial.state else None
    return data


def _trial_json(trial: TrialRecord) -> str:
    return json.dumps(_trial_dict(trial))


def _trial(data: dict[str, Any]) -> TrialRecord:
    state = data.pop("state")
    return TrialRecord(**data, state=JobState(state) if state else None)
