"""The core client: what a driver or a worker uses to talk to the cluster.

Data flow::

    user threads --call_soon(closure) + wake pipe--> I/O thread --DEALER--> head, node manager,
                 <--Condition / Futures------------             --DEALER--> leased workers, actors, other owners
                                                     ROUTER <-- get_object / add_borrower / cancel from peers
                                                     SUB    <-- worker logs from the head's event hub

Only the I/O thread touches sockets. User threads build task messages, then hand a closure to the
I/O thread; results come back through a Condition (``get``/``wait``) or Futures (``ref.future()``).

This process *owns* the objects it creates (puts and the returns of tasks it submits): it holds
their small values inline, knows where large ones are stored, and counts references to them: local
ObjectRefs, tasks in flight that use them, values that contain them, and borrowers elsewhere. At zero
it frees them everywhere.
"""

import collections
import concurrent.futures
import contextvars
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import zmq

from ember import exceptions
from ember.runtime import protocol, transport
from ember.runtime.ids import new_id, put_object_id
from ember.runtime.object_ref import ObjectRef
from ember.runtime.object_store import layout, object_path, read_object, write_object
from ember.runtime.serialization import deserialize, serialize
from ember.runtime.service import read_eof, unwrap

logger = logging.getLogger(__name__)

# Values at most this big travel inline with messages; larger ones go to the shared-memory store.
INLINE_LIMIT = 100 * 1024

PENDING, READY, FAILED = 0, 1, 2

_client = None

# Errors a service may answer with that the caller should see as their own type.
_REMOTE_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError}


def current_client(required: bool = True):
    """The client of this process (the driver's or the worker's)."""
    if _client is None and required:
        from ember import api

        api.init()  # Ray initialises implicitly on first use; so do we
    return _client


def set_current_client(client) -> None:
    global _client
    _client = client


def store_prefix(node_id: bytes) -> str:
    return f"ember-{node_id.hex()[:12]}"


@dataclass
class TaskContext:
    """What a running task knows about itself (see ``ember.get_runtime_context``)."""

    task_id: bytes | None = None
    name: str = ""
    job_id: bytes | None = None
    actor_id: bytes | None = None
    assigned: dict = field(default_factory=dict)
    gpu_ids: list = field(default_factory=list)
    holds_cpu: bool = False
    borrowed: list | None = None


current_task: contextvars.ContextVar = contextvars.ContextVar("ember_current_task", default=None)


class ObjectEntry:
    """An object this process owns."""

    __slots__ = ("state", "inline", "node_id", "size", "error", "borrowers", "contained", "free_when_ready",
                 "futures")

    def __init__(self, state=PENDING):
        self.state = state
        self.inline = None  # (data, buffers) for small values
        self.node_id = None  # the node whose store holds a large value
        self.size = 0
        self.error = None  # an exception, or the pickled TaskError
        self.borrowers: set = set()
        self.contained: list = []  # ObjectRefs inside the value, kept alive as long as it is
        self.free_when_ready = False
        self.futures: list = []


class BorrowedValue:
    """A fetched copy of an object owned elsewhere, cached while this process holds refs to it."""

    __slots__ = ("state", "inline", "node_id", "error", "futures")

    def __init__(self):
        self.state = PENDING
        self.inline = self.node_id = self.error = None
        self.futures: list = []


