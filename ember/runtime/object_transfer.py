"""Object transfer between node managers: a node that needs an object held elsewhere pulls it.

Data flow::

    reader --store_pull(oid, from node)--> its node manager --pull_object--> holder's node manager
    reader <--reply {found | lost | full}--      (one pull per object, however many readers wait)
                                          <--object_chunk x N (8 MiB, zero-copy from the mapping)--
                                          writes each chunk into its own store with pwrite, seals it

The copy is an ordinary object of the receiving node's store (it can spill like any other); the
owner records it and frees it with the original. This is a mixin of
:class:`~ember.runtime.node_manager.NodeManager`, whose store, view of the cluster and poll loop it uses.
"""

import mmap
import os

from ember.exceptions import ObjectStoreFullError
from ember.runtime import protocol, transport
from ember.runtime.object_store import object_path, pwrite_all

CHUNK = 8 * 2**20  # objects travel between nodes in chunks of this many bytes


class ObjectTransfer:
    def _init_transfer(self) -> None:
        self.peers: dict[str, object] = {}  # node manager address -> DEALER
        self.pulls: dict[bytes, list] = {}  # object id -> [(client identity, rid)] waiting for its copy
        self.incoming: dict[bytes, list] = {}  # object id -> [fd, bytes received, size] while it arrives
        self.pull_source: dict[bytes, str] = {}  # object id -> address of the node it is pulled from
        self.sealing: dict[bytes, list] = {}  # object id -> nodes that pulled it before its writer sealed it

    def on_store_pull(self, identity, header, frames):
        """A local reader needs an object that another node holds: fetch a copy into our store."""
        oid = header["oid"]
        if oid in self.store.in_memory or oid in self.store.spilled:
            return {"found": True}
        waiting = self.pulls.get(oid)
        if waiting is not None:  # already on its way: one transfer serves every reader
            waiting.append((identity, header["rid"]))
            return None
        source = self.view.get(header["from"])
        if source is None or not source.alive:
            return {"lost": f"the node that held it ({header['from'].hex()[:12]}) is dead"}
        self.pulls[oid] = [(identity, header["rid"])]
        self.pull_source[oid] = source.address
        self.peer(source.address).send_multipart(protocol.encode({"op": protocol.PULL_OBJECT, "oid": oid}))
        return None

    def on_pull_object(self, identity, header, frames):
        """Another node pulls an object from us: send it in chunks straight from its mapping."""
        oid = header["oid"]
        if oid in self.store.spilled:
            self.on_store_restore(identity, {"oid": oid}, [])
        if oid in self.reservations:
            # Its writer told the owner before telling us that it sealed it: serve it once sealed.
            self.sealing.setdefault(oid, []).append(identity)
            return
        if oid not in self.store.in_memory:
            self.send(identity, {"op": protocol.OBJECT_CHUNK, "oid": oid, "missing": True})
            return
        with open(object_path(self.store_prefix, oid), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapping = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else b""
        view = memoryview(mapping)
        # Zero-copy sends: each frame keeps the mapping alive until ZeroMQ has written it, so the
        # object may even be deleted or spilled meanwhile.
        for offset in range(0, max(size, 1), CHUNK):
            chunk = view[offset : offset + CHUNK]
            self.send(identity, {"op": protocol.OBJECT_CHUNK, "oid": oid, "offset": offset, "size": size}, [chunk])

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
        for oid in [oid for oid, source in self.pull_source.items() if source == address]:
            # Transfers from it will never finish.
            if oid in self.incoming:
                self.abort_incoming(oid, "the node sending it died")
            else:
                self.finish_pull(oid, {"lost": "the node that held it died"})

    def on_peer_message(self, frames) -> None:
        header, payload = protocol.decode(frames)
        if header.get("op") != protocol.OBJECT_CHUNK:
            return
        oid = header["oid"]
        if header.get("missing"):
            self.finish_pull(oid, {"lost": "the node that should hold it does not have it"})
            return
        state = self.incoming.get(oid)
        if state is None:
            if oid not in self.pulls:
                return  # a transfer nobody waits for any more
            size = header["size"]
            try:
                to_spill = self.store.create(oid, size)
            except ObjectStoreFullError as error:
                self.finish_pull(oid, {"full": str(error)})
                return
            self.spill(to_spill)
            fd = os.open(object_path(self.store_prefix, oid), os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
            state = self.incoming[oid] = [fd, 0, size]
        chunk = payload[0] if payload else b""
        pwrite_all(state[0], chunk, header["offset"])
        state[1] += memoryview(chunk).nbytes
        if state[1] >= state[2]:
            os.close(state[0])
            del self.incoming[oid]
            self.store.sealed(oid, state[2])
            self.stats_dirty = True
            self.finish_pull(oid, {"found": True})

    def abort_incoming(self, oid: bytes, why: str) -> None:
        state = self.incoming.pop(oid, None)
        if state is not None:
            os.close(state[0])
            self.store.abandoned(state[2])
            self.delete_objects([oid])
        self.finish_pull(oid, {"lost": why})

    def finish_pull(self, oid: bytes, body: dict) -> None:
        self.pull_source.pop(oid, None)
        for identity, rid in self.pulls.pop(oid, ()):
            self.reply(identity, rid, body)
