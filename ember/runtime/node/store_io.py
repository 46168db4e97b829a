"""The node manager's object store handlers, with every file copy off its loop.

Spilling and restoring copy whole objects (hundreds of MiB) between ``/dev/shm`` and the spill
directory. Done on the loop, such a copy would stop heartbeats and every other request for its
duration, so copies run on a small thread pool; each finished copy is queued for the loop
(``call_soon``), and only the loop changes state (``StoreState`` and the files' final names)::

    loop: StoreState decides -> pool: copy to a ".part" file -> call_soon -> loop: rename, unlink, answer

Requests that need room the spills in flight will make (a writer's create, a reader's restore) are
answered when those finish. A reader pins what it maps, so the object is not chosen for spilling
while it is in use; a client's pins, reservations and waiting requests go with it when it goes
(:meth:`StoreIO.release_client`). :class:`StoreIO` is an object the node manager owns: it holds
everything it keeps per object and per client, and reaches the node manager only through the
callables it is given.

The file of a deleted object of a MiB or more is recycled rather than unlinked (see object_store)::

    delete -> rename away -> no reader's lock? -> pool (locked) -> store_create: "reuse" -> writer renames it
                          -> readers map it -> waits; each unpin retries the lock; 5 s: unlinked
"""

import collections
import concurrent.futures
import fcntl
import logging
import os
import time
from collections.abc import Callable

from ember.exceptions import ObjectStoreFullError
from ember.runtime.node.object_store import POOL_IDLE, RECYCLE_MIN, StoreState, object_path
from ember.runtime.runtime_dir import copy_private

logger = logging.getLogger(__name__)

LINGER_MAX = 64  # deleted files kept waiting for their readers to let go, at most
IO_THREADS = 2  # copies at once: enough to keep a disk busy, few enough to leave the CPUs to workers


