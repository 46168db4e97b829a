"""The core client: what a driver or a worker uses to talk to the cluster.

Data flow::

    user threads --call_soon(closure) + wake pipe--> event loop --DEALER--> head, node manager,
                 <--Condition / Futures------------             --DEALER--> leased workers, actors, other owners
                                                     ROUTER <-- get_object / add_borrower / cancel from peers
                                                     SUB    <-- worker logs from the head's event hub

The loop is the shared :class:`~ember.runtime.service.EventLoop` (its sockets, the wake pipe and
``call_soon``); the client adds its per-round work (``_after_round``: releases, batched sends,
waking waiters, timers). Only the thread that holds the loop lock runs it: the I/O thread, or a user
thread that leads the loop while it waits in ``get``/``wait``. User threads build task messages, then hand a
closure to whoever runs the loop; results come back through a Condition (``get``/``wait``) or
Futures (``ref.future()``).

Why a user thread may lead: a synchronous call (``get(f.remote())``) otherwise costs two thread
hand-offs on top of the transport (user -> I/O thread to send, I/O thread -> user to deliver),
each a wake-up that costs tens of microseconds on small machines. A thread waiting in ``get``
runs the loop itself when it is free, and the I/O thread stays out of its way for
``LEAD_GRACE`` seconds after, so a loop of sync calls runs with no hand-off at all.

The client is composed of parts with their own state: ``objects`` (:mod:`~ember.runtime.client.ownership`:
what this process owns and borrows, and reading values), ``submitter``
(:mod:`~ember.runtime.client.task_submitter`: how tasks and actor calls reach workers), ``peers``
(:mod:`~ember.runtime.client.peers`) and ``events`` (:mod:`~ember.runtime.client.task_events`). They
reach the sockets only through the client's ``send``/``request``/``reply``/``call_soon``.

Every message that arrives is validated where it enters (:mod:`ember.runtime.messages`): requests to
the owner service by the ``owner`` schema, pushes and replies on the DEALER sockets by the ``client``
schema. A message that does not fit is logged and dropped; it never reaches a handler.
"""

import concurrent.futures
import json
import logging
import os
import sys
import threading
import time

import msgpack
import zmq

from ember.runtime import messages, protocol, transport
from ember.runtime.client.functions import FunctionTable
from ember.runtime.client.interrupts import hold_interrupts, release_interrupts
from ember.runtime.client.logs import LogBuffer, print_log_line
from ember.runtime.client.ownership import Ownership, node_suffix
from ember.runtime.client.peers import PeerSockets
from ember.runtime.client.task_events import TaskEventBatcher
from ember.runtime.ids import new_id
from ember.runtime.messages import BadMessage, Error, decode_header
from ember.runtime.runtime_env import RuntimeEnvs
from ember.runtime.service import Dispatcher, EventLoop, SpinPolicy, read_eof
from ember.runtime.task_context import current_task

logger = logging.getLogger(__name__)

_client = None

TIMER_PERIOD = 0.02  # how often idle leases are checked for return, while we hold any
IDLE_POLL = 1.0  # the longest the I/O thread sleeps with nothing to do
LEAD_GRACE = 0.002  # how long the I/O thread stays aside after a user thread led the loop

# Errors a service may answer with that the caller should see as their own type.
_REMOTE_ERRORS = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "KeyError": KeyError,
    "BadMessage": ValueError,  # a request the service refused (ember.runtime.messages)
}

# What other packages call on the client that ``objects`` answers (bound in CoreClient.__init__).
OBJECT_CALLS = (
    "get",
    "wait",
    "put",
    "put_serialized",
    "free",
    "future_for",
    "ref",
    "new_owned",
    "complete",
    "read_stored",
    "store_put",
    "pin_returned_refs",
    "flush_borrows",
    "add_local_reference",
    "remove_local_reference",
)


def current_client(required: bool = True):
    """The client of this process (the driver's or the worker's). Never starts a cluster: only the
    public API does that, on first use (``ember.api.connected_client``)."""
    if _client is None and required:
        raise RuntimeError("This process is not connected to an Ember cluster: call ember.init() first.")
    return _client


def set_current_client(client) -> None:
    global _client
    _client = client


