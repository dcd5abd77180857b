"""JobStore: jobs and metric points in one SQLite file, paged listing, replace-on-rewrite."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.errors import InvalidSpecError, NotFoundError
from services.jobs.records import JobRecord, JobState, MetricPoint
from services.jobs.spec import DatasetSpec, JobSpec, LayerSpec
from services.jobs.store import JobStore

SPEC = JobSpec(
    name="digits",
    layers=(LayerSpec(units=32, activation="relu"), LayerSpec(units=10, activation="identity")),
    dataset=DatasetSpec(name="digits", validation_fraction=0.2),
    batch_size=16,
    steps=40,
    seed=3,
)


def make_record(job_id: str, created_at: float = 100.0, **changes) -> JobRecord:
    return JobRecord(job_id=job_id, spec=SPEC, created_at=created_at, **changes)


def make_point(step: int, loss: float = 1.0, **changes) -> MetricPoint:
    fields = {
        "step": step,
        "epoch": 0,
        "loss": loss,
        "samples_per_second": 500.0,
        "learning_rate": 0.01,
        "elapsed_seconds": 0.1 * step,
        "gradient_norms": (0.5, 0.25),
    }
    return MetricPoint(**{**fields, **changes})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(tmp_path / "jobs.db")
    yield store
    store.close()


@pytest.fixture
def five_jobs(store: JobStore) -> list[str]:
    """job-0 .. job-4, created in that order (job-4 is the newest)."""
    ids = [f"job-{i}" for i in range(5)]
    for i, job_id in enumerate(ids):
        store.create(make_record(job_id, created_at=100.0 + i))
    return ids


# --- create, get, update -------------------------------------------------------------------


def test_created_job_reads_back_equal(store: JobStore) -> None:
    record = make_record("job-a", created_at=1_700_000_000.125)

    store.create(record)
    stored = store.get("job-a")

    assert stored == record
    assert stored.spec == SPEC
    assert stored.state is JobState.QUEUED
    assert stored.latest is None
    assert stored.step == 0


def test_records_of_one_stored_spec_share_one_parsed_spec_and_others_differ(
    store: JobStore,
) -> None:
    other = dataclasses.replace(SPEC, seed=4)
    store.create(make_record("job-a"))
    store.create(make_record("job-b"))
    store.create(JobRecord(job_id="job-c", spec=other, created_at=101.0))

    a, b, c = (store.get(job_id).spec for job_id in ("job-a", "job-b", "job-c"))
    listed = {record.job_id: record.spec for record in store.list()[0]}

    assert a is b is listed["job-a"] is listed["job-b"]  # parsed once, shared
    assert c == other and c is not a and listed["job-c"] is c
    with pytest.raises(dataclasses.FrozenInstanceError):  # so sharing it is safe
        a.seed = 5  # type: ignore[misc]


def test_a_job_read_again_before_any_write_is_the_record_read_before(store: JobStore) -> None:
    store.create(make_record("job-a"))
    store.create(make_record("job-b"))
    first = store.get("job-a")
    assert store.get("job-a") is first  # nothing written since: not read again

    store.add_metrics("job-b", [make_point(1)])  # any write to the file
    assert store.get("job-a") is not first
    assert store.get("job-a") == first
    store.update("job-a", state=JobState.RUNNING)
    assert store.get("job-a").state is JobState.RUNNING
    store.add_metrics("job-a", [make_point(1), make_point(2, loss=0.5)])
    assert (store.get("job-a").step, store.get("job-a").latest.loss) == (2, 0.5)


def test_a_write_by_another_connection_is_seen_by_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    reader, writer = JobStore(path), JobStore(path)  # as if in two processes
    try:
        writer.create(make_record("job-a"))
        assert reader.get("job-a").state is JobState.QUEUED
        writer.update("job-a", state=JobState.SUCCEEDED, reason="done")
        assert (reader.get("job-a").state, reader.get("job-a").reason) == (
            JobState.SUCCEEDED,
            "done",
        )
    finally:
        reader.close()
        writer.close()


def test_a_read_does_not_wait_for_a_write_in_progress(store: JobStore) -> None:
    store.create(make_record("job-a"))
    read: list[JobRecord] = []
    with store._lock:  # a writer holding the write connection (a long transaction)
        reader = threading.Thread(target=lambda: read.append(store.get("job-a")))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "the read waited for the writer"
    assert read[0].job_id == "job-a"


def test_a_threads_read_connection_goes_with_the_thread_and_close_ends_reads(
    store: JobStore,
) -> None:
    store.create(make_record("job-a"))
    workers = [threading.Thread(target=store.get, args=("job-a",)) for _ in range(3)]
    for worker in workers:
        worker.start()
        worker.join()
    gc.collect()
    assert len(store._readers) == 0  # no connection left behind by the ended threads

    assert store.get("job-a").job_id == "job-a"  # this thread's own
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.get("job-a")  # its connection was closed with the store
    after_close: list[BaseException] = []
    worker = threading.Thread(target=lambda: _expect_error(store, after_close))
    worker.start()
    worker.join()
    assert isinstance(after_close[0], sqlite3.ProgrammingError)  # a new thread gets none


def _expect_error(store: JobStore, errors: list[BaseException]) -> None:
    try:
        store.get("job-a")
    except BaseException as error:  # handed to the test thread
        errors.append(error)


def test_store_creates_missing_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.db"

    store = JobStore(path)
    store.create(make_record("job-a"))
    store.close()

    assert path.is_file()


def test_get_unknown_job_raises_not_found(store: JobStore) -> None:
    store.create(make_record("job-a"))

    with pytest.raises(NotFoundError, match="job-b"):
        store.get("job-b")


def test_creating_a_job_id_twice_fails_and_keeps_the_first(store: JobStore) -> None:
    store.create(make_record("job-a", created_at=1.0))

    with pytest.raises(Exception, match="UNIQUE"):
        store.create(make_record("job-a", created_at=2.0))

    assert store.get("job-a").created_at == 1.0


def test_update_sets_the_given_fields_only(store: JobStore) -> None:
    store.create(make_record("job-a"))

    store.update("job-a", state=JobState.RUNNING, started_at=101.0, total_steps=40)
    store.update("job-a", weights_path="/w/job-a.npz")

    stored = store.get("job-a")
    assert stored.state is JobState.RUNNING
    assert stored.started_at == 101.0
    assert stored.total_steps == 40
    assert stored.weights_path == "/w/job-a.npz"
    assert stored.finished_at is None
    assert stored.reason == ""


def test_update_to_a_terminal_state_with_reason(store: JobStore) -> None:
    store.create(make_record("job-a"))

    store.update("job-a", state=JobState.FAILED, reason="worker died", finished_at=120.0)

    stored = store.get("job-a")
    assert stored.state is JobState.FAILED
    assert stored.is_finished
    assert (stored.reason, stored.finished_at) == ("worker died", 120.0)


def test_update_of_an_unknown_field_is_rejected_and_changes_nothing(store: JobStore) -> None:
    store.create(make_record("job-a"))

    with pytest.raises(ValueError, match="spec_json"):
        store.update("job-a", state=JobState.RUNNING, spec_json="{}")

    stored = store.get("job-a")
    assert stored.state is JobState.QUEUED
    assert stored.spec == SPEC


def test_update_of_an_unknown_job_raises_not_found(store: JobStore) -> None:
    with pytest.raises(NotFoundError, match="job-x"):
        store.update("job-x", state=JobState.RUNNING)


# --- list ----------------------------------------------------------------------------------


def test_list_is_newest_first(store: JobStore, five_jobs: list[str]) -> None:
    records, token = store.list()

    assert [r.job_id for r in records] == five_jobs[::-1]
    assert token == ""


def test_pages_of_two_cover_each_job_once_newest_first(
    store: JobStore, five_jobs: list[str]
) -> None:
    first, token1 = store.list(limit=2)
    second, token2 = store.list(limit=2, page_token=token1)
    third, token3 = store.list(limit=2, page_token=token2)

    assert [r.job_id for r in first] == ["job-4", "job-3"]
    assert [r.job_id for r in second] == ["job-2", "job-1"]
    assert [r.job_id for r in third] == ["job-0"]
    assert token1 and token2
    assert token3 == ""


def test_a_page_that_ends_exactly_at_the_last_job_has_no_next_token(
    store: JobStore, five_jobs: list[str]
) -> None:
    records, token = store.list(limit=5)

    assert len(records) == 5
    assert token == ""


def test_jobs_created_after_a_token_do_not_shift_the_next_page(
    store: JobStore, five_jobs: list[str]
) -> None:
    _, token = store.list(limit=2)
    store.create(make_record("job-5", created_at=200.0))

    second, _ = store.list(limit=2, page_token=token)

    assert [r.job_id for r in second] == ["job-2", "job-1"]


def test_state_filter_lists_only_that_state_and_pages_within_it(
    store: JobStore, five_jobs: list[str]
) -> None:
    for job_id in ("job-0", "job-2", "job-3"):
        store.update(job_id, state=JobState.SUCCEEDED)

    succeeded, _ = store.list(state=JobState.SUCCEEDED)
    queued, _ = store.list(state=JobState.QUEUED)
    first, token = store.list(state=JobState.SUCCEEDED, limit=2)
    rest, last_token = store.list(state=JobState.SUCCEEDED, limit=2, page_token=token)

    assert [r.job_id for r in succeeded] == ["job-3", "job-2", "job-0"]
    assert [r.job_id for r in queued] == ["job-4", "job-1"]
    assert [r.job_id for r in first + rest] == ["job-3", "job-2", "job-0"]
    assert last_token == ""
    assert store.list(state=JobState.CANCELLED) == ([], "")


@pytest.mark.parametrize("token", ["garbage", "1.5", "0x10"])
def test_a_token_the_server_did_not_give_is_invalid(
    store: JobStore, five_jobs: list[str], token: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        store.list(page_token=token)

    assert caught.value.field == "page_token"
    assert "page_token" in str(caught.value)


def test_ids_in_states_lists_oldest_first(store: JobStore, five_jobs: list[str]) -> None:
    store.update("job-1", state=JobState.RUNNING)
    store.update("job-3", state=JobState.SUCCEEDED)

    unfinished = store.ids_in_states((JobState.QUEUED, JobState.RUNNING))

    assert unfinished == ["job-0", "job-1", "job-2", "job-4"]


# --- metrics -------------------------------------------------------------------------------


def test_metrics_after_returns_points_past_the_cursor_in_step_order(store: JobStore) -> None:
    store.create(make_record("job-a"))
    store.add_metrics("job-a", [make_point(3), make_point(1)])
    store.add_metrics("job-a", [make_point(2), make_point(4)])

    assert [p.step for p in store.metrics_after("job-a", 0)] == [1, 2, 3, 4]
    assert [p.step for p in store.metrics_after("job-a", 2)] == [3, 4]
    assert store.metrics_after("job-a", 4) == []
    assert [p.step for p in store.metrics_after("job-a", 0, limit=2)] == [1, 2]


def test_metrics_round_trip_every_field(store: JobStore) -> None:
    store.create(make_record("job-a"))
    point = make_point(1, loss=0.5, validation_loss=0.75, validation_accuracy=0.8)

    store.add_metrics("job-a", [point])

    assert store.metrics_after("job-a", 0) == [point]
    assert isinstance(store.metrics_after("job-a", 0)[0].gradient_norms, tuple)


def test_metrics_are_kept_per_job(store: JobStore) -> None:
    store.create(make_record("job-a"))
    store.create(make_record("job-b"))
    store.add_metrics("job-a", [make_point(1), make_point(2)])
    store.add_metrics("job-b", [make_point(1, loss=9.0)])

    assert [p.loss for p in store.metrics_after("job-b", 0)] == [9.0]
    assert len(store.metrics_after("job-a", 0)) == 2


def test_writing_a_step_again_replaces_it(store: JobStore) -> None:
    store.create(make_record("job-a"))
    store.add_metrics("job-a", [make_point(1, loss=2.0), make_point(2, loss=1.5)])

    store.add_metrics("job-a", [make_point(2, loss=1.25)])

    points = store.metrics_after("job-a", 0)
    assert [(p.step, p.loss) for p in points] == [(1, 2.0), (2, 1.25)]


def test_a_metrics_history_has_the_steps_up_to_a_bound_that_hold_the_metric(
    store: JobStore,
) -> None:
    store.create(make_record("job-a"))
    store.create(make_record("job-b"))
    evaluated = {"validation_loss": 0.5, "validation_accuracy": 0.75}
    store.add_metrics("job-a", [make_point(s, loss=1.0 / s) for s in (1, 3, 5)])
    store.add_metrics("job-a", [make_point(s, loss=1.0 / s, **evaluated) for s in (2, 4, 6)])
    store.add_metrics("job-b", [make_point(1, loss=9.0, **evaluated)])

    assert store.metric_history("job-a", "loss", 4) == [(s, 1.0 / s) for s in (1, 2, 3, 4)]
    assert store.metric_history("job-a", "validation_accuracy", 5) == [(2, 0.75), (4, 0.75)]
    assert store.metric_history("job-a", "validation_loss", 0) == []
    assert store.metric_history("job-c", "loss", 10) == []


def test_a_metrics_history_reads_points_sqlite_cannot_parse(store: JobStore) -> None:
    store.create(make_record("job-a"))  # Python's json writes Infinity, which SQLite refuses
    store.add_metrics("job-a", [make_point(1, validation_loss=math.inf), make_point(2)])

    assert store.metric_history("job-a", "validation_loss", 2) == [(1, math.inf)]
    assert store.metric_history("job-a", "loss", 2) == [(1, 1.0), (2, 1.0)]


def test_a_metrics_history_of_no_point_field_is_refused(store: JobStore) -> None:
    with pytest.raises(ValueError, match="no field 'accuracy'"):
        store.metric_history("job-a", "accuracy", 2)


def test_record_carries_the_latest_point_and_its_step(store: JobStore) -> None:
    store.create(make_record("job-a"))
    store.add_metrics("job-a", [make_point(5, loss=0.5), make_point(2, loss=0.9)])

    stored = store.get("job-a")
    listed, _ = store.list()

    assert stored.step == 5
    assert stored.latest == make_point(5, loss=0.5)
    assert listed[0].latest == make_point(5, loss=0.5)
    assert listed[0].step == 5


def test_a_failed_metrics_batch_stores_none_of_it_and_the_store_keeps_working(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.create(make_record("job-a"))
    unserializable = make_point(2, loss=np.float32(0.5))  # json cannot write float32

    with pytest.raises(TypeError):
        store.add_metrics("job-a", [make_point(1), unserializable])
    store.add_metrics("job-a", [make_point(3)])
    store.update("job-a", state=JobState.RUNNING)
    store.close()

    reopened = JobStore(tmp_path / "jobs.db")
    assert [p.step for p in reopened.metrics_after("job-a", 0)] == [3]
    assert reopened.get("job-a").state is JobState.RUNNING
    reopened.close()


# --- persistence ---------------------------------------------------------------------------


def test_jobs_and_metrics_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    store.create(make_record("job-a", created_at=10.0))
    store.create(make_record("job-b", created_at=11.0))
    store.update("job-a", state=JobState.SUCCEEDED, finished_at=20.0, total_steps=2)
    store.add_metrics("job-a", [make_point(1), make_point(2, loss=0.25)])
    store.close()

    reopened = JobStore(path)
    stored = reopened.get("job-a")
    listed, _ = reopened.list()
    reopened.close()

    assert stored.state is JobState.SUCCEEDED
    assert (stored.finished_at, stored.total_steps, stored.step) == (20.0, 2, 2)
    assert stored.latest == make_point(2, loss=0.25)
    assert stored.spec == SPEC
    assert [r.job_id for r in listed] == ["job-b", "job-a"]


def test_new_jobs_after_reopening_are_listed_first(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    store.create(make_record("job-old"))
    store.close()

    reopened = JobStore(path)
    reopened.create(make_record("job-new"))
    listed, _ = reopened.list()
    reopened.close()

    assert [r.job_id for r in listed] == ["job-new", "job-old"]


def test_a_store_file_from_the_first_release_gains_the_new_columns(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,"
        " state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', spec_json TEXT NOT NULL,"
        " created_at REAL NOT NULL, started_at REAL, finished_at REAL,"
        " total_steps INTEGER NOT NULL DEFAULT 0, weights_path TEXT NOT NULL DEFAULT '');"
    )
    old.close()
    store = JobStore(path)
    assert store.find_submission("anything", owner="local") is None
    store.close()


def test_a_point_stored_before_clock_lead_max_existed_reads_back_with_zero(tmp_path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    store.create(make_record("job-a"))
    store.close()
    stored = dataclasses.asdict(make_point(1, staleness_max=2))
    del stored["clock_lead_max"]  # a point written by an earlier release
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO metrics VALUES ('job-a', 1, ?)", (json.dumps(stored),))

    store = JobStore(path)
    assert store.metrics_after("job-a", 0) == [make_point(1, staleness_max=2)]
    store.close()
