"""services.api.followers without Ray or gRPC: followers of a job over a real SQLite store,
written to as the monitor writes (points, then `changed()`), on a real event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bptrain.v1 import training_pb2 as pb
from services.api import followers as followers_module
from services.api.followers import Followers
from services.errors import InvalidSpecError, NotFoundError
from services.jobs.records import JobState
from services.jobs.store import JobStore
from tests.test_store import make_point, make_record

TIMEOUT_S = 10


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(tmp_path / "jobs.db")
    store.create(make_record("job-1", state=JobState.RUNNING))
    yield store
    store.close()


def write(store: JobStore, followers: Followers, steps: range) -> None:
    store.add_metrics("job-1", [make_point(step) for step in steps])
    followers.changed()


def finish(store: JobStore, followers: Followers) -> None:
    store.update("job-1", state=JobState.SUCCEEDED)
    followers.changed()


async def collect(
    followers: Followers, after_step: int = 0, job_id: str = "job-1", check=None
) -> tuple[list[int], pb.Job | None]:
    steps, final = [], None
    check = check or followers.store.get  # everyone may see every job
    async for answer in followers.follow(job_id, after_step, check_access=check):
        if answer.HasField("final"):
            final = answer.final
        else:
            steps.append(answer.point.step)
    return steps, final


async def collect_batched(
    followers: Followers, after_step: int = 0
) -> tuple[list[pb.StreamMetricsResponse], pb.Job | None]:
    """The batched messages of one follower (each checked to carry `points`), and the final job."""
    messages, final = [], None
    stream = followers.follow("job-1", after_step, check_access=followers.store.get, batched=True)
    async for answer in stream:
        if answer.HasField("final"):
            final = answer.final
        else:
            assert answer.HasField("points") and not answer.HasField("point")
            messages.append(answer)
    return messages, final


def steps_of(messages: list[pb.StreamMetricsResponse]) -> list[int]:
    return [point.step for message in messages for point in message.points.points]


async def started(
    followers: Followers, count: int, *, batched: bool = False, **kwargs
) -> list[asyncio.Task]:
    followers.bind(asyncio.get_running_loop())
    follower = collect_batched if batched else collect
    tasks = [asyncio.create_task(follower(followers, **kwargs)) for _ in range(count)]
    while followers.followed_jobs == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # every follower has read the store and reached its wait
    return tasks


def test_many_followers_get_every_step_once_then_the_final_job(store: JobStore) -> None:
    async def scenario() -> list[tuple[list[int], pb.Job | None]]:
        followers = Followers(store)
        write(store, followers, range(1, 4))  # stored before anyone follows
        tasks = await started(followers, 50)
        for first in range(4, 100, 7):  # live batches, as the monitor writes them
            write(store, followers, range(first, min(first + 7, 100)))
            await asyncio.sleep(0.01)
        finish(store, followers)
        results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
        assert followers.followed_jobs == 0  # the tail goes with its last follower
        return results

    for steps, final in asyncio.run(scenario()):
        assert steps == list(range(1, 100))
        assert final is not None and final.state == pb.SUCCEEDED


def test_batched_followers_get_every_step_once_a_message_per_write_shared_by_all(
    store: JobStore,
) -> None:
    async def scenario() -> list[tuple[list[pb.StreamMetricsResponse], pb.Job | None]]:
        followers = Followers(store)
        write(store, followers, range(1, 4))  # stored before anyone follows
        tasks = await started(followers, 20, batched=True)
        for first in range(4, 100, 7):  # live batches, as the monitor writes them
            write(store, followers, range(first, min(first + 7, 100)))
            await asyncio.sleep(0.05)  # every follower has its message before the next
        finish(store, followers)
        return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)

    results = asyncio.run(scenario())
    writes = 1 + len(range(4, 100, 7))  # the stored points, then the live writes
    for messages, final in results:
        assert steps_of(messages) == list(range(1, 100))
        assert len(messages) <= writes  # one per write (fewer where a refresh took two)
        assert final is not None and final.state == pb.SUCCEEDED
    live = [message for messages, _ in results for message in messages[1:]]
    assert len({id(message) for message in live}) <= 2 * writes  # built once, shared


def test_a_batched_follower_behind_the_tail_pages_the_store_in_bounded_messages(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(followers_module, "PAGE_POINTS", 4)
    monkeypatch.setattr(followers_module, "BATCH_POINTS", 3)

    async def scenario() -> tuple:
        followers = Followers(store, tail_points=5)  # most points are behind the tail
        write(store, followers, range(1, 21))
        tasks = await started(followers, 1, batched=True)
        write(store, followers, range(21, 31))
        late = asyncio.create_task(collect_batched(followers, after_step=2))
        await asyncio.sleep(0.1)
        finish(store, followers)
        return await asyncio.wait_for(asyncio.gather(tasks[0], late), TIMEOUT_S)

    (live, live_final), (late, late_final) = asyncio.run(scenario())
    assert steps_of(live) == list(range(1, 31)) and live_final is not None
    assert steps_of(late) == list(range(3, 31)) and late_final is not None
    assert max(len(m.points.points) for m in late + live) == 3  # BATCH_POINTS, pages too


def test_a_follower_resumes_after_its_step_and_one_behind_the_tail_reads_the_store(
    store: JobStore,
) -> None:
    async def scenario() -> tuple:
        followers = Followers(store, tail_points=10)  # most points are behind the tail
        write(store, followers, range(1, 51))
        tasks = await started(followers, 1)
        write(store, followers, range(51, 81))  # the tail keeps only the newest 10
        late = asyncio.create_task(collect(followers, after_step=5))
        resumed = asyncio.create_task(collect(followers, after_step=77))
        await asyncio.sleep(0.1)
        finish(store, followers)
        return await asyncio.wait_for(asyncio.gather(tasks[0], late, resumed), TIMEOUT_S)

    (live, final), (late, _), (resumed, _) = asyncio.run(scenario())
    assert live == list(range(1, 81)) and final is not None
    assert late == list(range(6, 81))
    assert resumed == [78, 79, 80]


def test_a_finished_job_replays_its_points_and_ends(store: JobStore) -> None:
    async def scenario() -> tuple:
        followers = Followers(store)
        followers.bind(asyncio.get_running_loop())
        write(store, followers, range(1, 21))
        finish(store, followers)
        return await asyncio.wait_for(collect(followers, after_step=15), TIMEOUT_S)

    steps, final = asyncio.run(scenario())
    assert steps == [16, 17, 18, 19, 20]
    assert final is not None and final.step == 20


def test_a_rewritten_step_is_not_sent_twice(store: JobStore) -> None:
    async def scenario() -> tuple:
        followers = Followers(store)
        tasks = await started(followers, 3)
        write(store, followers, range(1, 11))
        await asyncio.sleep(0.05)
        write(store, followers, range(8, 16))  # a retried step range rewrites 8..10
        await asyncio.sleep(0.05)
        finish(store, followers)
        return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)

    for steps, _ in asyncio.run(scenario()):
        assert steps == list(range(1, 16))


def test_bad_after_step_and_hidden_jobs_fail_before_any_message(store: JobStore) -> None:
    def hidden(job_id: str) -> None:
        raise NotFoundError(f"unknown job {job_id!r}")

    async def scenario() -> None:
        followers = Followers(store)
        followers.bind(asyncio.get_running_loop())
        with pytest.raises(InvalidSpecError, match="after_step"):
            await collect(followers, after_step=-1)
        with pytest.raises(NotFoundError):
            await collect(followers, check=hidden)
        with pytest.raises(NotFoundError):
            await collect(followers, job_id="job-missing")
        assert followers.followed_jobs == 0

    asyncio.run(scenario())


def test_a_follower_that_leaves_releases_the_tail(store: JobStore) -> None:
    async def scenario() -> None:
        followers = Followers(store)
        tasks = await started(followers, 2)
        assert followers.followed_jobs == 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert followers.followed_jobs == 0

    asyncio.run(scenario())


def test_at_most_fanout_slots_followers_have_a_message_on_its_way(store: JobStore) -> None:
    """Live points reach the followers through the tail; a follower holds its slot from
    a yield until it is asked for the next message (gRPC asks once the last is
    written), and the others wait in line. Each still gets every step, in order."""

    async def scenario() -> None:
        followers = Followers(store, fanout_slots=2)
        followers.bind(asyncio.get_running_loop())
        streams = [
            followers.follow("job-1", 0, check_access=store.get).__aiter__() for _ in range(3)
        ]
        first = [asyncio.ensure_future(stream.__anext__()) for stream in streams]
        await asyncio.sleep(0.2)  # each follows the tail, waiting for a point
        write(store, followers, range(1, 4))
        await asyncio.sleep(0.3)
        done = [task for task in first if task.done()]
        assert len(done) == 2  # two followers write; the third waits for a slot
        waiting = next(task for task in first if not task.done())

        holder = streams[first.index(done[0])]
        next_of_holder = asyncio.ensure_future(holder.__anext__())  # its message is written
        assert (await asyncio.wait_for(waiting, TIMEOUT_S)).point.step == 1  # its turn
        finish(store, followers)

        async def rest(stream, heads: list) -> list[int]:  # each stream read on its own
            steps = [(await head).point.step for head in heads]
            return steps + [a.point.step async for a in stream if a.HasField("point")]

        heads = [
            [head, next_of_holder] if stream is holder else [head]
            for stream, head in zip(streams, first, strict=True)
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*(rest(s, h) for s, h in zip(streams, heads, strict=True))),
            TIMEOUT_S,
        )
        assert results == [[1, 2, 3]] * 3

    asyncio.run(scenario())


def test_fanout_slots_must_be_positive(store: JobStore) -> None:
    with pytest.raises(ValueError, match="fanout_slots"):
        Followers(store, fanout_slots=0)


def test_followers_that_leave_while_woken_or_in_line_leave_no_slot_taken(store: JobStore) -> None:
    """One slot; three followers wait for the tail, points come, and two leave while
    the tail's wake hands them the slot or lines them up for it. The one that stays,
    and one that comes later, still get every step: the slot went on each time."""

    async def scenario() -> None:
        followers = Followers(store, fanout_slots=1)
        tasks = await started(followers, 3)
        await asyncio.sleep(0.2)  # each waits for the tail
        write(store, followers, range(1, 4))
        while not followers._tails["job-1"].last_step:  # the tail moved: all woken or in line
            await asyncio.sleep(0)
        for task in tasks[:2]:
            task.cancel()
        write(store, followers, range(4, 6))
        later = asyncio.create_task(collect(followers))
        await asyncio.sleep(0.2)
        finish(store, followers)
        stayed, came_later = await asyncio.wait_for(asyncio.gather(tasks[2], later), TIMEOUT_S)
        assert stayed[0] == came_later[0] == [1, 2, 3, 4, 5]
        assert stayed[1] is not None and came_later[1] is not None

    asyncio.run(scenario())


def test_followers_that_leave_a_still_tail_leave_nothing_on_it(store: JobStore) -> None:
    """A job that makes no progress while its followers come and go (one stays): the
    tail keeps no trace of the ones that left."""

    async def scenario() -> None:
        followers = Followers(store)
        stays = await started(followers, 1)
        for _ in range(3):
            leaving = await started(followers, 5)
            for task in leaving:
                task.cancel()
            await asyncio.gather(*leaving, return_exceptions=True)
        assert len(followers._tails["job-1"].waiting) == 1  # the one that stays
        finish(store, followers)
        steps, final = await asyncio.wait_for(stays[0], TIMEOUT_S)
        assert steps == [] and final is not None and final.state == pb.SUCCEEDED

    asyncio.run(scenario())
