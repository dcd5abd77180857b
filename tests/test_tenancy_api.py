"""Principals over the wire: tokens name them, every RPC acts as the caller, another
principal's ids answer as unknown ones, admins see everything, quotas refuse.

A real server on a real port with three tokens; its Ray address never answers, so jobs
wait QUEUED and no Ray is needed (what is checked is who may see what)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from bptrain import BptrainError, Client
from bptrain.v1 import training_pb2 as pb
from services.api.server import RunningServer, ServerConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from services.tenancy import Quotas, parse_principals
from tests.conftest import digits_spec

TOKENS = {"alice": "alice-token-0000000001", "bob": "bob-token-00000000002", "root": "r" * 24}
TOKENS_FILE = f"""# principal:role:token
alice:user:{TOKENS["alice"]}
bob:user:{TOKENS["bob"]}
root:admin:{TOKENS["root"]}
"""
UNREACHABLE_RAY = "ray.invalid:6379"
UNKNOWN_JOB = "job-000000000000"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningServer, JobManager]]:
    config = JobsConfig(storage=tmp_path, quotas=Quotas(queued_jobs=2))
    manager = JobManager(config, ray_address=UNREACHABLE_RAY)
    running = create_server(ServerConfig(port=0, principals=parse_principals(TOKENS_FILE)), manager)
    yield running, manager
    running.stop(0)
    manager.shutdown()


def as_(running: RunningServer, name: str) -> Client:
    return Client(f"127.0.0.1:{running.port}", token=TOKENS[name])


def failure(call) -> tuple[str, str]:
    with pytest.raises(BptrainError) as caught:
        call()
    return caught.value.code, str(caught.value)


def npz_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, X=rng.normal(size=(60, 4)).astype(np.float32), y=np.arange(60) % 3)
    path.write_bytes(buffer.getvalue())
    return path


def test_another_principals_job_is_not_found_on_every_rpc_as_an_unknown_id(served) -> None:
    running, _ = served
    with as_(running, "alice") as alice, as_(running, "bob") as bob:
        job = alice.submit(digits_spec()).job
        assert job.owner == "alice"
        for job_id in (job.job_id, UNKNOWN_JOB):
            answers = [
                failure(partial(bob.get, job_id)),
                failure(partial(bob.cancel, job_id)),
                failure(partial(next, bob.events(job_id, reconnect_for_s=0))),
                failure(partial(bob.weights, job_id)),
                failure(partial(bob.weights, job_id, latest=True)),
            ]
            for code, message in answers:
                assert code == "NOT_FOUND"
                assert job_id in message and "unknown job" in message
        assert list(bob.list()) == []
        assert [j.job_id for j in alice.list()] == [job.job_id]
        assert alice.get(job.job_id).state == pb.QUEUED  # bob's cancel did nothing


def test_an_admin_sees_lists_follows_and_cancels_everyones_jobs(served) -> None:
    running, _ = served
    with as_(running, "alice") as alice, as_(running, "root") as root:
        job = alice.submit(digits_spec()).job
        assert [j.job_id for j in root.list()] == [job.job_id]
        assert root.get(job.job_id).job_id == job.job_id
        assert root.cancel(job.job_id).state == pb.CANCELLED
        events = list(root.events(job.job_id))
        assert [e.final.state for e in events] == [pb.CANCELLED]
        code, _ = failure(lambda: root.weights(job.job_id))
        assert code == "FAILED_PRECONDITION"  # found: it has no weights
        mine = root.submit(digits_spec()).job
        code, _ = failure(lambda: alice.get(mine.job_id))
        assert code == "NOT_FOUND"  # an admin's own jobs are its own


def test_datasets_are_their_owners_and_cannot_be_trained_on_by_others(
    served, tmp_path: Path
) -> None:
    running, _ = served
    path = npz_file(tmp_path / "points.npz")
    with as_(running, "alice") as alice, as_(running, "bob") as bob, as_(running, "root") as root:
        dataset = alice.upload_dataset(path)
        assert [d.dataset_id for d in alice.list_datasets()] == [dataset.dataset_id]
        assert bob.list_datasets() == []
        assert [d.dataset_id for d in root.list_datasets()] == [dataset.dataset_id]
        layers = [{"units": 8, "activation": "relu"}, {"units": 3, "activation": "identity"}]
        uses = digits_spec(
            dataset={"name": "uploaded", "dataset_id": dataset.dataset_id}, layers=layers
        )
        unknown = digits_spec(dataset={"name": "uploaded", "dataset_id": "f" * 64}, layers=layers)
        theirs = failure(lambda: bob.submit(uses))
        nobodys = failure(lambda: bob.submit(unknown))
        assert theirs[0] == nobodys[0] and theirs[0] in ("NOT_FOUND", "INVALID_ARGUMENT")
        assert theirs[1].replace(dataset.dataset_id[:48], "f" * 48) == nobodys[1]
        assert failure(lambda: bob.delete_dataset(dataset.dataset_id))[0] == "NOT_FOUND"
        assert alice.submit(uses).job.owner == "alice"


def test_a_principals_queued_jobs_quota_is_resource_exhausted_naming_it(served) -> None:
    running, _ = served
    with as_(running, "alice") as alice, as_(running, "bob") as bob:
        alice.submit(digits_spec())
        alice.submit(digits_spec())
        code, message = failure(lambda: alice.submit(digits_spec()))
        assert code == "RESOURCE_EXHAUSTED"
        assert "alice" in message and "queued_jobs quota" in message
        assert bob.submit(digits_spec()).job.state == pb.QUEUED  # bob's quota is his own


def test_a_token_the_file_does_not_name_is_unauthenticated(served) -> None:
    running, _ = served
    with Client(f"127.0.0.1:{running.port}", token="nobody-token-00000000") as stranger:
        assert failure(lambda: list(stranger.list()))[0] == "UNAUTHENTICATED"
