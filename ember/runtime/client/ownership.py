"""Ownership: the objects a process owns, the ones it borrows, and reading values wherever they are.

The process that creates an object (a ``put``, or the submitter of the task that returns it) owns it:
it holds a small value inline and knows which node stores a large one. Whether an object is still
needed is decided by :class:`~ember.runtime.client.reference_table.ReferenceTable`, a plain state
machine; this module feeds it events (ObjectRefs made and dropped, borrowers coming and going,
values arriving) and carries out what it answers (free a value, tell an owner we borrow or let go).

Owned by :class:`~ember.runtime.client.core_client.CoreClient` (``client.objects``), whose I/O thread
runs every method here that sends; ``get``, ``wait``, ``put`` and ``future_for`` are called from user
threads.
"""

import collections
import concurrent.futures
import threading
import time
import weakref

import zmq

from ember import exceptions
from ember.runtime import protocol
from ember.runtime.client.object_entries import (  # noqa: F401 - re-exported: callers import them from here
    FAILED,
    NODE_SUFFIX_LENGTH,
    PENDING,
    READY,
    BorrowedValue,
    ObjectEntry,
    node_suffix,
)
from ember.runtime.client.object_ref import ObjectRef
from ember.runtime.client.reference_table import ReferenceTable
from ember.runtime.client.waiting import Waiting
from ember.runtime.ids import put_object_id
from ember.runtime.messages import AddBorrower, Error, GetObject, Location, NodeDead, OwnerDied, RemoveBorrower, Reply
from ember.runtime.node.object_store import (  # noqa: F401 - store_prefix re-exported: callers import it from here
    layout,
    object_path,
    read_object,
    store_prefix,
    write_object,
)
from ember.runtime.serialization import deserialize, serialize
from ember.runtime.task_context import current_task

# Values at most this big travel inline with messages; larger ones go to the shared-memory store.
INLINE_LIMIT = 100 * 1024