class CoreClient:
    """A driver's or worker's connection to the cluster: the I/O loop and the parts it drives."""

    def __init__(
        self,
        head_address: str,
        node_manager_address: str,
        *,
        kind: str,
        client_id: bytes | None = None,
        job_id: bytes | None = None,
        namespace: str | None = None,
        log_to_driver: bool = False,
        watch_stdin: bool = False,
        host: str = "127.0.0.1",
        node_id: bytes | None = None,
    ):
        self.kind = kind
        self.client_id = client_id or new_id(16)
        self.head_address = head_address
        self.node_manager_address = node_manager_address
        self.job_id = job_id
        self.namespace = namespace
        self.host = host
        self.log_to_driver = log_to_driver
        self.job_env_vars: dict = {}  # a driver's runtime_env env_vars, in its job's configuration
        # What this process's tasks and actors run in: a driver's job env, or the env this worker
        # was started in (its tasks' children inherit it, as in Ray), each submission's merged over it.
        self.runtime_envs = RuntimeEnvs(self)
        if kind == "worker" and os.environ.get("EMBER_RUNTIME_ENV"):
            self.runtime_envs.base = json.loads(os.environ["EMBER_RUNTIME_ENV"])
        self.watch_stdin = watch_stdin
        self.node_id: bytes | None = node_id
        self.resources: dict = {}
        self.address: str | None = None
        self.publisher_address: str | None = None

        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)  # notified when waiters in get/wait should look again
        self.loop = EventLoop()
        # A sync call's reply comes in tens of us: a user thread that leads the loop for it polls a
        # while before it sleeps. Only such a thread: the I/O thread spinning would contend for the
        # GIL with the user's threads (a loop of small puts lost 2% to it).
        self._spin = SpinPolicy.from_environment() if kind == "driver" else None
        self._loop_lock = threading.Lock()  # held by whoever runs the loop (touches the sockets)
        self._lead_until = 0.0  # the I/O thread stays aside until then (see lead_once)
        self._resume = threading.Event()  # wakes the I/O thread early when it stands aside
        self._held_interrupts = None  # (SIGINT handler, signals held) while the main thread leads
        self._waiting: dict = {}  # request id -> callback(reply Struct, frames)
        self.peers: PeerSockets | None = None  # made on the I/O thread, with the poller
        self.functions = FunctionTable(self)
        for name in ("export", "load_function", "job_config", "current_namespace"):
            setattr(self, name, getattr(self.functions, name))
        self._logs = LogBuffer()
        self.events = TaskEventBatcher(lambda: self.job_id)
        self.task_event = self.events.note
        self.node_addresses: dict[bytes, str] = {}  # node id -> its node manager's address
        self._dead_nodes: set = set()
        self._refreshing_nodes = False
        self.changed = False  # set on the I/O thread when waiters in get/wait should look again
        self._closed = False
        self._started = threading.Event()
        self._start_error = None

        from ember.runtime.client.task_submitter import TaskSubmitter

        self.objects = Ownership(self)
        self.references = self.objects.references
        for name in OBJECT_CALLS:
            setattr(self, name, getattr(self.objects, name))
        self.submitter = TaskSubmitter(self, self.objects)
        self.objects.tasks = self.submitter
        self._thread = threading.Thread(target=self._run, name="ember-io", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    # --- the I/O thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        loop = self.loop
        try:
            self._server, endpoint = transport.bind_router(self.host)
            # Owner addresses name a process, not just a port: a port can be reused by a new
            # process after this one dies, and borrowers must not mistake one for the other.
            # It also names our node: when a node dies, whoever borrowed from us learns we are gone.
            self.address = f"{endpoint}#{self.client_id.hex()[:12]}{node_suffix(self.node_id)}"
            self.objects.references.address = self.address
            self._head = transport.connect_dealer(self.head_address)
            self._node_manager = transport.connect_dealer(self.node_manager_address)
            loop.add_socket(self._server, self._serve_owner)
            loop.add_socket(self._head, self._on_message)
            loop.add_socket(self._node_manager, self._on_message)
            self.peers = PeerSockets(loop, self._on_message, self.submitter.uses_peer)
            self._subscriber = None
            if self.watch_stdin:
                os.set_blocking(0, False)
                loop.add_fd(0, _exit_when_closed)
        except Exception as error:
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        # Pushes by message type; every other message is a reply, matched by its request id.
        self._push_handlers = {
            **self.submitter.push_handlers(),
            messages.OwnerDied: self.objects.on_owner_died,
            messages.NodeDead: self.objects.on_node_dead,
            messages.ExitIfIdle: self._on_exit_if_idle,
        }
        owner_service = {
            protocol.GET_OBJECT: self.objects.serve_get_object,
            protocol.ADD_BORROWER: self.objects.serve_add_borrower,
            protocol.REMOVE_BORROWER: self.objects.serve_remove_borrower,
            protocol.CANCEL_TASK: self._serve_cancel,
        }
        self._owner_service = Dispatcher(owner_service, self.reply, schema="owner", name="owner service")
        self._next_tick = 0.0
        loop.after_round = self._after_round
        while not self._closed:
            with self._loop_lock:
                self._run_round(IDLE_POLL)
            self._stand_aside()
        with self._loop_lock:
            self._close_sockets()

    def _stand_aside(self) -> None:
        """On the I/O thread: while a user thread leads the loop, keep out of its way."""
        if time.monotonic() >= self._lead_until:
            return
        with self.cond:
            self.cond.notify_all()  # a thread that asked to lead may now
        # Looks again every LEAD_GRACE while a thread leads (its deadline is then infinite): when it
        # stops, what it queues next (a submission, task events) waits at most two graces for us.
        # Waking us from stop_leading instead would cost a wake-up per synchronous call.
        while not self._closed and (remaining := self._lead_until - time.monotonic()) > 0:
            self._resume.wait(min(remaining, LEAD_GRACE))
            self._resume.clear()

    def lead_once(self, timeout: float | None) -> None:
        """From a user thread holding ``cond`` (once), whose objects are pending: run one round of
        the loop here if it is free, else wait on ``cond`` for whoever runs it. Returns after a
        round or a notification; the caller checks its objects again, and calls ``stop_leading``
        when it is done waiting."""
        limit = IDLE_POLL if timeout is None else max(0.0, min(timeout, IDLE_POLL))
        # Only a driver leads. In a worker, leading made the multi-client task row (actors that each
        # submit batches and get them) 40% slower, and a worker's SIGINT is its cancellation signal.
        if self._closed or threading.current_thread() is self._thread or self.kind != "driver":
            self.cond.wait(limit)
            return
        if not self._loop_lock.acquire(blocking=False):
            # The I/O thread is polling: ask it to stand aside (it notifies us), or wait for a result.
            self._lead_until = time.monotonic() + LEAD_GRACE
            self.wake()
            self.cond.wait(limit)
            return
        self.lock.release()
        try:
            if self._held_interrupts is None and threading.current_thread() is threading.main_thread():
                self._held_interrupts = hold_interrupts(self.loop.wake_fd)
            self._lead_until = float("inf")
            if not self._closed:
                self.loop.spin = self._spin
                self._run_round(limit)
        finally:
            self.loop.spin = None
            self._lead_until = time.monotonic() + LEAD_GRACE
            self._loop_lock.release()
            self.lock.acquire()
        if self._held_interrupts and self._held_interrupts[1] and threading.current_thread() is threading.main_thread():
            self._release_interrupts()

    def _release_interrupts(self) -> None:
        guard, self._held_interrupts = self._held_interrupts, None
        release_interrupts(guard)

    def stop_leading(self) -> None:
        """After ``lead_once``: threads still waiting may lead the loop now; a held SIGINT runs."""
        with self.cond:
            self.cond.notify_all()
        if self._held_interrupts is not None and threading.current_thread() is threading.main_thread():
            self._release_interrupts()

    def _run_round(self, limit: float) -> None:
        """One round of the loop, on the thread holding the loop lock. Wakes up for timers only
        while there are leases to return or sends held back; idle, it sleeps until a message."""
        busy = self.submitter.leases or self.objects.releases or self.events
        timeout = max(0.0, self._next_tick - time.monotonic()) if busy else IDLE_POLL
        try:
            self.loop.run_once(min(timeout, limit))
        except Exception:
            # Nothing may stop the loop: every request of this process would wait forever.
            if not self._closed:
                logger.exception("error in the client's I/O loop")

    def _after_round(self) -> bool:
        """The loop's per-round work; True when it woke waiters (see EventLoop.after_round)."""
        # Until nothing is left: a release may queue calls (say, a borrower message when a freed
        # object held refs), and what is queued now must not wait for the next round.
        objects, loop = self.objects, self.loop
        while objects.releases:
            objects.drain_releases()
            loop.run_calls()
        self._flush()
        changed = self.changed
        if changed:
            # One wake-up for all the objects completed in this round, not one per object.
            with self.cond:
                self.changed = False
                self.cond.notify_all()
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TIMER_PERIOD
            self.submitter.tick(now)
            if self.peers.idle:
                self.peers.close_idle(now)
        return changed or self.changed  # a tick that failed a task notifies after the coming poll

    def _serve_owner(self, frames: list) -> None:
        self._owner_service.dispatch(frames[0], frames[1:])

    def call_soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop's thread (from any thread)."""
        self.loop.call_soon(fn, *args)

    def wake(self) -> None:
        """Make the loop run a round now (from any thread, or a finalizer)."""
        self.loop.wake()

    def nudge(self) -> None:
        """Work for the next round's ``_after_round`` was queued (from any thread, or a finalizer):
        it is done before the next poll, or at once when a thread polls."""
        self.loop.nudge()

    def _on_message(self, frames: list) -> None:
        """A push or a reply on one of our DEALER sockets; one that does not fit is dropped."""
        try:
            msg = decode_header("client", frames[0])
        except BadMessage as error:
            logger.warning("dropped a bad message: %s", error)
            return
        handler = self._push_handlers.get(type(msg))
        if handler is not None:
            handler(msg, frames[1:])
            return
        callback = self._waiting.pop(msg.rid, None)
        if callback is not None:
            callback(msg, frames[1:])

    def _on_exit_if_idle(self, header, frames) -> None:
        """The node manager has more idle workers than it wants: exit, unless something would be lost."""
        self.objects.drain_releases()
        if self.submitter.idle() and not self.objects.references.holds_anything() and self.exit_allowed():
            os._exit(0)
        self.send("node_manager", {"op": protocol.EXIT_REFUSED, "wid": self.client_id})

    exit_allowed = staticmethod(lambda: False)  # the worker sets this: True when no task runs

    def _flush(self) -> None:
        """Send what accumulated since the last round: frees, store accesses, log lines."""
        objects = self.objects
        if objects.store_deletes:
            by_node: dict = {}
            for oid, node_id in objects.store_deletes:
                by_node.setdefault(node_id, []).append(oid)
            objects.store_deletes = []
            for node_id, oids in by_node.items():
                target = "node_manager" if node_id == self.node_id else self.node_addresses.get(node_id)
                if target is None:
                    if node_id not in self._dead_nodes:  # a node we have not heard of yet: ask, then retry
                        objects.store_deletes += [(oid, node_id) for oid in oids]
                        self.refresh_nodes()
                    continue
                self.send(target, {"op": protocol.STORE_DELETE, "oids": oids})
        if objects.pins:
            pins, unpins = [], []
            while objects.pins:
                oid, mapped = objects.pins.popleft()
                (pins if mapped else unpins).append(oid)
            # Pins before unpins: a mapping made and dropped within one round is pinned, then let go.
            touch = {"op": protocol.STORE_TOUCH, "oids": pins, "unpin": unpins}
            self._node_manager.send_multipart(protocol.encode(touch))
        if self._logs:
            logs = self._logs.take()
            self._node_manager.send_multipart(protocol.encode({"op": protocol.WORKER_LOGS, "batches": logs}))
        if self.events and self.events.due(time.monotonic()):
            payload = msgpack.packb(self.events.take_due(time.monotonic()))
            self._head.send_multipart(protocol.encode({"op": protocol.TASK_EVENTS}, [payload]))

    def flush_task_events(self) -> None:
        """From any thread: send every task event this process holds to the head now, not at the end of
        its batching period. A request to the head sent after this call is answered after the head
        folded them (one socket, one loop: in order), so a view that then asks for the head's summary
        finds this process's own tasks in it."""

        def send_held():
            if self.events:
                payload = msgpack.packb(self.events.take_due(float("inf")))
                self._head.send_multipart(protocol.encode({"op": protocol.TASK_EVENTS}, [payload]))

        self.call_soon(send_held)

    def refresh_nodes(self) -> None:
        """On the I/O thread: learn the node managers' addresses from the head (once at a time)."""
        if self._refreshing_nodes:
            return
        self._refreshing_nodes = True

        def on_reply(reply, frames):
            self._refreshing_nodes = False
            for node in getattr(reply, "nodes", None) or ():
                if node["alive"]:
                    self.node_addresses[node["node_id"]] = node["address"]
                else:
                    self.forget_node(node["node_id"])

        self.send("head", {"op": protocol.GET_NODES}, callback=on_reply)

    def forget_node(self, node_id: bytes) -> None:
        address = self.node_addresses.pop(node_id, None)
        self._dead_nodes.add(node_id)
        self.objects.store_deletes = [(oid, node) for oid, node in self.objects.store_deletes if node != node_id]
        if address is not None:
            self.close_peer(address)

    # --- requests ---------------------------------------------------------------------------------
    def socket_for(self, target):
        if target == "head":
            return self._head
        if target == "node_manager":
            return self._node_manager
        return self.peers.socket(target)

    def close_peer(self, address: str | None) -> None:
        """Close our socket to a peer that is gone (or that we will not talk to again)."""
        self.peers.close(address)

    def release_peer(self, address: str | None) -> None:
        """We expect no reply from this peer now (see PeerSockets.release)."""
        self.peers.release(address)

    def send(self, target, header: dict, frames=(), callback=None) -> None:
        """On the I/O thread: send a message; ``callback(reply, frames)`` gets the reply (a Struct of
        the ``client`` schema: a ``Reply``, an ``Error``, a ``LeaseGranted``, a ``TaskResult``)."""
        if callback is not None:
            rid = header.setdefault("rid", new_id(8))
            self._waiting[rid] = callback
        self.socket_for(target).send_multipart(protocol.encode(header, frames), copy=False)

    def expect_reply(self, rid: bytes, callback) -> None:
        """On the I/O thread: ``callback(reply, frames)`` gets the reply to a message sent with ``rid``."""
        self._waiting[rid] = callback

    def forget_reply(self, rid: bytes) -> None:
        """On the I/O thread: nobody waits for the reply to ``rid`` any more (it is dropped if it comes)."""
        self._waiting.pop(rid, None)

    def request(self, target, header: dict, frames=(), timeout: float | None = 60.0):
        """From any thread: send a request and wait for its reply; returns (reply, frames), the reply
        a :class:`~ember.runtime.messages.Reply` (its fields depend on the request; None when absent).
        An error reply raises, as its own type when it is a ValueError, TypeError or KeyError."""
        future = concurrent.futures.Future()

        def on_reply(reply, payload):
            if isinstance(reply, Error):
                error_type = _REMOTE_ERRORS.get(reply.etype, RuntimeError)
                future.set_exception(error_type(reply.error or "remote error"))
            else:
                future.set_result((reply, payload))

        if threading.current_thread() is self._thread:
            raise RuntimeError("request() must not be called on the I/O thread")
        rid = header.setdefault("rid", new_id(8))
        self.call_soon(self.send, target, header, frames, on_reply)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # Nobody waits for that reply any more: its entry must not stay in the table for good.
            self.call_soon(self.forget_reply, rid)
            raise TimeoutError(f"no reply to {header['op']} from {target} within {timeout} s") from None

    def reply(self, identity: bytes, header: dict, frames=()) -> None:
        """On the I/O thread: answer a request to our owner service."""
        try:
            self._server.send_multipart([identity, *protocol.encode(header, frames)], copy=False)
        except zmq.ZMQError as error:
            logger.warning("owner service: could not answer %r: %s", identity, error)

    # --- start and stop ---------------------------------------------------------------------------
    def connect(self, pid: int | None = None) -> None:
        """Register with the node manager (and, for a driver, with the head as a new job)."""
        if self.kind == "driver":
            reply, _ = self.request(
                "head",
                {
                    "op": protocol.REGISTER_JOB,
                    "pid": os.getpid(),
                    "namespace": self.namespace,
                    "entrypoint": " ".join(sys.argv),
                },
            )
            self.job_id = reply.job_id
            self.namespace = reply.namespace
            self.publisher_address = reply.publisher  # the head's event hub (widgets subscribe)
            # What every worker running this job's tasks needs: the driver's import path (functions
            # pickled by reference live in the driver's own modules) and the job's runtime_env.
            job = {
                "sys_path": [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)],
                "env_vars": self.job_env_vars,
                "namespace": self.namespace,
            }
            self.request("head", {"op": protocol.KV_PUT, "key": b"job:" + self.job_id}, [msgpack.packb(job)])
            if self.log_to_driver:
                self.call_soon(self._subscribe_logs, reply.publisher)
        reply, _ = self.request(
            "node_manager",
            {
                "op": protocol.REGISTER_CLIENT,
                "addr": self.address,
                "client_id": self.client_id,
                "pid": pid or os.getpid(),
                "kind": self.kind,
                "job": self.job_id,
            },
        )
        self.node_id = reply.node_id
        self.call_soon(self.refresh_nodes)
        self.resources = reply.resources or {}

    def _subscribe_logs(self, publisher: str) -> None:
        self._subscriber = transport.connect_subscriber(publisher, [b"logs:" + self.job_id])
        self.loop.add_socket(self._subscriber, self._on_logs)

    def shutdown(self) -> None:
        if self._closed:
            return
        done = threading.Event()

        def flush():
            self.objects.drain_releases()
            self._flush()
            self.submitter.close()  # return leases before the node manager hears we are gone
            done.set()

        self.call_soon(flush)
        done.wait(5)
        if self.kind == "driver" and self.job_id is not None:
            try:
                self.request("head", {"op": protocol.JOB_FINISHED, "job_id": self.job_id}, timeout=5)
                self.request("node_manager", {"op": protocol.UNREGISTER_CLIENT, "client_id": self.client_id}, timeout=5)
            except Exception:
                pass  # the cluster is already gone
        self._closed = True
        self._resume.set()
        self.call_soon(lambda: None)
        self._thread.join(5)
        self.loop.close()
        if self._spin is not None:
            self._spin.close()

    def _close_sockets(self) -> None:
        for sock in [self._server, self._head, self._node_manager]:
            sock.close(0)
        self.peers.close_all()
        if self._subscriber is not None:
            self._subscriber.close(0)

    # --- logs ---------------------------------------------------------------------------------------
    def log_line(self, stream: str, text: str) -> None:
        """A line printed by this worker (any thread): it reaches the driver of its job."""
        if self._logs.add(stream, text, self.job_id):
            self.nudge()

    def _on_logs(self, frames: list) -> None:
        for stream, name, pid, text, tag in msgpack.unpackb(frames[1]):
            self.log_handler(stream, name, pid, text, tag)
        sys.stdout.flush()

    print_log_line = staticmethod(print_log_line)

    # Called on the I/O thread for each worker log line of our job; the notebook extension replaces
    # it to show a line under the cell whose ``output_tag`` the line carries.
    log_handler = print_log_line

    def notify_blocked(self, blocked: bool) -> bool:
        """A worker that waits inside a task lends its CPU to others meanwhile (nested tasks)."""
        context = current_task.get()
        if self.kind != "worker" or context is None or not context.holds_cpu:
            return False
        op = protocol.WORKER_BLOCKED if blocked else protocol.WORKER_UNBLOCKED
        self.call_soon(self.send, "node_manager", {"op": op, "wid": self.client_id})
        return True

    # --- cancellation (served for tasks this worker runs) ----------------------------------------------
    cancel_handler = None

    def _serve_cancel(self, identity, msg: messages.CancelTask, frames) -> None:
        if self.cancel_handler is not None:
            self.cancel_handler(msg.task_id, msg.recursive)


def _exit_when_closed(fd: int) -> None:
    """A worker's stdin is a pipe from its node manager: closed, the node manager died, and there
    is nothing left to work for."""
    if read_eof(fd):
        os._exit(0)
