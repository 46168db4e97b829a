"""Object transfer between node managers: a node that needs an object held elsewhere pulls it.

Data flow::

    reader --store_pull(oid, from node)--> its node manager --pull_object(chunks 0..3)--> holder's node manager
    reader <--reply {found | lost | full}--      (one pull per object, however many readers wait)
                                          <--object_chunk x 4 (8 MiB, zero-copy from the mapping)--
                                          --pull_object(chunk 4)--> ...   (one more per chunk received)
                                          writes each chunk into its own store with pwrite, seals it

The puller keeps a window of chunks in flight (:class:`ChunkWindow`, a plain state machine), so a
large object never queues gigabytes in the sockets. A chunk not received in time is asked for again,
a bounded number of times; then the pull fails, and so does no reader wait forever on a lost reply.
The holder keeps no state per pull: each request names the chunks it wants.

The copy is an ordinary object of the receiving node's store (it can spill like any other); the
owner records it and frees it with the original. :class:`ObjectTransfer` is an object the node
manager owns; it uses the node's :class:`~ember.runtime.node.store_io.StoreIO`, its view of the
cluster and its poll loop, all handed to it.
"""

import logging
import os
import time
from collections.abc import Callable

from ember.exceptions import ObjectStoreFullError
from ember.runtime import messages, protocol, transport
from ember.runtime.node.object_store import map_object, object_path, pwrite_all
from ember.runtime.node.store_io import StoreIO

logger = logging.getLogger(__name__)

CHUNK = 8 * 2**20  # objects travel between nodes in chunks of this many bytes
WINDOW = 4  # chunks in flight per pull
CHUNK_TIMEOUT = 10.0  # seconds before a chunk is asked for again (the holder may first restore it from disk)
CHUNK_RETRIES = 3  # times the late chunks of one pull are asked for again before it fails