class CoreClient:
    def __init__(self, head_address: str, node_manager_address: str, *, kind: str, client_id: bytes | None = None,
                 job_id: bytes | None = None, namespace: str | None = None, log_to_driver: bool = False,
                 watch_stdin: bool = False, host: str = "127.0.0.1"):
        self.kind = kind
        self.client_id = client_id or new_id(16)
        self.head_address = head_address
        self.node_manager_address = node_manager_address
        self.job_id = job_id
        self.namespace = namespace
        self.host = host
        self.log_to_driver = log_to_driver
        self.watch_stdin = watch_stdin
        self.node_id: bytes | None = None
        self.resources: dict = {}
        self.address: str | None = None

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._objects: dict[bytes, ObjectEntry] = {}
        self._borrowed: dict[bytes, BorrowedValue] = {}
        self._counts: dict[bytes, int] = {}
        self._owners: dict[bytes, str] = {}  # borrowed object id -> owner address
        self._registered_borrows: set = set()
        self._releases: collections.deque = collections.deque()
        self._calls: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._woken = False
        self._waiting: dict = {}  # request id -> callback(header, frames)
        self._peers: dict[str, zmq.Socket] = {}
        self._peer_handlers: dict = {}
        self._exported: set = set()
        self._functions: dict = {}
        self._job_paths: set = set()
        self._store_deletes: list = []
        self._touches: list = []
        self._logs: dict[bytes, list] = {}
        self.escaped: list = []  # refs this worker returned inside values: kept for its lifetime
        self.changed = False  # set on the I/O thread when waiters in get/wait should look again
        self._closed = False
        self._started = threading.Event()
        self._start_error = None

        from ember.runtime.task_submitter import TaskSubmitter

        self.submitter = TaskSubmitter(self)
        self._thread = threading.Thread(target=self._run, name="ember-io", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    # --- the I/O thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._poller = zmq.Poller()
            self._server, self.address = transport.bind_router(self.host)
            self._head = transport.connect_dealer(self.head_address)
            self._node_manager = transport.connect_dealer(self.node_manager_address)
            for sock in (self._server, self._head, self._node_manager):
                self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._wake_r, zmq.POLLIN)
            self._subscriber = None
            if self.watch_stdin:
                os.set_blocking(0, False)
                self._poller.register(0, zmq.POLLIN)
        except Exception as error:
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        from ember.runtime.task_submitter import PUSH_HANDLERS

        push_handlers = {op: getattr(self.submitter, name) for op, name in PUSH_HANDLERS.items()}
        server_table = {
            protocol.GET_OBJECT: self._serve_get_object,
            protocol.ADD_BORROWER: self._serve_add_borrower,
            protocol.REMOVE_BORROWER: self._serve_remove_borrower,
            protocol.CANCEL_TASK: self._serve_cancel,
        }
        next_tick = 0.0
        while not self._closed:
            try:
                events = dict(self._poller.poll(max(0.0, next_tick - time.monotonic()) * 1000))
            except zmq.ZMQError:
                if self._closed:
                    break
                raise
            for sock in events:
                if sock == self._wake_r:
                    self._woken = False
                    read_eof(self._wake_r)
                    continue
                if sock == 0:
                    if read_eof(0):
                        os._exit(0)  # our node manager died: nothing left to work for
                    continue
                for _ in range(1000):
                    try:
                        frames = unwrap(sock.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
                    try:
                        if sock is self._server:
                            self._serve(frames, server_table)
                        elif sock is self._subscriber:
                            self._on_logs(frames)
                        else:
                            self._on_message(frames, push_handlers)
                    except Exception:
                        logger.exception("error while handling a message")
                    if sock.closed:
                        break  # a handler closed it (a peer that died)
            self._run_calls()
            if self.changed:
                # One wake-up for all the objects completed in this round, not one per object.
                with self._cond:
                    self.changed = False
                    self._cond.notify_all()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 0.02
                try:
                    self._tick(now)
                except Exception:
                    logger.exception("client tick failed")
        self._close_sockets()

    def _run_calls(self) -> None:
        while self._calls:
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("error in %s", getattr(fn, "__name__", fn))
        self._drain_releases()

    def call_soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the I/O thread."""
        self._calls.append((fn, args))
        if not self._woken and threading.current_thread() is not self._thread:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _on_message(self, frames: list, push_handlers: dict) -> None:
        header, payload = protocol.decode(frames)
        handler = push_handlers.get(header["op"])
        if handler is not None:
            handler(header, payload)
            return
        callback = self._waiting.pop(header.get("rid"), None)
        if callback is not None:
            callback(header, payload)

    def _tick(self, now: float) -> None:
        self._drain_releases()
        if self._store_deletes:
            self._node_manager.send_multipart(protocol.encode({"op": protocol.STORE_DELETE, "oids": self._store_deletes}))
            self._store_deletes = []
        if self._touches:
            self._node_manager.send_multipart(protocol.encode({"op": protocol.STORE_TOUCH, "oids": self._touches}))
            self._touches = []
        if self._logs:
            with self._lock:
                logs, self._logs = self._logs, {}
            self._node_manager.send_multipart(protocol.encode({"op": protocol.WORKER_LOGS, "batches": logs}))
        self.submitter.tick(now)

    # --- requests ---------------------------------------------------------------------------------
    def socket_for(self, target):
        if target == "head":
            return self._head
        if target == "node_manager":
            return self._node_manager
        sock = self._peers.get(target)
        if sock is None:
            sock = self._peers[target] = transport.connect_dealer(target)
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def close_peer(self, address: str) -> None:
        sock = self._peers.pop(address, None)
        if sock is not None:
            self._poller.unregister(sock)
            sock.close(0)

    def send(self, target, header: dict, frames=(), callback=None) -> None:
        """On the I/O thread: send a message; ``callback(header, frames)`` gets the reply."""
        if callback is not None:
            rid = header.setdefault("rid", new_id(8))
            self._waiting[rid] = callback
        self.socket_for(target).send_multipart(protocol.encode(header, frames), copy=False)

    def request(self, target, header: dict, frames=(), timeout: float | None = 60.0):
        """From any thread: send a request and wait for its reply; returns (header, frames)."""
        future = concurrent.futures.Future()

        def on_reply(reply, payload):
            if reply.get("op") == protocol.ERROR:
                error_type = _REMOTE_ERRORS.get(reply.get("etype"), RuntimeError)
                future.set_exception(error_type(reply.get("error", "remote error")))
            else:
                future.set_result((reply, payload))

        if threading.current_thread() is self._thread:
            raise RuntimeError("request() must not be called on the I/O thread")
        self.call_soon(self.send, target, header, frames, on_reply)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no reply to {header['op']} from {target} within {timeout} s") from None

    def _serve(self, frames: list, table: dict) -> None:
        identity = frames[0]
        header, payload = protocol.decode(frames[1:])
        handler = table.get(header.get("op"))
        if handler is None:
            return
        try:
            handler(identity, header, payload)
        except Exception as error:
            logger.exception("owner service failed on %s", header.get("op"))
            if header.get("rid") is not None:
                self._reply(identity, {"op": protocol.ERROR, "rid": header["rid"], "error": str(error)})

    def _reply(self, identity: bytes, header: dict, frames=()) -> None:
        self._server.send_multipart([identity, *protocol.encode(header, frames)], copy=False)

    # --- start and stop ---------------------------------------------------------------------------
    def connect(self, pid: int | None = None) -> None:
        """Register with the node manager (and, for a driver, with the head as a new job)."""
        if self.kind == "driver":
            reply, _ = self.request("head", {"op": protocol.REGISTER_JOB, "pid": os.getpid(),
                                             "namespace": self.namespace, "entrypoint": " ".join(sys.argv)})
            self.job_id = reply["job_id"]
            self.namespace = reply["namespace"]
            # Workers import the driver's own modules (functions pickled by reference) from these.
            import msgpack

            paths = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
            self.request("head", {"op": protocol.KV_PUT, "key": b"job_sys_path:" + self.job_id},
                         [msgpack.packb(paths)])
            if self.log_to_driver:
                self.call_soon(self._subscribe_logs, reply["publisher"])
        reply, _ = self.request("node_manager", {"op": protocol.REGISTER_CLIENT, "client_id": self.client_id,
                                                 "pid": pid or os.getpid(), "kind": self.kind, "job": self.job_id})
        self.node_id = reply["node_id"]
        self.resources = reply.get("resources", {})

    def _subscribe_logs(self, publisher: str) -> None:
        self._subscriber = transport.connect_subscriber(publisher, [b"logs:" + self.job_id])
        self._poller.register(self._subscriber, zmq.POLLIN)

    def shutdown(self) -> None:
        if self._closed:
            return
        if self.kind == "driver" and self.job_id is not None:
            try:
                self.request("head", {"op": protocol.JOB_FINISHED, "job_id": self.job_id}, timeout=5)
            except Exception:
                pass
        done = threading.Event()

        def flush():
            self._drain_releases()
            self._tick(time.monotonic())
            self.submitter.close()
            done.set()

        self.call_soon(flush)
        done.wait(5)
        self._closed = True
        self.call_soon(lambda: None)
        self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _close_sockets(self) -> None:
        for sock in [self._server, self._head, self._node_manager, *self._peers.values()]:
            sock.close(0)
        if self._subscriber is not None:
            self._subscriber.close(0)

    # --- logs ---------------------------------------------------------------------------------------
    def log_line(self, stream: str, text: str) -> None:
        context = current_task.get()
        job = (context.job_id if context else None) or self.job_id or b""
        name = context.name if context else "worker"
        with self._lock:
            self._logs.setdefault(job, []).append([stream, name, os.getpid(), text])

    def _on_logs(self, frames: list) -> None:
        import msgpack

        for stream, name, pid, text in msgpack.unpackb(frames[1]):
            out = sys.stderr if stream == "stderr" else sys.stdout
            out.write(f"({name} pid={pid}) {text}\n")
        sys.stdout.flush()

    # --- functions ----------------------------------------------------------------------------------
    def export(self, key: bytes, payload: bytes) -> None:
        """Store a pickled function or class in the head's KV once; workers fetch it by key."""
        if key in self._exported:
            return
        self.request("head", {"op": protocol.KV_PUT, "key": key, "overwrite": False}, [payload])
        self._exported.add(key)

    def load_function(self, key: bytes, job_id: bytes | None = None):
        function = self._functions.get(key)
        if function is None:
            if job_id is not None and job_id not in self._job_paths:
                self._add_job_paths(job_id)
            reply, frames = self.request("head", {"op": protocol.KV_GET, "key": key})
            if not reply["found"]:
                raise RuntimeError(f"function {key.hex()} was not exported to the cluster")
            function = self._functions[key] = deserialize(frames[0])
        return function

    def _add_job_paths(self, job_id: bytes) -> None:
        import msgpack

        reply, frames = self.request("head", {"op": protocol.KV_GET, "key": b"job_sys_path:" + job_id})
        self._job_paths.add(job_id)
        if reply["found"]:
            for path in msgpack.unpackb(frames[0]):
                if path not in sys.path:
                    sys.path.append(path)

    # --- reference counting -------------------------------------------------------------------------
    def add_local_reference(self, ref: ObjectRef) -> None:
        oid = ref._id
        with self._lock:
            count = self._counts.get(oid, 0)
            self._counts[oid] = count + 1
            if count == 0 and oid not in self._objects and ref._owner != self.address:
                self._owners[oid] = ref._owner
                context = current_task.get()
                if context is not None and context.borrowed is not None:
                    context.borrowed.append(oid)  # registered when the task ends (see flush_borrows)
                elif oid not in self._registered_borrows:
                    self._registered_borrows.add(oid)
                    self.call_soon(self._send_borrow, oid, ref._owner, True)

    def remove_local_reference(self, oid: bytes) -> None:
        # Runs from __del__, perhaps inside the garbage collector on any thread: no locks here.
        self._releases.append(oid)

    def _drain_releases(self) -> None:
        if not self._releases:
            return
        with self._lock:
            while self._releases:
                oid = self._releases.popleft()
                count = self._counts.get(oid, 0) - 1
                if count > 0:
                    self._counts[oid] = count
                    continue
                self._counts.pop(oid, None)
                self._maybe_free(oid)

    def _maybe_free(self, oid: bytes) -> None:
        if self._counts.get(oid):
            return
        entry = self._objects.get(oid)
        if entry is None:
            self._borrowed.pop(oid, None)
            owner = self._owners.pop(oid, None)
            if oid in self._registered_borrows:
                self._registered_borrows.discard(oid)
                if owner is not None:
                    self._send_borrow(oid, owner, False)
            return
        if entry.borrowers:
            return
        if entry.state == PENDING:
            entry.free_when_ready = True
            return
        del self._objects[oid]
        if entry.node_id is not None:
            self._store_deletes.append(oid)
        entry.contained = []

    def _send_borrow(self, oid: bytes, owner: str, add: bool, callback=None) -> None:
        op = protocol.ADD_BORROWER if add else protocol.REMOVE_BORROWER
        try:
            self.send(owner, {"op": op, "oid": oid, "addr": self.address}, callback=callback)
        except zmq.ZMQError:
            pass

    def flush_borrows(self, borrowed: list) -> None:
        """At the end of a task: tell owners about refs this worker still holds, and wait for their
        acknowledgement, so no owner frees an object between the task's reply and our registration."""
        with self._lock:
            pending = [oid for oid in borrowed if self._counts.get(oid) and oid not in self._registered_borrows]
            self._registered_borrows.update(pending)
        if not pending:
            return
        done = threading.Semaphore(0)
        for oid in pending:
            self.call_soon(self._send_borrow, oid, self._owners[oid], True, lambda *_: done.release())
        for _ in pending:
            done.acquire(timeout=10)

    def _serve_add_borrower(self, identity, header, frames) -> None:
        with self._lock:
            entry = self._objects.get(header["oid"])
            if entry is not None:
                entry.borrowers.add(header["addr"])
        if header.get("rid") is not None:
            self._reply(identity, {"op": protocol.REPLY, "rid": header["rid"]})

    def _serve_remove_borrower(self, identity, header, frames) -> None:
        with self._lock:
            entry = self._objects.get(header["oid"])
            if entry is not None:
                entry.borrowers.discard(header["addr"])
                self._maybe_free(header["oid"])

    # --- owned objects ------------------------------------------------------------------------------
    def new_owned(self, oid: bytes, state=PENDING) -> ObjectEntry:
        entry = ObjectEntry(state)
        with self._lock:
            self._objects[oid] = entry
        return entry

    def ref(self, oid: bytes) -> ObjectRef:
        return ObjectRef(oid, self.address, self)

    def complete(self, oid: bytes, inline=None, node_id=None, size=0, error=None) -> None:
        """On the I/O thread: an owned object's value (or error) is known."""
        with self._cond:
            entry = self._objects.get(oid)
            if entry is None or entry.state != PENDING:
                if entry is None and node_id is not None:
                    self._store_deletes.append(oid)  # nobody wants it any more
                return
            entry.inline = inline
            entry.node_id = node_id
            entry.size = size
            entry.error = error
            entry.state = FAILED if error is not None else READY
            futures, entry.futures = entry.futures, []
            self.changed = True
            if entry.free_when_ready:
                entry.free_when_ready = False
                self._maybe_free(oid)
        for future in futures:
            self._settle_future(future, oid)
        self.submitter.object_ready(oid)

    def put(self, value, owner_address: str | None = None) -> ObjectRef:
        data, buffers, contained = serialize(value, "the value passed to put()")
        oid = put_object_id()
        entry = ObjectEntry(READY)
        entry.contained = contained
        size = len(data) + sum(b.nbytes for b in buffers)
        if size <= INLINE_LIMIT:
            entry.inline = (data, [bytes(b) for b in buffers])
        else:
            entry.node_id = self.store_put(oid, data, buffers, self.client_id)
        entry.size = size
        with self._lock:
            self._objects[oid] = entry
            return ObjectRef(oid, self.address, self)

    def store_put(self, oid: bytes, data, buffers, owner_id: bytes) -> bytes:
        """Write a value into this node's shared-memory store; returns the node id."""
        header, size = layout(data, buffers)
        reply, _ = self.request("node_manager", {"op": protocol.STORE_CREATE, "oid": oid, "size": size})
        if reply.get("full"):
            raise exceptions.ObjectStoreFullError(reply["full"])
        try:
            write_object(object_path(store_prefix(self.node_id), oid), data, buffers, header, size)
        except BaseException:
            self.call_soon(self._node_manager.send_multipart, protocol.encode(
                {"op": protocol.STORE_SEALED, "oid": oid, "size": 0, "reserved": size, "owner": owner_id}))
            raise
        self.call_soon(self._node_manager.send_multipart, protocol.encode(
            {"op": protocol.STORE_SEALED, "oid": oid, "size": size, "owner": owner_id}))
        return self.node_id

    def read_stored(self, oid: bytes, node_id: bytes):
        """Map a stored object and rebuild its value around the shared memory (no copy)."""
        path = object_path(store_prefix(node_id), oid)
        try:
            data, buffers = read_object(path)
        except FileNotFoundError:
            reply, _ = self.request("node_manager", {"op": protocol.STORE_RESTORE, "oid": oid})
            if reply.get("full"):
                raise exceptions.ObjectStoreFullError(reply["full"]) from None
            if not reply.get("found"):
                raise exceptions.ObjectLostError(oid.hex(), "It is no longer in the object store.") from None
            data, buffers = read_object(path)
        else:
            self._touches.append(oid)
        return deserialize(data, buffers)

    # --- get / wait -----------------------------------------------------------------------------
    def _state_of(self, ref: ObjectRef):
        """(state, holder) where holder is an ObjectEntry or BorrowedValue; starts fetches."""
        oid = ref._id
        entry = self._objects.get(oid)
        if entry is not None:
            return entry.state, entry
        if ref._owner == self.address:
            lost = BorrowedValue()
            lost.state = FAILED
            lost.error = exceptions.ObjectFreedError(oid.hex(), "It was freed (no references were left).")
            return FAILED, lost
        borrowed = self._borrowed.get(oid)
        if borrowed is None:
            borrowed = self._borrowed[oid] = BorrowedValue()
            self.call_soon(self._fetch, oid, ref._owner)
        return borrowed.state, borrowed

    def _fetch(self, oid: bytes, owner: str) -> None:
        def on_reply(header, frames):
            with self._cond:
                borrowed = self._borrowed.get(oid)
                if borrowed is None:
                    return
                if header["op"] == protocol.ERROR:
                    borrowed.error = exceptions.ObjectLostError(oid.hex(), header.get("error", ""))
                else:
                    self._unpack_location(borrowed, header["loc"], frames)
                borrowed.state = FAILED if borrowed.error is not None else READY
                self.changed = True
                futures, borrowed.futures = borrowed.futures, []
            for future in futures:
                self._settle_future(future, oid)

        self.send(owner, {"op": protocol.GET_OBJECT, "oid": oid}, callback=on_reply)

    @staticmethod
    def _unpack_location(holder, location, frames) -> None:
        kind = location[0]
        if kind == "v":
            holder.inline = (frames[0], frames[1:1 + location[1]])
        elif kind == "s":
            holder.node_id = location[1]
        else:
            holder.error = frames[0]

    def _serve_get_object(self, identity, header, frames) -> None:
        oid = header["oid"]
        rid = header["rid"]
        with self._lock:
            entry = self._objects.get(oid)
            if entry is None:
                self._reply(identity, {"op": protocol.ERROR, "rid": rid,
                                       "error": "The object was freed or its owner does not know it."})
                return
            if entry.state == PENDING:
                entry.futures.append(("serve", identity, rid))
                return
        self._reply_object(identity, rid, entry)

    def _reply_object(self, identity, rid, entry) -> None:
        if entry.state == FAILED:
            error = entry.error if isinstance(entry.error, bytes) else serialize(entry.error)[0]
            self._reply(identity, {"op": protocol.REPLY, "rid": rid, "loc": ["e"]}, [error])
        elif entry.inline is not None:
            data, buffers = entry.inline
            self._reply(identity, {"op": protocol.REPLY, "rid": rid, "loc": ["v", len(buffers)]}, [data, *buffers])
        else:
            self._reply(identity, {"op": protocol.REPLY, "rid": rid, "loc": ["s", entry.node_id]})

    def _settle_future(self, future, oid: bytes) -> None:
        if isinstance(future, tuple):  # a peer waiting in _serve_get_object
            _, identity, rid = future
            entry = self._objects.get(oid)
            if entry is not None:
                self._reply_object(identity, rid, entry)
            return
        if future.done():
            return
        holder = self._objects.get(oid) or self._borrowed.get(oid)
        try:
            future.set_result(self._value_of(oid, holder))
        except BaseException as error:
            future.set_exception(error)

    def future_for(self, ref: ObjectRef) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        future._ember_ref = ref  # keeps the object alive until the future is done
        with self._lock:
            state, holder = self._state_of(ref)
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
                error = deserialize(error)
            if isinstance(error, exceptions.TaskError):
                raise error.as_instanceof_cause()
            raise error
        if holder.inline is not None:
            data, buffers = holder.inline
            return deserialize(data, buffers)
        return self.read_stored(oid, holder.node_id)

    def get(self, refs: list, timeout: float | None = None) -> list:
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = False
        holders = []
        try:
            with self._cond:
                # Objects never go back to pending, so each ref is checked until ready, then never again.
                while len(holders) < len(refs):
                    state, holder = self._state_of(refs[len(holders)])
                    if state != PENDING:
                        holders.append(holder)
                        continue
                    if not blocked:
                        blocked = self._notify_blocked(True)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise exceptions.GetTimeoutError(
                            f"Get timed out: some object(s) not ready after {timeout} s.")
                    self._cond.wait(remaining if remaining is not None else 1.0)
        finally:
            if blocked:
                self._notify_blocked(False)
        return [self._value_of(ref._id, holder) for ref, holder in zip(refs, holders)]

    def _notify_blocked(self, blocked: bool) -> bool:
        """A worker that waits inside a task lends its CPU to others meanwhile (nested tasks)."""
        context = current_task.get()
        if self.kind != "worker" or context is None or not context.holds_cpu:
            return False
        op = protocol.WORKER_BLOCKED if blocked else protocol.WORKER_UNBLOCKED
        self.call_soon(self.send, "node_manager", {"op": op, "wid": self.client_id})
        return True

    def wait(self, refs: list, num_returns: int, timeout: float | None, fetch_local: bool = True):
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = False
        ready: list = []
        pending = list(refs)
        try:
            with self._cond:
                while True:
                    still = []
                    for ref in pending:
                        (ready if self._state_of(ref)[0] != PENDING else still).append(ref)
                    pending = still
                    if len(ready) >= num_returns:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    if not blocked:
                        blocked = self._notify_blocked(True)
                    self._cond.wait(remaining if remaining is not None else 1.0)
        finally:
            if blocked:
                self._notify_blocked(False)
        ready_ids = {ref._id for ref in ready[:num_returns]}
        return [ref for ref in refs if ref._id in ready_ids], [ref for ref in refs if ref._id not in ready_ids]

    def free(self, refs: list) -> None:
        """Drop the values of owned objects now, whatever references remain (``ember.internal.free``)."""
        with self._cond:
            for ref in refs:
                entry = self._objects.pop(ref._id, None)
                if entry is not None and entry.node_id is not None:
                    self._store_deletes.append(ref._id)

    # --- cancellation (served for tasks this worker runs) ----------------------------------------------
    cancel_handler = None

    def _serve_cancel(self, identity, header, frames) -> None:
        if self.cancel_handler is not None:
            self.cancel_handler(header["task_id"], header.get("recursive", True))