class StoreIO:
    """The store's requests (create, seal, restore, touch, delete) and its copies to and from disk.

    ``reply(identity, rid, body)`` answers a request later; ``changed()`` says the store's stats
    changed (the node manager reports them); ``owner_key(owner, owner_node)`` is ``(alive, key)``:
    whether the owner of a sealed object is still there, and who frees it (a local client id, a
    remote node id, or None). ``on_sealed(oid)`` / ``on_deleted(oid)`` let the object transfer serve
    or fail the pulls that waited for a writer to finish.
    """

    def __init__(
        self,
        store: StoreState,
        store_prefix: str,
        spill_dir: str,
        reply: Callable,
        changed: Callable[[], None],
        owner_key: Callable,
    ):
        self.store = store
        self.store_prefix = store_prefix
        self.spill_dir = spill_dir
        self.reply = reply
        self.changed = changed
        self.owner_key = owner_key
        self.on_sealed: Callable[[bytes], None] = lambda oid: None
        self.on_deleted: Callable[[bytes], None] = lambda oid: None
        self.store_owner: dict[bytes, bytes] = {}  # object id -> who frees it (client id or node id)
        self.reservations: dict[bytes, tuple] = {}  # object id -> (writer identity, size), until sealed
        self.io_pool = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ember-store-io")
        self.io_done: collections.deque = collections.deque()  # (kind, oid, error) from the copy threads
        self.loop = None  # the node manager's EventLoop (attach)
        self.room_waiters: list = []  # (client identity or None, retry, fail) asked again when a spill ends
        self.restore_waiters: dict[bytes, list] = {}  # oid -> callbacks(body) for when it is back
        self.client_pins: dict[bytes, dict] = {}  # client identity -> {oid: pins}
        self.discarded = 0
        self.pool_fds: dict[str, int] = {}  # pooled file -> descriptor holding its exclusive lock
        # Pooled files handed to writers, until sealed: one whose writer never renames it into place
        # (it died, or was no writer) is removed with the reservation.
        self.handed_out: dict[bytes, str] = {}
        # Deleted objects' files that readers still mapped: object id -> (file, descriptor, since).
        self.lingering: dict[bytes, tuple[str, int, float]] = {}

    def attach(self, loop) -> None:
        self.loop = loop

    def spill_path(self, oid: bytes) -> str:
        return os.path.join(self.spill_dir, oid.hex())

    # --- copies on the pool -------------------------------------------------------------------------
    def spill(self, oids) -> None:
        """Start copying objects chosen by the store to disk (they are ``spilling`` meanwhile), and
        free the pooled files it evicted to make room (it evicts those first)."""
        if self.pool_fds:
            self.free_evicted()  # a create that evicted pooled files and then found no room never reached spill()
        for oid in oids:
            self._submit("spill", oid, object_path(self.store_prefix, oid), self.spill_path(oid) + ".part")
        if oids:
            self.changed()

    def _submit(self, kind: str, oid: bytes, source: str, target: str) -> None:
        future = self.io_pool.submit(copy_private, source, target)  # 0600: the bytes are the user's data
        future.add_done_callback(lambda f: self._report(kind, oid, f))

    def _report(self, kind: str, oid: bytes, future) -> None:
        # On a copy thread: queue the result for the loop; nothing else. Copies that finish together
        # are handled in one call (the others find the queue empty): one retry of the waiters.
        self.io_done.append((kind, oid, None if future.cancelled() else future.exception()))
        self.loop.call_soon(self._on_io_done)

    def _on_io_done(self) -> None:
        if not self.io_done:
            return
        spill_error = None
        while self.io_done:
            kind, oid, error = self.io_done.popleft()
            if kind == "spill":
                spill_error = self._spill_finished(oid, error) or spill_error
            elif kind == "restore":
                self._restore_finished(oid, error)
        self.changed()
        # Room may have been made: ask the waiting requests again, in arrival order. If spilling
        # fails (a full disk), they fail too rather than choose the same objects again and again.
        waiters, self.room_waiters = self.room_waiters, []
        for _, retry, fail in waiters:
            if spill_error is None:
                retry()
            else:
                fail({"full": f"The object store is full and spilling to disk failed: {spill_error}"})

    def _spill_finished(self, oid: bytes, error):
        """Carry out a finished spill; returns the error if one failed (its object stays in memory)."""
        part = self.spill_path(oid) + ".part"
        kept = self.store.spill_done(oid, ok=error is None)
        if not kept or error is not None:
            _unlink(part)  # deleted meanwhile (the copy may have failed for that reason), or a failed copy
            if kept:
                logger.error("spilling object %s failed: %s", oid.hex(), error)
                return error
            return None
        os.rename(part, self.spill_path(oid))
        self.discard(object_path(self.store_prefix, oid), recycle=oid)  # readers that mapped it keep their mapping
        return None

    def _restore_finished(self, oid: bytes, error) -> None:
        part = object_path(self.store_prefix, oid) + ".part"
        kept = self.store.restore_done(oid, ok=error is None)
        if kept and error is not None:
            logger.error("restoring object %s failed: %s", oid.hex(), error)
        if kept and error is None:
            # Readers map the final name only: they never see a file half copied back.
            os.rename(part, object_path(self.store_prefix, oid))
            self.discard(self.spill_path(oid))
            body = {"found": True}
        else:
            _unlink(part)
            body = {"found": False} if error is None else {"lost": f"restoring it from disk failed: {error}"}
        for then in self.restore_waiters.pop(oid, ()):
            then(body)

    def when_in_memory(self, oid: bytes, then, client: bytes | None = None) -> None:
        """Call ``then(body)`` once ``oid`` is in shared memory (``{"found": True}``), copying it
        back from disk first if it was spilled; ``{"found": False}`` if this store does not hold it,
        ``{"full": ...}`` if it cannot come back. ``client`` is whose request waits (dropped if it dies)."""
        try:
            status, to_spill = self.store.restore(oid)
        except ObjectStoreFullError as error:
            then({"full": str(error)})
            return
        self.spill(to_spill)
        if status == "memory":
            then({"found": True})
        elif status == "unknown":
            then({"found": False})
        elif status == "wait":  # its own spill, or the spills making room for it, are running
            self.room_waiters.append((client, lambda: self.when_in_memory(oid, then, client), then))
        else:
            self.restore_waiters.setdefault(oid, []).append(then)
            if status == "start":
                self._submit("restore", oid, self.spill_path(oid), object_path(self.store_prefix, oid) + ".part")
                self.changed()

    # --- client requests ----------------------------------------------------------------------------
    def on_store_create(self, identity, msg, frames):
        """A writer reserves ``msg.size`` bytes for ``msg.oid`` (answered ``full`` if they cannot be had)."""
        # A retried task writes the same return id again: whatever an earlier attempt left (sealed,
        # or half written by a writer that died) gives way to the new one.
        self.delete_objects([msg.oid])
        return self._create(identity, msg.rid, msg.oid, msg.size)

    def _create(self, identity, rid, oid: bytes, size: int):
        try:
            granted, to_spill = self.store.create(oid, size)
        except ObjectStoreFullError as error:
            return {"full": str(error)}
        self.spill(to_spill)
        if not granted:  # answered once the spills in flight have made room
            self.room_waiters.append(
                (
                    identity,
                    lambda: self._answer(identity, rid, self._create(identity, rid, oid, size)),
                    lambda body: self._answer(identity, rid, body),
                )
            )
            return None
        self.reservations[oid] = (identity, size)
        self.changed()
        reuse = self.store.reuse(size)
        if reuse is None:
            return {"prefix": self.store_prefix}
        # Unlocked before the writer renames it into place: a reader that still had it open from
        # before it was pooled may lock it now, but finds its own name gone and lets go.
        os.close(self.pool_fds.pop(reuse))
        self.handed_out[oid] = reuse
        return {"prefix": self.store_prefix, "reuse": os.path.basename(reuse)}

    def _answer(self, identity, rid, body) -> None:
        if body is not None and rid is not None:
            self.reply(identity, rid, body)

    def on_store_restore(self, identity, msg, frames):
        """A reader found an object's file gone (spilled): answered once it is back, pinned for the reader."""
        oid, rid = msg.oid, msg.rid

        def then(body):
            if body.get("found"):
                self.pin(identity, oid)  # not spilled again before the reader maps it
            self._answer(identity, rid, body)

        self.when_in_memory(oid, then, identity)

    def on_store_sealed(self, identity, msg, frames):
        """The writer of ``msg.oid`` finished (or ``failed``): the object is readable, owned by ``msg.owner``."""
        oid = msg.oid
        reservation = self.reservations.get(oid)
        if reservation is None or reservation[0] != identity:
            return  # given back already (its writer was presumed dead), or not this peer's to seal
        if msg.failed:  # the writer could not finish: nothing to keep
            self.delete_objects([oid])
            return
        self.reservations.pop(oid)
        self._forget_handed_out(oid)
        self.store.sealed(oid, msg.size)
        alive, owner = self.owner_key(msg.owner, msg.owner_node)
        if not alive:
            self.delete_objects([oid])  # its owner (or its owner's node) died meanwhile
            return
        self.store_owner[oid] = owner
        self.changed()
        self.on_sealed(oid)

    def on_store_touch(self, identity, msg, frames):
        """A reader mapped these objects (``oids``: pin them, most recently used now) and let go of
        those (``unpin``)."""
        for oid in msg.oids:
            self.pin(identity, oid)
        for oid in msg.unpin:
            self.unpin(identity, oid)

    def pin(self, identity: bytes, oid: bytes) -> None:
        if self.store.pin(oid):
            pins = self.client_pins.setdefault(identity, {})
            pins[oid] = pins.get(oid, 0) + 1

    def unpin(self, identity: bytes, oid: bytes) -> None:
        pins = self.client_pins.get(identity)
        if not pins or oid not in pins:
            return  # never counted (it was not in memory when the pin came)
        pins[oid] -= 1
        if not pins[oid]:
            del pins[oid]
        self.store.unpin(oid)
        if oid in self.lingering:  # deleted while this reader mapped it: maybe the last to let go
            self._try_pool(oid)

    def release_client(self, identity: bytes, client_id: bytes | None) -> None:
        """A client went: the objects it owned and those it was writing are freed (their space is
        free again, their files removed), its pins go, and the requests it left waiting are dropped."""
        owned = [oid for oid, owner in self.store_owner.items() if owner == client_id] if client_id else []
        writing = [oid for oid, (writer, _) in self.reservations.items() if writer == identity] if identity else []
        self.delete_objects(owned + writing)
        if identity is None:
            return
        for oid, count in self.client_pins.pop(identity, {}).items():
            for _ in range(count):
                self.store.unpin(oid)
        self.room_waiters = [waiter for waiter in self.room_waiters if waiter[0] != identity]

    def on_store_delete(self, identity, msg, frames):
        """The owner freed these objects."""
        self.delete_objects(msg.oids)

    def delete_objects(self, oids) -> None:
        for oid in oids:
            self.store_owner.pop(oid, None)
            self.on_deleted(oid)
            reservation = self.reservations.pop(oid, None)
            if reservation is not None:
                self.store.abandoned(reservation[1])
                self._forget_handed_out(oid)
            where = self.store.delete(oid)
            # A copy still running finds it deleted when it ends and removes its ".part" file then.
            on_disk = where in ("spilled", "restoring")
            if on_disk:
                self.discard(self.spill_path(oid))
            else:
                self.discard(object_path(self.store_prefix, oid), recycle=oid if where == "memory" else None)
        self.changed()

    def _forget_handed_out(self, oid: bytes) -> None:
        path = self.handed_out.pop(oid, None)
        if path is not None:
            self.io_pool.submit(_unlink, path)  # renamed into place already, unless the writer never did

    def discard(self, path: str, recycle: bytes | None = None) -> None:
        """Remove a file without waiting: freeing the pages of a large one takes a while, so it is
        renamed out of the way here (its name may be reused at once) and unlinked on the pool.
        ``recycle``: the id of the object whose shared-memory file this is, kept for a new object
        instead if the store wants it, once no reader maps it (see object_store's module docstring).
        """
        self.discarded += 1
        gone = f"{path}.gone{self.discarded}"
        try:
            os.rename(path, gone)
        except FileNotFoundError:
            return
        if recycle is not None and self._offer(recycle, gone):
            return
        self.io_pool.submit(_unlink, gone)

    def _offer(self, oid: bytes, path: str) -> bool:
        """Offer a renamed-away object file to the store's pool. True if we keep it: pooled (locked),
        or waiting for its readers to let go (they usually do within moments: a consumer holds the
        last batch of a block while it asks for the next), retried at each of their unpins."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            small = os.fstat(fd).st_size < RECYCLE_MIN  # not worth a place in the pool
        except OSError:
            small = True
        if small or len(self.lingering) >= LINGER_MAX:  # every waiting file holds a descriptor: bounded
            os.close(fd)
            return False
        stale = self.lingering.pop(oid, None)
        if stale is not None:  # the same id written again meanwhile (a retried task): the older file goes
            self._free_file(stale[0], stale[1])
        self.lingering[oid] = (path, fd, time.monotonic())
        self._try_pool(oid)
        return True

    def _try_pool(self, oid: bytes) -> None:
        """Pool a waiting file if no reader maps it any more; it stays waiting otherwise."""
        path, fd, _ = self.lingering[oid]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a reader maps it
        except OSError:
            return
        del self.lingering[oid]
        if self.store.recycle(path, os.fstat(fd).st_size, time.monotonic()):
            self.pool_fds[path] = fd
            self.free_evicted()
            self.changed()
        else:
            self._free_file(path, fd)

    def free_evicted(self, paths=None) -> None:
        """Unlink the pooled files the store let go of (``paths``, else its evictions)."""
        for path in self.store.take_evicted() if paths is None else paths:
            self._free_file(path, self.pool_fds.pop(path, None))

    def _free_file(self, path: str, fd: int | None) -> None:
        """Let go of a kept file: its lock or descriptor now, its pages on the pool (unlinking a
        large file takes a while)."""
        if fd is not None:
            os.close(fd)
        self.io_pool.submit(_unlink, path)

    def tick(self, now: float) -> None:
        """Free the pooled files nobody took for a while, and the waiting ones whose readers hold on."""
        expired = self.store.expire(now)
        if expired:
            self.free_evicted(expired)
            self.changed()
        if self.pool_fds:
            self.free_evicted()
        for oid in [oid for oid, (_, _, since) in self.lingering.items() if now - since >= POOL_IDLE]:
            path, fd, _ = self.lingering.pop(oid)
            self._free_file(path, fd)  # its pages live on in the readers' mappings

    def close(self) -> None:
        self.free_evicted(list(self.pool_fds))
        for path, fd, _ in self.lingering.values():
            os.close(fd)
            _unlink(path)
        self.lingering.clear()
        self.io_pool.shutdown(wait=True, cancel_futures=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