class ChunkWindow:
    """Which chunks of one pull to ask for next, and when to give up on the holder.

    ``start`` names the first chunks (the object's size is not known yet: the holder ignores
    chunks past its end); ``arrived`` records one and names the next; ``expired`` names the chunks
    to ask for again, or returns None once the retries are spent.
    """

    def __init__(self, window: int = WINDOW, timeout: float = CHUNK_TIMEOUT, retries: int = CHUNK_RETRIES):
        if window < 1 or timeout <= 0 or retries < 0:
            raise ValueError("a chunk window needs window >= 1, timeout > 0 and retries >= 0")
        self.window = window
        self.timeout = timeout
        self.retries_left = retries
        self.total: int | None = None  # chunks in the object, once its size is known
        self.next = 0
        self.outstanding: dict[int, float] = {}  # chunk index -> deadline
        self.received: set = set()

    def start(self, now: float) -> list:
        return self._fill(now)

    def sized(self, size: int) -> None:
        self.total = max(1, -(-size // CHUNK))
        self.outstanding = {i: deadline for i, deadline in self.outstanding.items() if i < self.total}
        self.next = min(self.next, self.total)

    def arrived(self, index: int, now: float) -> list | None:
        """A chunk came: the chunks to ask for now, or None if it came already (a duplicate)."""
        if index in self.received or (self.total is not None and index >= self.total):
            return None
        self.received.add(index)
        self.outstanding.pop(index, None)
        return self._fill(now)

    def done(self) -> bool:
        return self.total is not None and len(self.received) == self.total

    def expired(self, now: float) -> list | None:
        """Chunks late at ``now``, to ask for again ([] if none); None: out of retries, give up."""
        late = [i for i, deadline in self.outstanding.items() if deadline <= now]
        if not late:
            return []
        if self.retries_left == 0:
            return None
        self.retries_left -= 1
        for i in late:
            self.outstanding[i] = now + self.timeout
        return late

    def _fill(self, now: float) -> list:
        asked = []
        while len(self.outstanding) < self.window and (self.total is None or self.next < self.total):
            if self.next not in self.received:
                self.outstanding[self.next] = now + self.timeout
                asked.append(self.next)
            self.next += 1
        return asked


class Transfer:
    """One pull in progress on the receiving side."""

    __slots__ = ("source", "window", "fd", "size")

    def __init__(self, source: str):
        self.source = source  # the holder's node manager address
        self.window = ChunkWindow()
        self.fd = None  # the store file being filled, once the first chunk told its size
        self.size = 0


class ObjectTransfer:
    """Pulls of objects between node managers, both sides: the reader's node (``on_store_pull``,
    ``on_peer_message``) and the holder's (``on_pull_object``).

    ``view`` is the node manager's cluster view (node id -> NodeView, kept up to date by its ClusterView);
    ``send(identity, header, frames)`` and ``reply(identity, rid, body)`` answer on its socket;
    ``changed()`` says the store's stats changed. ``attach(loop)`` must come before the first pull.
    """

    def __init__(self, store_io: StoreIO, view: dict, send: Callable, reply: Callable, changed: Callable[[], None]):
        self.store_io = store_io
        self.store = store_io.store
        self.store_prefix = store_io.store_prefix
        self.view = view
        self.send = send
        self.reply = reply
        self.changed = changed
        self.loop = None
        self.peers: dict[str, object] = {}  # node manager address -> DEALER
        self.pulls: dict[bytes, list] = {}  # object id -> [(client identity, rid)] waiting for its copy
        self.transfers: dict[bytes, Transfer] = {}  # object id -> its pull in progress
        self.sealing: dict[bytes, list] = {}  # object id -> (peer, chunks) that came before its writer sealed it
        store_io.on_sealed = self._sealed
        store_io.on_deleted = self._deleted

    def attach(self, loop) -> None:
        self.loop = loop

    def on_store_pull(self, identity, msg, frames):
        """A local reader needs an object that another node holds: fetch a copy into our store."""
        oid = msg.oid
        if self.store.holds(oid):
            return {"found": True}
        waiting = self.pulls.get(oid)
        if waiting is not None:  # already on its way: one transfer serves every reader
            waiting.append((identity, msg.rid))
            return None
        source = self.view.get(msg.from_)
        if source is None or not source.alive:
            return {"lost": f"the node that held it ({msg.from_.hex()[:12]}) is dead", "dead": True}
        self.pulls[oid] = [(identity, msg.rid)]
        transfer = self.transfers[oid] = Transfer(source.address)
        self.ask_chunks(oid, transfer, transfer.window.start(time.monotonic()))
        return None

    def ask_chunks(self, oid: bytes, transfer: Transfer, chunks: list) -> None:
        if chunks:
            request = {"op": protocol.PULL_OBJECT, "oid": oid, "chunks": chunks}
            self.peer(transfer.source).send_multipart(protocol.encode(request))

    def check(self, now: float) -> None:
        """Ask again for chunks that are late; fail the pulls whose holder stopped answering."""
        for oid, transfer in list(self.transfers.items()):
            late = transfer.window.expired(now)
            if late is None:
                self.abort_incoming(oid, "the node holding it stopped answering")
            else:
                self.ask_chunks(oid, transfer, late)

    def on_pull_object(self, identity, msg, frames):
        """Another node pulls chunks of an object from us: send them straight from its mapping."""
        self._serve(identity, msg.oid, msg.chunks)

    def _serve(self, identity: bytes, oid: bytes, chunks: list) -> None:
        if oid in self.store_io.reservations:
            # Its writer told the owner before telling us that it sealed it: serve it once sealed.
            self.sealing.setdefault(oid, []).append((identity, chunks))
            return
        if oid not in self.store.in_memory and oid not in self.store.spilling:  # (a spilling one is still there)

            def then(body):
                if body.get("found"):
                    self._serve(identity, oid, chunks)
                else:
                    self.send(identity, {"op": protocol.OBJECT_CHUNK, "oid": oid, "missing": True})

            self.store_io.when_in_memory(oid, then)  # spilled: copied back first (off the loop)
            return
        # Under the readers' shared lock, like any mapping: the file is not recycled while we send it.
        mapping = map_object(object_path(self.store_prefix, oid))
        size = len(mapping)
        view = memoryview(mapping)
        # Zero-copy sends: each frame keeps the mapping alive until ZeroMQ has written it, so the
        # object may even be deleted or spilled meanwhile.
        for index in chunks:
            offset = index * CHUNK
            if offset >= max(size, 1):
                continue  # the puller did not know the size yet
            chunk = view[offset : offset + CHUNK]
            reply = {"op": protocol.OBJECT_CHUNK, "oid": oid, "index": index, "offset": offset, "size": size}
            self.send(identity, reply, [chunk])

    def _sealed(self, oid: bytes) -> None:
        for peer, chunks in self.sealing.pop(oid, ()):
            self._serve(peer, oid, chunks)

    def _deleted(self, oid: bytes) -> None:
        for peer, _ in self.sealing.pop(oid, ()):  # its writer failed or died: it will never come
            self.send(peer, {"op": protocol.OBJECT_CHUNK, "oid": oid, "missing": True})

    def peer(self, address: str):
        sock = self.peers.get(address)
        if sock is None:
            sock = self.peers[address] = transport.connect_dealer(address)
            self.loop.add_socket(sock, self.on_peer_message)
        return sock

    def close_peer(self, address: str) -> None:
        sock = self.peers.pop(address, None)
        if sock is not None:
            self.loop.remove_socket(sock)
            sock.close(0)
        for oid in [oid for oid, transfer in self.transfers.items() if transfer.source == address]:
            # Transfers from it will never finish.
            self.abort_incoming(oid, "the node that held it died", dead=True)

    def on_peer_message(self, frames) -> None:
        """What a holder sends back on our socket to it: chunks (or ``missing``)."""
        try:
            msg = messages.decode_header("node_manager_peer", frames[0])
        except messages.BadMessage as error:
            logger.warning("refused a message from a peer node manager: %s", error)
            return
        if not isinstance(msg, messages.ObjectChunk):
            return  # an error answering a pull we sent: its chunks are asked for again, then it fails
        self._on_chunk(msg, frames[1:])

    def _on_chunk(self, msg, payload) -> None:
        oid = msg.oid
        transfer = self.transfers.get(oid)
        if transfer is None:
            return  # a transfer nobody waits for any more
        if msg.missing:
            self.abort_incoming(oid, "the node that should hold it does not have it")
            return
        if transfer.fd is None:
            size = transfer.size = msg.size
            try:
                # Chunks are on their way: the room is taken now, even if spills in flight must
                # finish before it is free (a transfer overdraws the store by a bounded amount).
                _, to_spill = self.store.create(oid, size, can_wait=False)
            except ObjectStoreFullError as error:
                self.transfers.pop(oid)
                self.finish_pull(oid, {"full": str(error)})
                return
            self.store_io.spill(to_spill)
            part = object_path(self.store_prefix, oid) + ".part"
            transfer.fd = os.open(part, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
            os.ftruncate(transfer.fd, size)
            transfer.window.sized(size)
        chunk = payload[0] if payload else b""
        # A chunk that does not fit the size the first one gave is refused before any write.
        expected = min(CHUNK, transfer.size - msg.offset)
        if msg.size != transfer.size or msg.offset != msg.index * CHUNK or len(chunk) != expected:
            return
        more = transfer.window.arrived(msg.index, time.monotonic())
        if more is None:
            return  # a chunk asked for twice that came twice
        pwrite_all(transfer.fd, chunk, msg.offset)
        if transfer.window.done():
            os.close(transfer.fd)
            del self.transfers[oid]
            # Readers map the final name only: never a copy half received.
            os.rename(object_path(self.store_prefix, oid) + ".part", object_path(self.store_prefix, oid))
            self.store.sealed(oid, transfer.size)
            self.changed()
            self.finish_pull(oid, {"found": True})
        else:
            self.ask_chunks(oid, transfer, more)

    def abort_incoming(self, oid: bytes, why: str, dead: bool = False) -> None:
        transfer = self.transfers.pop(oid, None)
        if transfer is not None and transfer.fd is not None:
            os.close(transfer.fd)
            self.store.abandoned(transfer.size)
            try:
                os.unlink(object_path(self.store_prefix, oid) + ".part")
            except FileNotFoundError:
                pass
        # ``dead``: the holder died, so the owner heard of it and is rebuilding the object.
        self.finish_pull(oid, {"lost": why, "dead": dead})

    def finish_pull(self, oid: bytes, body: dict) -> None:
        for identity, rid in self.pulls.pop(oid, ()):
            self.reply(identity, rid, body)

    def close(self) -> None:
        for sock in self.peers.values():
            sock.close(0)
