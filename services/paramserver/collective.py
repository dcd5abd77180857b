"""Collective: the TCP mesh between one job's colocated workers and the two exchanges a
bsp step needs, reduce-scatter of g and all-gather of θ.

N worker processes form a full mesh of TCP connections (N is small: the job's workers).
Two transports ride on it:

- shared memory (every worker on one node): G (N, P) and θ (P,) live in one file
  under /dev/shm that every worker maps. Worker i writes its gradient into G[i]; a
  reduce-scatter is a barrier after which worker i sums column range i of G; an
  all-gather is a barrier after which every worker reads the whole θ. θ and g are
  never copied between processes; the mesh only carries one byte per barrier.
- TCP (workers on several nodes): the same two exchanges send the slices themselves,
  straight from and into preallocated arrays (no pickling, one kernel copy).

Every wait blocks in the kernel (select on the sockets): nothing spins. A peer that
dies closes its sockets, so the others see `PeerLost` at once instead of hanging; a
peer that stops answering surfaces after `timeout_s`.

The shared-memory file itself (`SharedArrays`, `SharedMemoryFull`) is in `shared_arrays`,
re-exported here.
"""

from __future__ import annotations

import select
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.paramserver.shared_arrays import SharedArrays, SharedMemoryFull

_INDEX = struct.Struct("!i")
CONNECT_TIMEOUT_S = 60.0


class PeerLost(ConnectionError):
    """A peer closed its connection or did not answer in time: the job's mesh is broken."""


@dataclass(frozen=True)
class Endpoint:
    """Where worker `index` listens: its Ray node and a TCP address."""

    index: int
    node_id: str
    host: str
    port: int