class Ownership:
    """The objects of one process (``CoreClient.objects``).

    ``io`` is the core client: this object sends through it (``send``, ``request``, ``reply``,
    ``call_soon``), waits with it (``lead_once``), and shares its lock and Condition, so that a
    value arriving on the I/O thread wakes the threads waiting in ``get``. ``tasks`` (the task
    submitter, set once it exists) is told when an object is ready or freed, and rebuilds lost ones.
    What the client's I/O loop reads here: ``releases`` (refs dropped, see ``drain_releases``),
    ``store_deletes`` ((object, node) pairs to free in stores) and ``pins`` (mappings made and let go).
    """

    def __init__(self, io):
        self.io = io
        self.lock = io.lock
        self.cond = io.cond
        self.tasks = None  # the TaskSubmitter (it needs us to exist first)
        self.entries: dict[bytes, ObjectEntry] = {}  # owned objects' states and values
        self._borrowed: dict[bytes, BorrowedValue] = {}  # fetched copies of foreign objects
        self.references = ReferenceTable()  # who still needs what: all freeing decisions
        self.releases: collections.deque = collections.deque()  # ids of refs dropped (from __del__)
        self.store_deletes: list = []  # (oid, node id) of values to delete from nodes' stores
        self.pins: collections.deque = collections.deque()  # (oid, True: mapped | False: let go), in order
        self._dead_owners: set = set()
        self._dead_suffixes: set = set()  # node_suffix() of dead nodes: owners there are gone too

    @property
    def address(self) -> str | None:
        return self.io.address

    def entry(self, oid: bytes) -> ObjectEntry | None:
        """The entry of an object we own (None once freed, or if it is not ours)."""
        return self.entries.get(oid)

    # --- reference counting: events go to the table, its actions are carried out here ----------------
    def add_local_reference(self, ref: ObjectRef) -> None:
        context = current_task.get()
        with self.lock:
            actions = self.references.add_local(ref._id, ref._owner, in_task=context is not None)
            if actions:
                self._carry_out(actions, context)

    def remove_local_reference(self, oid: bytes) -> None:
        # Runs from __del__, perhaps inside the garbage collector on any thread: no locks here
        # (a nudge is flag tests and at most a pipe write).
        self.releases.append(oid)
        self.io.nudge()

    def drain_releases(self) -> None:
        if not self.releases:
            return
        with self.lock:
            while self.releases:
                actions = self.references.remove_local(self.releases.popleft())
                if actions:
                    self._carry_out(actions)

    def _carry_out(self, actions: list, context=None) -> None:
        """Carry out the reference table's actions (called with the lock held, on any thread)."""
        for action in actions:
            kind, oid = action[0], action[1]
            if kind == "free":
                entry = self.entries.pop(oid, None)
                if entry is not None and entry.node_id is not None:
                    self.store_deletes.append((oid, entry.node_id))
                    for node_id in entry.copies or ():
                        self.store_deletes.append((oid, node_id))
                self.tasks.forget_lineage(oid)
                if entry is not None and entry.futures:  # free() of a pending object: nobody may wait on
                    self.io.call_soon(self._settle_freed, oid, entry.futures)
            elif kind == "borrow":
                self.io.call_soon(self._send_borrow, oid, action[2], True)
            elif kind == "unborrow":
                self._borrowed.pop(oid, None)
                if action[2] is not None:
                    self.io.call_soon(self._send_borrow, oid, action[2], False)
            elif kind == "defer_borrow":
                context.borrowed.append(oid)  # registered when the task ends: flush_borrows

    def _settle_freed(self, oid: bytes, futures: list) -> None:
        error = exceptions.ObjectFreedError(oid.hex(), "It was freed with free() before its value arrived.")
        for future in futures:
            if isinstance(future, tuple):  # a peer waiting in _serve_get_object
                self.io.reply(future[1], {"op": protocol.ERROR, "rid": future[2], "error": str(error)})
            elif not future.done():
                future.set_exception(error)

    def _send_borrow(self, oid: bytes, owner: str, add: bool, callback=None) -> None:
        op = protocol.ADD_BORROWER if add else protocol.REMOVE_BORROWER
        try:
            self.io.send(owner, {"op": op, "oid": oid, "addr": self.address}, callback=callback)
        except zmq.ZMQError:
            pass

    def flush_borrows(self, borrowed: list) -> None:
        """At the end of a task: tell owners about refs this worker still holds, and wait for their
        acknowledgement, so no owner frees an object between the task's reply and our registration."""
        with self.lock:
            pairs = self.references.take_deferred(borrowed)
        if not pairs:
            return
        done = threading.Semaphore(0)
        for oid, owner in pairs:
            self.io.call_soon(self._send_borrow, oid, owner, True, lambda *_: done.release())
        for _ in pairs:
            done.acquire(timeout=10)

    def pin_returned_refs(self, refs: list, caller: str) -> list:
        """A task returns a value containing ``refs`` to ``caller``: keep them until the caller (which
        gets their [id, owner] pairs, returned here, with the reply) registers as their borrower."""
        with self.lock:
            for ref in refs:
                self._carry_out(self.references.returned_inside_value(ref._id, ref._owner, caller))
        return [[ref._id, ref._owner] for ref in refs]

    def serve_add_borrower(self, identity, msg: AddBorrower, frames) -> dict:
        """Owner service: ``msg.addr`` holds a ref to our object ``msg.oid`` (acknowledged when asked)."""
        with self.lock:
            self.references.add_borrower(msg.oid, msg.addr)
        return {}

    def serve_remove_borrower(self, identity, msg: RemoveBorrower, frames) -> None:
        with self.lock:
            self._carry_out(self.references.remove_borrower(msg.oid, msg.addr))

    # --- owned objects ------------------------------------------------------------------------------
    def new_owned(self, oid: bytes) -> ObjectEntry:
        """A task's return value, pending until the task replies."""
        entry = ObjectEntry(PENDING)
        with self.lock:
            self.entries[oid] = entry
            self.references.own(oid, ready=False)
        return entry

    def ref(self, oid: bytes) -> ObjectRef:
        return ObjectRef(oid, self.address, self)

    def complete(self, oid: bytes, inline=None, node_id=None, size=0, error=None, contained=()) -> None:
        """On the I/O thread: an owned object's value (or error) is known. ``contained``: the
        (id, owner) pairs of refs inside the value, held as long as it is (the worker that made
        them holds them until we register as their borrower, which holding them here does)."""
        with self.cond:
            entry = self.entries.get(oid)
            if entry is None or entry.state != PENDING:
                if entry is None and node_id is not None:
                    self.store_deletes.append((oid, node_id))  # nobody wants it any more
                return
            entry.inline = inline
            entry.node_id = node_id
            entry.copies = None
            entry.size = size
            entry.error = error
            entry.state = FAILED if error is not None else READY
            futures, entry.futures = entry.futures, []
            self.io.changed = True
            self._carry_out(self.references.ready(oid, contained))
        for future in futures:
            self._settle_future(future, oid)
        self.tasks.object_ready(oid)

    def put(self, value) -> ObjectRef:
        data, buffers, contained = serialize(value, "the value passed to put()")
        return self.put_serialized(data, buffers, contained)

    def put_serialized(self, data, buffers, contained=()) -> ObjectRef:
        """Own a new object holding an already pickled value; small ones stay here, large ones go
        to the store."""
        oid = put_object_id()
        entry = ObjectEntry(READY)
        size = len(data) + sum(b.nbytes for b in buffers)
        if size <= INLINE_LIMIT:
            entry.inline = (data, [bytes(b) for b in buffers])
        else:
            entry.node_id = self.store_put(oid, data, buffers, self.io.client_id)
        entry.size = size
        with self.lock:
            self.entries[oid] = entry
            self._carry_out(self.references.own(oid, ready=True, contained=[(r._id, r._owner) for r in contained]))
            return ObjectRef(oid, self.address, self)

    def store_put(self, oid: bytes, data, buffers, owner_id: bytes, owner_node: bytes | None = None) -> bytes:
        """Write a value into this node's shared-memory store; returns the node id."""
        header, size = layout(data, buffers)
        reply, _ = self.io.request("node_manager", {"op": protocol.STORE_CREATE, "oid": oid, "size": size})
        if reply.full:
            raise exceptions.ObjectStoreFullError(reply.full)
        try:
            write_object(object_path(store_prefix(self.io.node_id), oid), data, buffers, header, size, reply.reuse)
        except BaseException:
            failed = {"op": protocol.STORE_SEALED, "oid": oid, "size": 0, "failed": True, "owner": owner_id}
            self.io.call_soon(self.io.send, "node_manager", failed)
            raise
        sealed = {
            "op": protocol.STORE_SEALED,
            "oid": oid,
            "size": size,
            "owner": owner_id,
            "owner_node": owner_node or self.io.node_id,
        }
        self.io.call_soon(self.io.send, "node_manager", sealed)
        return self.io.node_id

    def read_stored(self, oid: bytes, node_id: bytes):
        """Map a stored object and rebuild its value around the shared memory (no copy). An object
        held by another node is first copied into this node's store, in chunks, by the node managers.
        The object stays pinned in memory (never spilled) while the mapping lives."""
        if node_id != self.io.node_id:
            reply, _ = self.io.request(
                "node_manager", {"op": protocol.STORE_PULL, "oid": oid, "from": node_id}, timeout=None
            )
            if reply.full:
                raise exceptions.ObjectStoreFullError(reply.full)
            if not reply.found:
                raise exceptions.ObjectLostError(oid.hex(), f"It could not be fetched: {reply.lost}.")
            entry = self.entries.get(oid)
            if entry is not None:  # we own it: our copy must be freed with it
                self.io.call_soon(self.add_copy, oid, self.io.node_id)
            node_id = self.io.node_id
        path = object_path(store_prefix(node_id), oid)
        try:
            data, buffers = read_object(path)
        except FileNotFoundError:
            # Spilled: the node manager copies it back and pins it for us before it answers.
            reply, _ = self.io.request("node_manager", {"op": protocol.STORE_RESTORE, "oid": oid}, timeout=None)
            if reply.full:
                raise exceptions.ObjectStoreFullError(reply.full) from None
            if not reply.found:
                why = reply.lost or "it is no longer in the object store"
                raise exceptions.ObjectLostError(oid.hex(), f"It could not be read: {why}.") from None
            data, buffers = read_object(path)
        else:
            self.pins.append((oid, True))
        unpin = weakref.finalize(data.obj, self._unpin, oid)
        unpin.atexit = False
        return deserialize(data, buffers)

    def _unpin(self, oid: bytes) -> None:
        # Runs when the last view on a mapping goes, maybe in the garbage collector: no locks.
        self.pins.append((oid, False))
        self.io.nudge()

    def add_copy(self, oid: bytes, node_id: bytes) -> None:
        entry = self.entries.get(oid)
        if entry is not None and entry.node_id is not None and node_id != entry.node_id:
            if entry.copies is None:
                entry.copies = set()
            entry.copies.add(node_id)

    def on_node_dead(self, msg: NodeDead, frames=None) -> None:
        """On the I/O thread: a node died. Its leases' tasks are retried; owned objects it alone held
        are rebuilt by re-running their tasks (lineage) when possible, else fail with ObjectLostError."""
        node_id = msg.node_id
        self.io.forget_node(node_id)
        self.tasks.on_node_dead(node_id, msg.address)
        # Processes on that node died with it: the objects they owned are lost to their borrowers
        # here, and what they borrowed from us is no longer borrowed.
        suffix = node_suffix(node_id)
        self._dead_suffixes.add(suffix)
        gone = {b.owner for b in self._borrowed.values() if b.owner and b.owner.endswith(suffix)}
        gone |= self.references.borrowers_matching(suffix)
        for address in gone:
            self.owner_died(address)
        rebuild = []
        with self.cond:
            for oid, entry in self.entries.items():
                if entry.state != READY or entry.node_id != node_id:
                    continue
                survivors = (entry.copies or set()) - {node_id}
                if survivors:
                    entry.node_id = survivors.pop()
                    entry.copies = survivors
                elif self.tasks.can_rebuild(oid):
                    entry.state = PENDING
                    entry.node_id = None
                    rebuild.append(oid)
                else:
                    entry.state = FAILED
                    entry.error = exceptions.ObjectLostError(
                        oid.hex(),
                        f"It was stored only on node {node_id.hex()}, which died, and it cannot be rebuilt "
                        "(it came from put(), an actor call, or a task with no retries left).",
                    )
            self.io.changed = True
        self.tasks.rebuild(rebuild)

    def state_of(self, ref: ObjectRef):
        """(state, holder) where holder is an ObjectEntry or BorrowedValue; starts fetches."""
        oid = ref._id
        entry = self.entries.get(oid)
        if entry is not None:
            return entry.state, entry
        if ref._owner == self.address:
            lost = BorrowedValue()
            lost.state = FAILED
            lost.error = exceptions.ObjectFreedError(oid.hex(), "It was freed (no references were left).")
            return FAILED, lost
        borrowed = self._borrowed.get(oid)
        if borrowed is None:
            borrowed = self._borrowed[oid] = BorrowedValue(ref._owner)
            if ref._owner in self._dead_owners or ref._owner[-NODE_SUFFIX_LENGTH:] in self._dead_suffixes:
                self._fail_borrowed(oid, borrowed)
            else:
                self.io.call_soon(self._fetch, oid, ref._owner)
        return borrowed.state, borrowed

    def on_owner_died(self, msg: OwnerDied, frames=None) -> None:
        """Push from the node manager: a process that owned objects died."""
        self.owner_died(msg.addr)

    def owner_died(self, address: str) -> None:
        """On the I/O thread: a process that owned objects died; nothing it owned can be read now."""
        self._dead_owners.add(address)
        self.io.close_peer(address)
        with self.cond:
            self._carry_out(self.references.borrower_died(address))
            for oid, borrowed in list(self._borrowed.items()):
                if borrowed.state == PENDING and borrowed.owner == address:
                    self._fail_borrowed(oid, borrowed)

    def _fail_borrowed(self, oid: bytes, borrowed) -> None:
        borrowed.error = exceptions.OwnerDiedError(
            oid.hex(), f"Its owner (the process at {borrowed.owner} that created it) died."
        )
        borrowed.state = FAILED
        self.io.changed = True
        futures, borrowed.futures = borrowed.futures, []
        for future in futures:
            self._settle_future(future, oid)

    def _fetch(self, oid: bytes, owner: str) -> None:
        def on_reply(reply, frames):
            with self.cond:
                borrowed = self._borrowed.get(oid)
                if borrowed is None:
                    return
                if isinstance(reply, Error) and reply.etype == "OwnerDiedError":
                    borrowed.error = exceptions.OwnerDiedError(oid.hex(), reply.error)
                elif isinstance(reply, Error):
                    borrowed.error = exceptions.ObjectLostError(oid.hex(), reply.error)
                elif (
                    not isinstance(reply, Reply)
                    or reply.loc is None
                    or not self._unpack_location(borrowed, reply.loc, frames)
                ):
                    why = f"Its owner sent a bad answer: {reply!r}"[:500]
                    borrowed.error = exceptions.ObjectLostError(oid.hex(), why)
                borrowed.state = FAILED if borrowed.error is not None else READY
                self.io.changed = True
                futures, borrowed.futures = borrowed.futures, []
            for future in futures:
                self._settle_future(future, oid)

        request = {"op": protocol.GET_OBJECT, "oid": oid, "to": owner, "node": self.io.node_id}
        self.io.send(owner, request, callback=on_reply)

    @staticmethod
    def _unpack_location(holder, location: Location, frames) -> bool:
        """Fill ``holder`` from an owner's answer; False when the payload does not match it."""
        kind = location.kind
        if kind == "v":
            if len(frames) < 1 + location.detail:
                return False
            holder.inline = (frames[0], frames[1 : 1 + location.detail])
        elif kind == "s":
            holder.node_id = location.detail
        elif not frames:
            return False
        else:
            holder.error = frames[0]
        return True

    def serve_get_object(self, identity, msg: GetObject, frames) -> None:
        """Owner service: a borrower reads our object ``msg.oid`` (answered when its value is known)."""
        oid = msg.oid
        rid = msg.rid
        if msg.to is not None and msg.to != self.address:
            # Meant for a process that had our port before us: that owner is gone.
            error = f"Its owner {msg.to} died (another process now has its port)."
            self.io.reply(identity, {"op": protocol.ERROR, "rid": rid, "error": error, "etype": "OwnerDiedError"})
            return
        with self.lock:
            entry = self.entries.get(oid)
            if entry is None:
                self.io.reply(
                    identity,
                    {"op": protocol.ERROR, "rid": rid, "error": "The object was freed or its owner does not know it."},
                )
                return
            if entry.state == PENDING:
                entry.futures.append(("serve", identity, rid, msg.node))
                return
        self._reply_object(identity, rid, entry, oid, msg.node)

    def _reply_object(self, identity, rid, entry, oid=None, node=None) -> None:
        if entry.state == FAILED:
            error = entry.error if isinstance(entry.error, bytes) else serialize(entry.error)[0]
            self.io.reply(identity, {"op": protocol.REPLY, "rid": rid, "loc": ["e"]}, [error])
        elif entry.inline is not None:
            data, buffers = entry.inline
            self.io.reply(identity, {"op": protocol.REPLY, "rid": rid, "loc": ["v", len(buffers)]}, [data, *buffers])
        else:
            self.io.reply(identity, {"op": protocol.REPLY, "rid": rid, "loc": ["s", entry.node_id]})
            if node is not None:
                self.add_copy(oid, node)

    def _settle_future(self, future, oid: bytes) -> None:
        if isinstance(future, tuple):  # a peer waiting in _serve_get_object
            _, identity, rid, node = future
            entry = self.entries.get(oid)
            if entry is not None:
                self._reply_object(identity, rid, entry, oid, node)
            return
        if future.done():
            return
        holder = self.entries.get(oid) or self._borrowed.get(oid)
        try:
            future.set_result(self._value_of(oid, holder))
        except BaseException as error:
            future.set_exception(error)

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        future._ember_ref = ref  # keeps the object alive until the future is done
        with self.lock:
            state, holder = self.state_of(ref)
            if state == PENDING:
                holder.futures.append(future)
                return future

        # A future's callbacks may call back into us: settle outside the lock, off the I/O thread.
        self._settle_future(future, ref._id)
        return future

    def _value_of(self, oid: bytes, holder):
        if holder is None:
            raise exceptions.ObjectLostError(oid.hex(), "It was freed.")
        if holder.state == FAILED:
            error = holder.error
            if isinstance(error, (bytes, bytearray, memoryview)):
                try:
                    error = deserialize(error)
                except Exception as failure:  # e.g. its class cannot be imported here
                    error = exceptions.TaskError("task", f"The task's error could not be rebuilt here: {failure!r}")
            if isinstance(error, exceptions.TaskError):
                raise error.as_instanceof_cause()
            raise error
        if holder.inline is not None:
            data, buffers = holder.inline
            return deserialize(data, buffers)
        lost_from = holder.node_id
        try:
            return self.read_stored(oid, lost_from)
        except exceptions.ObjectLostError:
            rebuilt = self._await_rebuilt(oid, holder, lost_from)
            if rebuilt is None:
                raise
        return self._value_of(oid, rebuilt)

    def _await_rebuilt(self, oid: bytes, holder, lost_from: bytes):
        """The node holding an object died under our read. The owner learns it and rebuilds the
        object (or fails it); wait for that and return the new holder, or None to give up."""
        deadline = time.monotonic() + 60
        with self.cond:
            try:
                while True:
                    if isinstance(holder, BorrowedValue) and holder.state != PENDING and holder.node_id == lost_from:
                        # The owner's answer names the node that failed us: ask again, giving the owner
                        # time to hear of the death and start the rebuild.
                        if holder.refetches >= 5:
                            return None
                        if holder.refetches:
                            self.cond.wait(0.5)
                        holder.refetches += 1
                        holder.state, holder.node_id = PENDING, None
                        self.io.call_soon(self._fetch, oid, holder.owner)
                    if holder.state == FAILED or (holder.state == READY and holder.node_id != lost_from):
                        return holder  # failed for good (its error says why), rebuilt, or found on another node
                    if holder.state == READY and not isinstance(holder, BorrowedValue):
                        return None  # the owner (us) knows of no death: it is lost for good
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self.io.lead_once(remaining)
            finally:
                self.io.stop_leading()

    def get(self, refs: list, timeout: float | None = None) -> list:
        deadline = None if timeout is None else time.monotonic() + timeout
        holders = []
        with self.cond:
            if not self._take_ready(refs, holders):  # values already here need no waiting at all
                with Waiting(self.io) as waiting:
                    while True:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise exceptions.GetTimeoutError(
                                f"Get timed out: some object(s) not ready after {timeout} s."
                            )
                        waiting.wait(remaining)
                        if self._take_ready(refs, holders):
                            break
        return [self._value_of(ref._id, holder) for ref, holder in zip(refs, holders)]

    def _take_ready(self, refs: list, holders: list) -> bool:
        """Append to ``holders`` the holders of ``refs[len(holders):]`` while they are ready; True when
        all are. Objects never go back to pending, so each ref is checked until ready, then never again."""
        while len(holders) < len(refs):
            state, holder = self.state_of(refs[len(holders)])
            if state == PENDING:
                return False
            holders.append(holder)
        return True

    def wait(self, refs: list, num_returns: int, timeout: float | None, fetch_local: bool = True):
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: list = []
        pending = list(refs)
        with self.cond, Waiting(self.io) as waiting:
            while True:
                still = []
                for ref in pending:
                    # An ObjectRefGenerator is ready when its next() would not block.
                    is_ready = self.state_of(ref)[0] != PENDING if type(ref) is ObjectRef else ref._is_ready(self)
                    (ready if is_ready else still).append(ref)
                pending = still
                if len(ready) >= num_returns:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                waiting.wait(remaining)
        ready_ids = {id(ref) for ref in ready[:num_returns]}
        return [ref for ref in refs if id(ref) in ready_ids], [ref for ref in refs if id(ref) not in ready_ids]

    def free(self, refs: list) -> None:
        """Drop the values of owned objects now, whatever references remain (``ember.internal.free``)."""
        with self.cond:
            for ref in refs:
                self._carry_out(self.references.forget(ref._id))
