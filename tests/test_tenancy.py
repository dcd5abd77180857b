"""Principals: tokens name them, they own their jobs and datasets, another's ids answer as
unknown ones, admins see everything, and per-principal quotas refuse or hold back."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from bptrain.specfile import spec_from_dict
from services.api.convert import spec_from_proto
from services.datasets.uploads import DatasetInfo, DatasetRegistry
from services.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
    quoted,
)
from services.jobs.manager import JobManager, JobsConfig
from services.jobs.records import JobRecord, JobState
from services.jobs.spec import JobSpec
from services.jobs.store import JobStore
from services.tenancy import LOCAL, Principal, Quotas, parse_principals
from tests.conftest import digits_spec

ALICE = Principal("alice", is_admin=False)
BOB = Principal("bob", is_admin=False)
ROOT = Principal("root", is_admin=True)
TOKEN_A = "a" * 16
TOKEN_B = "b" * 32
UNREACHABLE_RAY = "ray.invalid:6379"  # never ready: jobs wait QUEUED, no Ray is needed


def job_spec(**changes: object) -> JobSpec:
    return spec_from_proto(spec_from_dict(digits_spec(**changes)))


def npz_bytes(seed: int = 0, rows: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez(buffer, X=rng.normal(size=(rows, 4)).astype(np.float32), y=np.arange(rows) % 3)
    return buffer.getvalue()


def upload(registry: DatasetRegistry, data: bytes, principal: Principal) -> DatasetInfo:
    """An upload as the servicer drives it: begin, chunks, digest, discard in the end."""
    pending = registry.begin("blobs", principal=principal)
    try:
        for start in range(0, len(data), 1000):
            pending.write(data[start : start + 1000])
        return pending.finish(hashlib.sha256(data).hexdigest())
    finally:
        pending.discard()


def uploaded_spec(dataset_id: str, lookup) -> JobSpec:
    data = digits_spec(dataset={"name": "uploaded", "dataset_id": dataset_id})
    data["layers"] = [{"units": 8, "activation": "relu"}, {"units": 3, "activation": "identity"}]
    return spec_from_proto(spec_from_dict(data), lookup)


def stored_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def unknown_message(kind: str, identifier: str) -> str:
    return f"unknown {kind} {quoted(identifier)}"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    """A manager whose Ray never answers, so every job waits QUEUED (no Ray needed)."""
    quotas = Quotas(queued_jobs=2, dataset_bytes=2 * len(npz_bytes()))
    manager = JobManager(JobsConfig(storage=tmp_path, quotas=quotas), ray_address=UNREACHABLE_RAY)
    yield manager
    manager.shutdown()


# --- tokens name principals -----------------------------------------------------------------


def test_named_and_bare_entries_map_tokens_to_principals() -> None:
    text = f"""
        # the team
        alice:user:{TOKEN_A}
        ops:admin:{TOKEN_B}, {"c" * 20}

        {"d" * 16},alice:user:{TOKEN_A}
    """
    assert parse_principals(text) == {
        TOKEN_A: ALICE,
        TOKEN_B: Principal("ops", is_admin=True),
        "c" * 20: Principal("admin", is_admin=True),  # a bare token: today's meaning
        "d" * 16: Principal("admin", is_admin=True),
    }
    assert parse_principals(f"{TOKEN_A},bob:user:{TOKEN_B}") == {
        TOKEN_A: Principal("admin", is_admin=True),
        TOKEN_B: BOB,
    }
    assert parse_principals("\n# nothing\n") == {}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (f"alice:root:{TOKEN_A}", "must be NAME:ROLE:TOKEN"),  # never an admin by typo
        (f"alice:{TOKEN_A}", "must be NAME:ROLE:TOKEN"),
        (f"al ice:user:{TOKEN_A}", "must be NAME:ROLE:TOKEN"),
        (f"{'n' * 65}:user:{TOKEN_A}", "must be NAME:ROLE:TOKEN"),
        (f"local:admin:{TOKEN_A}", "the name local is reserved"),
        ("alice:user:short-token", "16 to 256 characters"),
        ("short-token", "16 to 256 characters"),
        ("t" * 257, "16 to 256 characters"),
    ],
)
def test_a_bad_entry_is_refused_without_quoting_its_token(entry: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_principals(f"ops:admin:{TOKEN_B}\n{entry}")
    assert str(caught.value).startswith("tokens entry 2: ")
    assert problem in str(caught.value)
    assert TOKEN_A not in str(caught.value) and "short-token" not in str(caught.value)


def test_a_token_for_two_principals_or_a_name_with_two_roles_is_refused() -> None:
    with pytest.raises(ValueError, match="the same token names two principals"):
        parse_principals(f"alice:user:{TOKEN_A}\nbob:user:{TOKEN_A}")
    with pytest.raises(ValueError, match="principal alice is given both roles"):
        parse_principals(f"alice:user:{TOKEN_A}\nalice:admin:{TOKEN_B}")
    with pytest.raises(ValueError, match="principal admin is given both roles"):
        parse_principals(f"{TOKEN_A}\nadmin:user:{TOKEN_B}")


def test_principal_names_and_quotas_are_validated() -> None:
    for name in ("", "a b", "n" * 65, "ali/ce"):
        with pytest.raises(ValueError, match="principal's name"):
            Principal(name, is_admin=False)
    assert Principal("local", is_admin=True) == LOCAL
    with pytest.raises(ValueError, match="running_jobs must be >= 1"):
        Quotas(running_jobs=0)
    with pytest.raises(ValueError, match="queued_jobs must be >= 1"):
        Quotas(queued_jobs=0)
    with pytest.raises(ValueError, match="dataset_bytes must be >= 0"):
        Quotas(dataset_bytes=-1)
    assert Quotas(dataset_bytes=0).dataset_bytes == 0
    assert JobsConfig().quotas == Quotas(running_jobs=None, queued_jobs=None, dataset_bytes=None)


# --- jobs are their owner's -----------------------------------------------------------------


def test_another_principals_job_answers_exactly_as_an_unknown_id(manager: JobManager) -> None:
    job = manager.submit(job_spec(), principal=ALICE)
    assert job.owner == "alice"
    unknown = "job-000000000000"
    for job_id in (job.job_id, unknown):
        calls = (
            partial(manager.get, job_id, principal=BOB),
            partial(manager.cancel, job_id, principal=BOB),
            partial(manager.weights_file, job_id, principal=BOB),
            partial(manager.weights_file, job_id, principal=BOB, latest=True),
        )
        for call in calls:
            with pytest.raises(NotFoundError) as caught:
                call()
            assert str(caught.value) == unknown_message("job", job_id)
    assert manager.list(principal=BOB) == ([], "")
    assert manager.get(job.job_id, principal=ALICE).state is JobState.QUEUED  # bob's cancel
    assert [r.job_id for r in manager.list(principal=ALICE)[0]] == [job.job_id]


def test_an_admin_sees_lists_cancels_and_follows_everyones_jobs(manager: JobManager) -> None:
    alices = manager.submit(job_spec(), principal=ALICE)
    bobs = manager.submit(job_spec(), principal=BOB)
    roots = manager.submit(job_spec(), principal=ROOT)
    listed, _ = manager.list(principal=ROOT)
    assert [(r.job_id, r.owner) for r in listed] == [
        (roots.job_id, "root"),
        (bobs.job_id, "bob"),
        (alices.job_id, "alice"),
    ]
    assert [r.job_id for r in manager.list(principal=BOB)[0]] == [bobs.job_id]
    assert manager.get(alices.job_id, principal=ROOT).owner == "alice"
    with pytest.raises(NotFoundError):
        manager.get(roots.job_id, principal=ALICE)  # an admin's own jobs are its own too
    with pytest.raises(FailedPreconditionError, match="has no weights"):
        manager.weights_file(alices.job_id, principal=ROOT)  # found: it has none yet
    assert manager.cancel(alices.job_id, principal=ROOT).state is JobState.CANCELLED
    assert manager.get(alices.job_id, principal=ALICE).state is JobState.CANCELLED


def test_submission_ids_are_scoped_per_principal(manager: JobManager) -> None:
    spec = job_spec()
    alices = manager.submit(spec, principal=ALICE, submission_id="retry-1")
    bobs = manager.submit(spec, principal=BOB, submission_id="retry-1")
    assert bobs.job_id != alices.job_id and bobs.owner == "bob"
    assert manager.submit(spec, principal=BOB, submission_id="retry-1").job_id == bobs.job_id
    with pytest.raises(AlreadyExistsError) as caught:
        manager.submit(job_spec(epochs=3), principal=BOB, submission_id="retry-1")
    assert bobs.job_id in str(caught.value) and alices.job_id not in str(caught.value)
    assert manager.submit(spec, principal=ALICE, submission_id="retry-1").job_id == alices.job_id


def test_the_queued_jobs_quota_refuses_naming_it(manager: JobManager) -> None:
    first, _ = (manager.submit(job_spec(), principal=ALICE) for _ in range(2))
    with pytest.raises(ResourceExhaustedError) as caught:
        manager.submit(job_spec(), principal=ALICE)
    assert str(caught.value).startswith("principal alice has 2 queued jobs, its queued_jobs quota")
    assert manager.submit(job_spec(), principal=BOB).owner == "bob"  # bob's quota is his own
    manager.cancel(first.job_id, principal=ALICE)
    assert manager.submit(job_spec(), principal=ALICE).state is JobState.QUEUED


# --- datasets are their owner's -------------------------------------------------------------


def test_another_principals_dataset_answers_as_an_unknown_one(manager: JobManager) -> None:
    info = upload(manager.datasets, npz_bytes(), ALICE)
    assert info.owner == "alice"
    alices_spec = uploaded_spec(info.dataset_id, manager.dataset_lookup(ALICE))
    for dataset_id in (info.dataset_id, "0" * 64):
        calls = (
            partial(manager.datasets.get, dataset_id, principal=BOB),
            partial(manager.dataset_lookup(BOB), dataset_id),
            partial(uploaded_spec, dataset_id, manager.dataset_lookup(BOB)),
            partial(manager.delete_dataset, dataset_id, principal=BOB),
        )
        for call in calls:
            with pytest.raises(NotFoundError) as caught:
                call()
            assert str(caught.value) == unknown_message("dataset", dataset_id)
    with pytest.raises(NotFoundError) as caught:
        manager.submit(alices_spec, principal=BOB)  # a spec resolved by alice's lookup
    assert str(caught.value) == unknown_message("dataset", info.dataset_id)
    assert manager.datasets.list(principal=BOB) == []
    assert manager.datasets.list(principal=ALICE) == [info]


def test_an_admin_sees_trains_on_and_deletes_anyones_dataset(manager: JobManager) -> None:
    info = upload(manager.datasets, npz_bytes(), ALICE)
    assert manager.datasets.list(principal=ROOT) == [info]
    assert manager.dataset_lookup(ROOT)(info.dataset_id) == info
    alices = manager.submit(
        uploaded_spec(info.dataset_id, manager.dataset_lookup(ALICE)), principal=ALICE
    )
    roots = manager.submit(
        uploaded_spec(info.dataset_id, manager.dataset_lookup(ROOT)), principal=ROOT
    )
    assert roots.owner == "root"
    with pytest.raises(FailedPreconditionError, match=f"in use by job {alices.job_id}"):
        manager.delete_dataset(info.dataset_id, principal=ALICE)
    manager.cancel(alices.job_id, principal=ALICE)
    # the last entry would go with the file under root's job: alice is not told whose
    with pytest.raises(FailedPreconditionError, match="in use by another principal's job"):
        manager.delete_dataset(info.dataset_id, principal=ALICE)
    manager.cancel(roots.job_id, principal=ROOT)
    assert manager.delete_dataset(info.dataset_id, principal=ROOT) == info
    assert manager.datasets.list(principal=ROOT) == []
    assert stored_files(manager.config.datasets_dir) == []


def test_the_same_bytes_from_two_principals_are_two_entries_over_one_file(
    manager: JobManager,
) -> None:
    alices = upload(manager.datasets, npz_bytes(), ALICE)
    bobs = upload(manager.datasets, npz_bytes(), BOB)
    assert bobs.dataset_id == alices.dataset_id and bobs.owner == "bob"
    assert bobs.created_at > alices.created_at  # bob's own entry, nothing of alice's
    assert upload(manager.datasets, npz_bytes(), BOB) == bobs  # again: the same entry
    assert len(manager.datasets.list(principal=ROOT)) == 2
    bobs_job = manager.submit(
        uploaded_spec(bobs.dataset_id, manager.dataset_lookup(BOB)), principal=BOB
    )
    assert manager.delete_dataset(alices.dataset_id, principal=ALICE) == alices  # bob's keeps it
    assert manager.datasets.list(principal=BOB) == [bobs]
    assert stored_files(manager.config.datasets_dir) == [f"{bobs.dataset_id}.npz"]
    manager.cancel(bobs_job.job_id, principal=BOB)
    manager.delete_dataset(bobs.dataset_id, principal=BOB)
    assert stored_files(manager.config.datasets_dir) == []


def test_the_dataset_bytes_quota_refuses_an_upload_and_leaves_no_file(
    manager: JobManager,
) -> None:
    directory = manager.config.datasets_dir
    first = upload(manager.datasets, npz_bytes(seed=1), ALICE)
    second = upload(manager.datasets, npz_bytes(seed=2), ALICE)  # quota: two of them
    with pytest.raises(ResourceExhaustedError) as caught:
        upload(manager.datasets, npz_bytes(seed=3), ALICE)
    assert str(caught.value) == (
        f"principal alice holds {first.size_bytes + second.size_bytes} bytes of datasets; "
        f"this upload would take it past its dataset_bytes quota of "
        f"{manager.config.quotas.dataset_bytes} bytes"
    )
    assert stored_files(directory) == sorted(
        [f"{first.dataset_id}.npz", f"{second.dataset_id}.npz"]
    )
    # Two uploads under way at once, each within the quota alone: the later one to finish
    # is refused when it is stored, and leaves nothing either.
    manager.delete_dataset(second.dataset_id, principal=ALICE)
    racing = [manager.datasets.begin("race", principal=ALICE) for _ in range(2)]
    contents = [npz_bytes(seed=4), npz_bytes(seed=5)]
    for pending, data in zip(racing, contents, strict=True):
        pending.write(data)
    stored = racing[0].finish(hashlib.sha256(contents[0]).hexdigest())
    with pytest.raises(ResourceExhaustedError, match="its dataset_bytes quota"):
        racing[1].finish(hashlib.sha256(contents[1]).hexdigest())
    for pending in racing:
        pending.discard()
    assert stored_files(directory) == sorted(
        [f"{first.dataset_id}.npz", f"{stored.dataset_id}.npz"]
    )
    assert upload(manager.datasets, npz_bytes(seed=3), BOB).owner == "bob"  # bob's own quota


# --- stores from before owners --------------------------------------------------------------


def test_jobs_stored_before_owners_belong_to_local_and_submission_ids_become_per_owner(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    spec = job_spec()
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,"
        " state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', spec_json TEXT NOT NULL,"
        " created_at REAL NOT NULL, started_at REAL, finished_at REAL,"
        " total_steps INTEGER NOT NULL DEFAULT 0, weights_path TEXT NOT NULL DEFAULT '',"
        " placement_json TEXT NOT NULL DEFAULT '[]', submission_id TEXT,"
        " runner TEXT NOT NULL DEFAULT '');"
        "CREATE UNIQUE INDEX jobs_by_submission ON jobs (submission_id)"
        " WHERE submission_id IS NOT NULL;"
    )
    old.execute(
        "INSERT INTO jobs (job_id, state, spec_json, created_at, submission_id) "
        "VALUES ('job-old', 'SUCCEEDED', ?, 1.0, 's')",
        (json.dumps(spec.to_dict()),),
    )
    old.commit()
    old.close()
    store = JobStore(path)
    try:
        assert store.get("job-old").owner == "local"
        store.create(
            JobRecord(job_id="job-new", owner="bob", spec=spec, created_at=2.0, submission_id="s")
        )
        assert store.find_submission("s", owner="local").job_id == "job-old"
        assert store.find_submission("s", owner="bob").job_id == "job-new"
        with pytest.raises(sqlite3.IntegrityError):  # still unique for one owner
            store.create(
                JobRecord(job_id="job-3", owner="bob", spec=spec, created_at=3.0, submission_id="s")
            )
        assert [r.job_id for r in store.list(owner="local")[0]] == ["job-old"]
        assert [r.job_id for r in store.list()[0]] == ["job-new", "job-old"]
    finally:
        store.close()


def test_datasets_stored_before_owners_belong_to_local(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    old = sqlite3.connect(database)
    old.executescript(
        "CREATE TABLE datasets (dataset_id TEXT PRIMARY KEY, name TEXT NOT NULL,"
        " task TEXT NOT NULL, rows INTEGER NOT NULL, features INTEGER NOT NULL,"
        " outputs INTEGER NOT NULL, size_bytes INTEGER NOT NULL, created_at REAL NOT NULL);"
        "INSERT INTO datasets VALUES ('abc', 'old', 'classification', 40, 4, 3, 100, 1.0);"
    )
    old.close()
    registry = DatasetRegistry(tmp_path / "datasets", database, max_bytes=1 << 20)
    try:
        (info,) = registry.list(principal=LOCAL)
        assert (info.dataset_id, info.name, info.owner) == ("abc", "old", "local")
        assert registry.list(principal=BOB) == []
        assert registry.get("abc", principal=ROOT) == info  # any admin sees it
    finally:
        registry.close()
    reopened = DatasetRegistry(tmp_path / "datasets", database, max_bytes=1 << 20)
    assert [i.owner for i in reopened.list(principal=ROOT)] == ["local"]  # migrated once
    reopened.close()


# --- the running_jobs quota (Ray) -----------------------------------------------------------


def wait_for(manager: JobManager, job_id: str, done, timeout_s: float = 90) -> JobRecord:
    deadline = time.monotonic() + timeout_s
    while not done(record := manager.get(job_id, principal=ROOT)):
        assert time.monotonic() < deadline, f"{job_id}: {record.state} {record.queue_reason}"
        time.sleep(0.05)
    return record


@pytest.mark.slow
def test_the_running_jobs_quota_holds_a_principals_jobs_while_others_start(
    ray_session: None, tmp_path: Path
) -> None:
    config = JobsConfig(
        storage=tmp_path, max_running_jobs=3, standby_runners=0, quotas=Quotas(running_jobs=1)
    )
    manager = JobManager(config)
    long_spec = job_spec(epochs=5000, workers=1)
    first = manager.submit(long_spec, principal=ALICE)
    held = manager.submit(long_spec, principal=ALICE)
    bobs = manager.submit(job_spec(epochs=1, workers=1), principal=BOB)  # behind `held`
    try:
        record = manager.get(held.job_id, principal=ALICE)
        assert (record.state, record.queue_position) == (JobState.QUEUED, 1)
        assert record.queue_reason == "principal alice has 1 running jobs, its running_jobs quota"
        finished = wait_for(manager, bobs.job_id, lambda r: r.is_finished)
        assert finished.state is JobState.SUCCEEDED, finished.reason
        # `first` holds alice's quota from its placement on (it may still be placing on a
        # loaded host when bob's one-epoch job has finished) until it ends.
        wait_for(manager, first.job_id, lambda r: r.state is JobState.RUNNING)
        assert manager.get(held.job_id, principal=ALICE).state is JobState.QUEUED
        with pytest.raises(NotFoundError):
            manager.weights_file(bobs.job_id, principal=ALICE)
        assert manager.weights_file(bobs.job_id, principal=BOB).is_file()
        assert manager.weights_file(bobs.job_id, principal=ROOT).is_file()
        manager.cancel(first.job_id, principal=ALICE)
        wait_for(manager, held.job_id, lambda r: r.state is JobState.RUNNING)  # its turn now
    finally:
        for job in (first, held, bobs):
            manager.cancel(job.job_id, principal=ROOT)
        manager.shutdown()


def test_a_stream_closed_from_another_context_restores_nothing_and_raises_nothing() -> None:
    """A follower that leaves mid-stream: asyncio's generator finalizer closes the stream's
    scope in a context of its own, where the principal was never set."""
    import asyncio
    import contextvars

    from services.api import auth

    async def stream():
        async with auth._as(Principal("alice", is_admin=False)):
            yield auth.caller()

    async def follow_then_leave() -> str:
        follower = stream()
        first = await follower.__anext__()
        loop = asyncio.get_running_loop()
        await loop.create_task(follower.aclose(), context=contextvars.Context())
        return first.name

    assert asyncio.run(follow_then_leave()) == "alice"