class Mesh:
    """Full mesh of TCP connections between N peers, with a non-spinning exchange."""

    def __init__(self, index: int, size: int, *, host: str = "127.0.0.1") -> None:
        if not 0 <= index < size:
            raise ValueError(f"index must be in [0, {size}), got {index}")
        self.index, self.size = index, size
        self._listener = socket.create_server((host, 0), backlog=max(size, 1))
        self.host, self.port = host, self._listener.getsockname()[1]
        self.peers: dict[int, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._one = bytearray(1)
        self._inbox = bytearray(1)

    def connect(self, endpoints: Sequence[Endpoint], timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect to every lower index, accept every higher one. Every peer calls this
        at about the same time; connects complete through the listener's backlog, so the
        order cannot deadlock."""
        by_index = {e.index: e for e in endpoints}
        for j in range(self.index):
            sock = socket.create_connection((by_index[j].host, by_index[j].port), timeout_s)
            sock.sendall(_INDEX.pack(self.index))
            self._add(j, sock)
        self._listener.settimeout(timeout_s)
        while len(self.peers) < self.size - 1:
            sock, _ = self._listener.accept()
            sock.settimeout(timeout_s)
            (j,) = _INDEX.unpack(_recv_exactly(sock, _INDEX.size))
            self._add(j, sock)
        self._listener.close()

    def _add(self, j: int, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.peers[j] = sock

    def exchange(
        self,
        sends: dict[int, Sequence[memoryview]],
        receives: dict[int, Sequence[memoryview]],
        timeout_s: float,
    ) -> None:
        """Send every buffer in `sends[j]` to peer j and fill every buffer in
        `receives[j]` from it, all peers at once, blocking in select until done."""
        selector = self._selector
        outgoing = {j: [memoryview(b).cast("B") for b in bufs] for j, bufs in sends.items()}
        incoming = {j: [memoryview(b).cast("B") for b in bufs] for j, bufs in receives.items()}
        outgoing = {j: [b for b in bufs if len(b)] for j, bufs in outgoing.items()}
        incoming = {j: [b for b in bufs if len(b)] for j, bufs in incoming.items()}
        for j in set(outgoing) | set(incoming):
            if events := _wanted(j, outgoing, incoming):
                selector.register(self.peers[j], events, j)
        deadline = time.monotonic() + timeout_s
        try:
            while selector.get_map():
                left = deadline - time.monotonic()
                ready = selector.select(timeout=max(left, 0.0)) if left > 0 else []
                if not ready:
                    raise PeerLost(f"no answer from peers within {timeout_s:.0f} s")
                for key, mask in ready:
                    self._progress(key, mask, outgoing, incoming)
        finally:
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)

    def _progress(
        self,
        key: selectors.SelectorKey,
        mask: int,
        outgoing: dict[int, list[memoryview]],
        incoming: dict[int, list[memoryview]],
    ) -> None:
        """Moves what one ready socket allows, then waits on it only for what is left."""
        j, sock = key.data, key.fileobj
        if mask & selectors.EVENT_READ and incoming.get(j):
            self._receive(sock, incoming[j], j)
        if mask & selectors.EVENT_WRITE and outgoing.get(j):
            self._send(sock, outgoing[j], j)
        events = _wanted(j, outgoing, incoming)
        if events == 0:
            self._selector.unregister(sock)
        elif events != key.events:
            self._selector.modify(sock, events, j)

    @staticmethod
    def _send(sock: socket.socket, buffers: list[memoryview], j: int) -> None:
        try:
            sent = sock.send(buffers[0])
        except BlockingIOError:
            return
        except OSError as error:
            raise PeerLost(f"peer {j}: {error}") from None
        buffers[0] = buffers[0][sent:]
        if not len(buffers[0]):
            buffers.pop(0)

    @staticmethod
    def _receive(sock: socket.socket, buffers: list[memoryview], j: int) -> None:
        try:
            got = sock.recv_into(buffers[0])
        except BlockingIOError:
            return
        except OSError as error:
            raise PeerLost(f"peer {j}: {error}") from None
        if got == 0:
            raise PeerLost(f"peer {j} closed its connection")
        buffers[0] = buffers[0][got:]
        if not len(buffers[0]):
            buffers.pop(0)

    def barrier(self, timeout_s: float) -> None:
        """Wait until every peer has reached its matching barrier (one byte each way).

        The hot path of a bsp step on shared memory (twice a step), so it skips the
        selector: a byte always fits a socket's buffer, and each peer's byte is waited
        for with one poll of that socket alone."""
        for j, sock in self.peers.items():
            try:
                sock.send(self._one)
            except OSError as error:  # BlockingIOError too: a full buffer is a stuck peer
                raise PeerLost(f"peer {j}: {error}") from None
        deadline = time.monotonic() + timeout_s
        inbox = self._inbox
        for j, sock in self.peers.items():
            while True:
                try:
                    got = sock.recv_into(inbox)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([sock], [], [], left)[0]:
                        raise PeerLost(
                            f"no answer from peer {j} within {timeout_s:.0f} s"
                        ) from None
                except OSError as error:
                    raise PeerLost(f"peer {j}: {error}") from None
            if got == 0:
                raise PeerLost(f"peer {j} closed its connection")

    def broadcast_flag(self, root: int, flag: bool, timeout_s: float) -> bool:
        """Peer `root`'s `flag`, on every peer (root sends one byte to each)."""
        if self.size == 1:
            return flag
        if self.index == root:
            byte = bytearray([1 if flag else 0])
            self.exchange({j: [byte] for j in self.peers}, {}, timeout_s)
            return flag
        inbox = bytearray(1)
        self.exchange({}, {root: [inbox]}, timeout_s)
        return inbox[0] == 1

    def announce(self) -> None:
        """One byte to every peer, without waiting: "my state moved" (asp/ssp). A full
        socket buffer means the peer has news it has not read yet: nothing is lost."""
        for j, sock in self.peers.items():
            try:
                sock.send(self._one)
            except BlockingIOError:
                pass
            except OSError as error:
                raise PeerLost(f"peer {j}: {error}") from None

    def wait_for_news(self, timeout_s: float) -> None:
        """Block until some peer has announced since the last call, then read every
        announcement that is there."""
        selector = self._selector
        for j, sock in self.peers.items():
            selector.register(sock, selectors.EVENT_READ, j)
        try:
            ready = selector.select(timeout=timeout_s)
            if not ready:
                raise PeerLost(f"no peer moved within {timeout_s:.0f} s")
            for key, _ in ready:
                while True:
                    try:
                        data = key.fileobj.recv(4096)
                    except BlockingIOError:
                        break
                    except OSError as error:
                        raise PeerLost(f"peer {key.data}: {error}") from None
                    if not data:
                        raise PeerLost(f"peer {key.data} closed its connection")
        finally:
            for sock in self.peers.values():
                selector.unregister(sock)

    def close(self) -> None:
        for sock in self.peers.values():
            sock.close()
        self.peers.clear()
        self._listener.close()
        self._selector.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise PeerLost("a peer closed its connection while connecting")
        data += chunk
    return data


def _wanted(j: int, outgoing: dict[int, list], incoming: dict[int, list]) -> int:
    """The selector events peer j's socket still waits for: write while buffers are left
    to send it, read while buffers are left to fill from it."""
    return (selectors.EVENT_WRITE if outgoing.get(j) else 0) | (
        selectors.EVENT_READ if incoming.get(j) else 0
    )


__all__ = ["CONNECT_TIMEOUT_S", "Endpoint", "Mesh", "PeerLost", "SharedArrays", "SharedMemoryFull"]
