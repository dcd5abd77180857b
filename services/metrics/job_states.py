"""`bptrain_jobs{state}`: how many jobs are in each state, read from the store at scrape time.

Counting in SQLite on each scrape cannot drift from the store, whichever code path
moved a job (a monitor, a cancel, a restarted server failing its orphans).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.jobs.records import JobState

NAME = "bptrain_jobs"
HELP = "Jobs in the store, by state."


def count_jobs_by_state(database: Path) -> dict[JobState, int]:
    """{state: count} for every state (0 where none), from a read-only connection."""
    counts = dict.fromkeys(JobState, 0)
    if not database.exists():
        return counts
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    finally:
        connection.close()
    for state, count in rows:
        counts[JobState(state)] = count
    return counts


class JobStateCollector(Collector):
    """Collects `bptrain_jobs{state}` from the job store's SQLite file."""

    def __init__(self, database: Path) -> None:
        self.database = Path(database)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(NAME, HELP, labels=["state"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(NAME, HELP, labels=["state"])
        for state, count in count_jobs_by_state(self.database).items():
            family.add_metric([state.value], count)
        yield family
