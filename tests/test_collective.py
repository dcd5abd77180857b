"""The colocated workers' links: a mesh of real sockets between threads, the shared file."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from services.paramserver.collective import Endpoint, Mesh, PeerLost, SharedArrays, SharedMemoryFull


def connected(n: int) -> list[Mesh]:
    meshes = [Mesh(i, n) for i in range(n)]
    endpoints = [Endpoint(m.index, "node", m.host, m.port) for m in meshes]
    run_all([lambda m=m: m.connect(endpoints) for m in meshes])
    return meshes


def run_all(calls) -> list:
    """Run every call on its own thread; re-raise the first error."""
    results, errors = [None] * len(calls), []

    def go(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("n", [2, 3, 4])
def test_exchange_moves_every_slice_to_its_peer_at_once(n: int) -> None:
    meshes = connected(n)
    size = 300_000  # larger than a socket buffer: sends and receives must interleave
    data = [np.arange(size, dtype=np.float32) + 1000 * i for i in range(n)]
    inboxes = [{j: np.zeros(size, np.float32) for j in range(n) if j != i} for i in range(n)]

    def exchange(i: int) -> None:
        sends = {j: [data[i]] for j in range(n) if j != i}
        meshes[i].exchange(sends, {j: [box] for j, box in inboxes[i].items()}, timeout_s=10)

    run_all([lambda i=i: exchange(i) for i in range(n)])

    for i in range(n):
        for j, box in inboxes[i].items():
            np.testing.assert_array_equal(box, data[j])
    for mesh in meshes:
        mesh.close()


def test_a_barrier_waits_for_the_slowest_peer() -> None:
    meshes = connected(3)
    passed: list[int] = []
    late = threading.Event()

    def member(i: int) -> None:
        if i == 2:
            late.wait(timeout=5)
        meshes[i].barrier(timeout_s=10)
        passed.append(i)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    threads[0].join(timeout=0.3)
    assert passed == []  # nobody passes while peer 2 has not arrived
    late.set()
    for t in threads:
        t.join(timeout=10)
    assert sorted(passed) == [0, 1, 2]


def test_a_peer_that_closes_is_seen_as_lost_at_once() -> None:
    first, second = connected(2)
    second.close()
    with pytest.raises(PeerLost, match="closed"):
        first.barrier(timeout_s=30)


def test_a_silent_peer_is_lost_after_the_timeout() -> None:
    first, _second = connected(2)
    with pytest.raises(PeerLost, match="no answer"):
        first.barrier(timeout_s=0.2)


def test_announcements_wake_a_waiter_and_are_all_read() -> None:
    first, second = connected(2)
    for _ in range(5):
        second.announce()
    first.wait_for_news(timeout_s=5)  # reads all five
    with pytest.raises(PeerLost, match="no peer moved"):
        first.wait_for_news(timeout_s=0.1)


def test_shared_arrays_are_one_memory_and_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    specs = {"G": ((2, 5), "<f4"), "header": ((2, 2), "<f8")}
    creator = SharedArrays(path, specs, create=True)
    opener = SharedArrays(path, specs, create=False)
    creator.unlink()
    assert not path.exists()
    opener.arrays["G"][1, 3] = 7.0
    opener.arrays["header"][0] = (64, 0.5)
    assert creator.arrays["G"][1, 3] == 7.0
    assert creator.arrays["header"][0].tolist() == [64.0, 0.5]
    assert (
        creator.arrays["G"].ctypes.data % 64 == 0 and creator.arrays["header"].ctypes.data % 64 == 0
    )


def test_opening_shared_arrays_that_do_not_exist_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SharedArrays(tmp_path / "missing", {"x": ((3,), "<f4")}, create=False)


def test_shared_arrays_without_room_fail_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", full)
    with pytest.raises(SharedMemoryFull, match="no room for"):
        SharedArrays(tmp_path / "big", {"G": ((1000, 1000), "<f4")}, create=True)
    assert not (tmp_path / "big").exists()  # nothing left behind


def test_a_flag_reaches_every_peer() -> None:
    meshes = connected(3)
    assert (
        run_all([lambda m=m: m.broadcast_flag(0, False, timeout_s=5) for m in meshes])
        == [False] * 3
    )
    flags = run_all([lambda m=m: m.broadcast_flag(0, m.index == 0, timeout_s=5) for m in meshes])
    assert flags == [True, True, True]  # the root's value, not each peer's own
