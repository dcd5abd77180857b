"""`bptrain_jobs{state}`: how many jobs are in each state, asked of the job store at scrape time.

Counting on each scrape cannot drift from the store, whichever code path moved a job
(a monitor, a cancel, a restarted server failing its orphans). The jobs service hands
over the counting (`JobStore.count_by_state`), so metrics never imports the jobs service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # for the type checker only: at run time metrics imports nothing of jobs
    from services.jobs.records import JobState

NAME = "bptrain_jobs"
HELP = "Jobs in the store, by state."

# {state: count} for every job state, e.g. JobStore.count_by_state.
CountByState = Callable[[], Mapping["JobState", int]]


class JobStateCollector(Collector):
    """Collects `bptrain_jobs{state}` from `count_by_state()`, called on each scrape."""

    def __init__(self, count_by_state: CountByState, *, name: str = NAME, help: str = HELP) -> None:
        self.count_by_state = count_by_state
        self.name = name
        self.help = help

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.help, labels=["state"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.help, labels=["state"])
        for state, count in self.count_by_state().items():
            family.add_metric([state.value], count)
        yield family
