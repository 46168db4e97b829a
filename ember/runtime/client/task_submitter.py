"""Submitting tasks and actor calls: the owner's side of the hot path.

Data flow (all on the client's I/O thread but for ``submit_*``, which build the message)::

    submit_task --> wait for owned arguments --> queue per resource shape --> leased workers (pipelined)
                                                      |  request_lease / return_lease (node manager)
                                                      v
                     task_result / stream_item <-- worker --> owner records values, retries on crash

    submit_actor_task --> per-actor queue, in submission order --> the actor's worker
                          actor_update (head): RESTARTING resends unacknowledged calls, DEAD fails them

A lease is kept while tasks of its shape are queued and returned shortly after its worker goes idle.
"""

import collections
import logging
import os
import sys
import time
from functools import partial

from ember import exceptions
from ember.runtime import protocol
from ember.runtime.client.actor_calls import ActorCalls
from ember.runtime.client.object_ref import ObjectRefGenerator
from ember.runtime.client.ownership import FAILED, PENDING
from ember.runtime.client.streams import StreamValues
from ember.runtime.client.task_builder import build_spec
from ember.runtime.client.task_spec import (
    Arg,  # noqa: F401 - the worker imports it from here
    Lease,
    ShapeQueue,
    TaskSpec,
    describe,
    refused_result,
)
from ember.runtime.ids import new_id, task_id_of
from ember.runtime.messages import (
    ActorUpdate,
    Error,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseInfeasible,
    Reply,
    StreamItem,
    TaskResult,
)
from ember.runtime.serialization import deserialize

PIPELINE = 2  # tasks sent ahead to one leased worker
MAX_LEASE_REQUESTS = 8  # outstanding lease requests per resource shape
LOCALITY_MIN_BYTES = 1 << 20  # arguments smaller than this are cheaper to move than to chase
LEASE_LINGER = 0.05  # seconds an idle lease is kept for the next task of its shape

logger = logging.getLogger(__name__)


class TaskSubmitter:
    """The tasks this process owns, from submission to their results (``client.submitter``).

    ``client`` is the core client (sends, replies expected, task events); ``objects`` its
    :class:`~ember.runtime.client.ownership.Ownership`, where arguments are read and results go.
    Actor calls go through ``actor_calls`` (an :class:`ActorCalls`), which shares the task specs,
    argument resolution (``resolve``), results (``record``, ``fail``) and retries (``should_retry``).
    """

    def __init__(self, client, objects):
        self.client = client
        self.objects = objects
        self.shapes: dict = {}
        self.leases: dict = {}  # worker id -> Lease
        self.specs: dict = {}  # task id -> TaskSpec, for every unfinished task this process owns
        self.dep_waiters: dict = collections.defaultdict(list)
        self.actor_calls = ActorCalls(self)
        self.streams: dict = {}  # task id -> Stream of the generator tasks running
        self.stream_values = StreamValues(client, objects)
        self.lineage: dict = {}  # task id -> TaskSpec of finished tasks whose stored returns may need rebuilding

    @property
    def actors(self) -> dict:
        """Actor id -> ActorState of the actors we call."""
        return self.actor_calls.actors

    def create_actor(self, actor_id: bytes, class_key: bytes, args, kwargs, spec_fields: dict):
        return self.actor_calls.create_actor(actor_id, class_key, args, kwargs, spec_fields)

    def submit_actor_task(self, actor_id: bytes, method: str, args, kwargs, **options):
        return self.actor_calls.submit_actor_task(actor_id, method, args, kwargs, **options)

    def release_actor(self, actor_id: bytes) -> None:
        self.actor_calls.release_actor(actor_id)

    def push_handlers(self) -> dict:
        """The pushes (by message type) that the client's I/O loop hands to us."""
        return {
            LeaseInfeasible: self.on_infeasible,
            LeasedWorkerDied: self.on_leased_worker_died,
            ActorUpdate: self.actor_calls.on_actor_update,
            StreamItem: self.on_stream_item,
        }

    # --- building tasks (caller's thread) -----------------------------------------------------------
    def new_spec(self, name, num_returns, args, kwargs, header) -> TaskSpec:
        """On the caller's thread: a task's spec, its arguments pickled (see task_builder)."""
        return build_spec(self.client, self.objects, name, num_returns, args, kwargs, header)

    def outputs(self, spec: TaskSpec):
        objects = self.objects
        with objects.lock:
            for oid in spec.return_ids:
                objects.new_owned(oid)
            refs = [objects.ref(oid) for oid in spec.return_ids]
        if spec.stream is not None and not spec.stream.dynamic:
            return ObjectRefGenerator(spec.stream, self.stream_values)
        return refs

    def submit_task(
        self,
        function_key: bytes,
        name: str,
        args,
        kwargs,
        *,
        num_returns,
        resources: dict,
        max_retries: int,
        retry_exceptions,
        env_vars=None,
        max_calls: int = 0,
        strategy=None,
        placement_group=None,
        task_events: bool = True,
    ):
        header = {
            "op": protocol.EXECUTE_TASK,
            "fid": function_key,
            "nret": num_returns,
            "env": env_vars,
            "max_calls": max_calls,
        }
        if placement_group is not None:
            header["pg"] = placement_group
        spec = self.new_spec(name, num_returns, args, kwargs, header)
        spec.resources = spec.running = resources
        spec.strategy = strategy
        spec.key = (tuple(sorted(resources.items())), repr(strategy))
        spec.retries_left = max_retries
        spec.retry_exceptions = retry_exceptions
        spec.events = task_events
        outputs = self.outputs(spec)
        self.client.call_soon(self.submit, spec)
        return outputs

    # --- dependencies -------------------------------------------------------------------------------
    def submit(self, spec: TaskSpec) -> None:
        self.specs[spec.task_id] = spec
        if spec.events:
            self.client.task_event(
                "submitted",
                spec.task_id,
                name=spec.name,
                parent=spec.parent,
                deps=[ref._id for _, ref in spec.refs],
                actor=spec.actor,
                tag=spec.header.get("tag"),
            )
        if spec.stream is not None:
            self.streams[spec.task_id] = spec.stream
        objects = self.objects.entries
        for _, ref in spec.refs:
            entry = objects.get(ref._id)
            if entry is not None and entry.state == PENDING:
                spec.pending += 1
                self.dep_waiters[ref._id].append(spec)
        if spec.actor is not None:
            self.actor_calls.enqueue(spec)
        elif spec.pending == 0:
            self._enqueue(spec)

    def object_ready(self, oid: bytes) -> None:
        for spec in self.dep_waiters.pop(oid, ()):
            spec.pending -= 1
            if spec.pending:
                continue
            if spec.actor is not None:
                self.actor_calls.argument_ready(spec)
            elif not spec.cancelled:
                self._enqueue(spec)

    def resolve(self, spec: TaskSpec, node: bytes | None):
        """Fill in the arguments' values; returns (frames, None) or (None, error of a failed argument).
        ``node`` is where the task will run: a stored argument it pulls there is a copy we must free."""
        objects = self.objects.entries
        frames = list(spec.frames)
        entries = []
        argobj = spec.header.get("argobj")
        if argobj is not None and node is not None and node != argobj[1]:
            self.objects.add_copy(argobj[0], node)
        for key, ref in spec.refs:
            if ref._owner != self.client.address:
                entries.append([key, "r", ref._id, ref._owner])
                continue
            entry = objects.get(ref._id)
            if entry is None:
                return None, exceptions.ObjectLostError(ref.hex(), "An argument of the task was freed.")
            if entry.state == FAILED:
                return None, entry.error
            if entry.inline is not None:
                data, buffers = entry.inline
                entries.append([key, "v", len(frames), len(buffers)])
                frames += [data, *buffers]
            else:
                entries.append([key, "s", ref._id, entry.node_id])
                if node is not None and node != entry.node_id:
                    self.objects.add_copy(ref._id, node)
        spec.header["refs"] = entries
        return frames, None

    # --- normal tasks -------------------------------------------------------------------------------
    def _enqueue(self, spec: TaskSpec, front: bool = False) -> None:
        target = self._locality_target(spec) if spec.strategy is None else "node_manager"
        key = spec.key if target == "node_manager" else (*spec.key[:2], target)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = ShapeQueue(spec.resources, spec.running, spec.strategy, target, spec.name)
        if front:
            shape.queue.appendleft(spec)
        else:
            shape.queue.append(spec)
        self._pump(key)

    def _locality_target(self, spec: TaskSpec) -> str:
        """Data locality: a task whose stored arguments are mostly on another node asks that node's
        manager first (as Ray's owners do), so the arguments need not travel."""
        if not spec.refs:
            return "node_manager"
        client = self.client
        weight: dict = {}
        for _, ref in spec.refs:
            entry = self.objects.entry(ref._id)
            if entry is not None and entry.node_id is not None:
                weight[entry.node_id] = weight.get(entry.node_id, 0) + entry.size
        if not weight:
            return "node_manager"
        node_id = max(weight, key=weight.get)
        if node_id == client.node_id or weight[node_id] < LOCALITY_MIN_BYTES:
            return "node_manager"
        return client.node_addresses.get(node_id, "node_manager")

    def _pump(self, key) -> None:
        shape = self.shapes[key]
        leases = [lease for lease in shape.leases.values() if not lease.retiring]
        # 1. Every idle leased worker gets a task.
        for lease in leases:
            if shape.queue and not lease.inflight:
                self._dispatch(shape.queue.popleft(), lease)
        # 2. Ask for more workers for what is left.
        wanted = min(len(shape.queue), MAX_LEASE_REQUESTS) - len(shape.requests)
        for _ in range(wanted):
            self._request_lease(key, shape, shape.target)
        # 3. Send a task ahead to a busy worker only when the workers on their way could not take
        # them all: tasks that can run in parallel must not queue behind one another.
        while len(shape.queue) > len(shape.requests):
            lease = min(leases, key=lambda lease: len(lease.inflight), default=None)
            if lease is None or len(lease.inflight) >= PIPELINE:
                break
            self._dispatch(shape.queue.popleft(), lease)
        if not shape.queue and shape.requests:
            # The answer to each request (a grant that crossed the cancel, or "cancelled") still
            # comes to _on_lease, which returns a lease nobody needs.
            for rid, manager in shape.requests.items():
                self.client.send(manager, {"op": protocol.CANCEL_LEASE_REQUEST, "rid": rid})
            shape.withdrawn.update(shape.requests)
            shape.requests.clear()

    def _request_lease(self, key, shape: ShapeQueue, manager: str, spilled: bool = False) -> None:
        rid = new_id(8)
        shape.requests[rid] = manager
        header = {
            "op": protocol.REQUEST_LEASE,
            "rid": rid,
            "res": shape.resources,
            "run": shape.running,
            "actor": False,
            "what": shape.what,
        }
        if shape.strategy is not None:
            header["strategy"] = shape.strategy
        if spilled:
            header["spilled"] = True
        if manager != "node_manager":
            # Another node's manager leases only to registered clients; registering right before
            # each request (on the same socket) also covers a socket that reconnected meanwhile.
            register = {"op": protocol.REGISTER_CLIENT, "client_id": self.client.client_id, "pid": os.getpid()}
            self.client.send(manager, {**register, "kind": "peer"})
        self.client.send(manager, header, callback=partial(self._on_lease, key, rid))

    def _on_lease(self, key, rid, reply, frames) -> None:
        shape = self.shapes[key]
        manager = shape.requests.pop(rid, None) or shape.withdrawn.pop(rid, None)
        if manager is None or (isinstance(reply, Reply) and reply.cancelled):
            return
        if isinstance(reply, Error):
            error = exceptions.TaskUnschedulableError(reply.error or "the task cannot be scheduled")
            while shape.queue:
                self.fail(shape.queue.popleft(), error)
            return
        if isinstance(reply, Reply) and reply.spillback is not None and reply.address is not None:
            # Another node should run it: ask that node's manager, which grants it there.
            self.client.node_addresses.setdefault(reply.spillback, reply.address)
            if shape.queue:
                self._request_lease(key, shape, reply.address, spilled=True)
            return
        if not isinstance(reply, LeaseGranted):
            logger.warning("dropped an answer to a lease request that is not one: %r", reply)
            self._pump(key)  # the request is gone: ask again for what is queued
            return
        lease = Lease(reply, key, manager)
        shape.leases[lease.worker_id] = lease
        self.leases[lease.worker_id] = lease
        if not shape.queue:
            self._return_lease(lease)
            return
        self._pump(key)

    def _return_lease(self, lease: Lease) -> None:
        self.shapes[lease.key].leases.pop(lease.worker_id, None)
        self.leases.pop(lease.worker_id, None)
        self.client.send(lease.manager, {"op": protocol.RETURN_LEASE, "wid": lease.worker_id})
        # The worker may be leased to us again soon (keep the socket), or exit idle (close it later).
        self.client.release_peer(lease.address)
        self.client.release_peer(lease.client_address)

    def uses_peer(self, address: str) -> bool:
        """Whether a lease we hold talks to ``address``."""
        return any(address in (lease.address, lease.client_address) for lease in self.leases.values())

    def _close_worker_peers(self, lease: Lease) -> None:
        self.client.close_peer(lease.address)
        self.client.close_peer(lease.client_address)

    def _dispatch(self, spec: TaskSpec, lease: Lease) -> None:
        frames, error = self.resolve(spec, lease.node_id)
        if error is not None:
            self.fail(spec, error)
            return
        header = spec.header
        header["res"] = lease.assigned
        header["gpus"] = lease.gpus
        spec.lease = lease
        lease.inflight[spec.task_id] = spec
        self.client.send(lease.address, header, frames)
        if spec.events:
            self.client.task_event("running", spec.task_id, node=lease.node_id, worker=lease.worker_id, pid=lease.pid)
        self.client.expect_reply(spec.task_id, partial(self._on_result, spec))

    def _on_result(self, spec: TaskSpec, result, frames) -> None:
        lease = spec.lease
        spec.lease = None
        refused = refused_result(spec, result, frames)
        if lease is not None:
            lease.inflight.pop(spec.task_id, None)
            if refused is None and result.retire:
                lease.retiring = True
        if refused is not None:
            self.fail(spec, refused)
        elif result.rejected:
            self._enqueue(spec, front=True)
        elif result.err and self.should_retry(spec, frames[0]):
            spec.retries_left -= 1 if spec.retries_left > 0 else 0
            self._enqueue(spec)
        else:
            self.record(spec, result, frames)
        if lease is not None:
            if lease.retiring and not lease.inflight:
                self.shapes[lease.key].leases.pop(lease.worker_id, None)
                self.leases.pop(lease.worker_id, None)
                self._close_worker_peers(lease)  # it exits now (max_calls): one socket per task otherwise
            elif not lease.inflight:
                lease.idle_since = time.monotonic()
            self._pump(lease.key)

    def should_retry(self, spec: TaskSpec, error_bytes) -> bool:
        if spec.cancelled or spec.retries_left == 0 or not spec.retry_exceptions:
            return False
        if spec.stream is not None and spec.stream.items:
            return False  # its consumer already has the first values: a rerun would repeat them
        if spec.retry_exceptions is True:
            return True
        try:
            cause = deserialize(error_bytes).cause
        except Exception:
            return False
        return isinstance(cause, tuple(spec.retry_exceptions))

    def record(self, spec: TaskSpec, result: TaskResult, frames) -> None:
        """A task's values (or its error), checked by ``refused_result``, become its return objects."""
        complete = self.objects.complete
        if result.err:
            error = bytes(frames[0])
            if spec.stream is not None:
                self.stream_values.item(spec, len(spec.stream.items), None, frames)
            if spec.stream is not None and spec.stream.dynamic:
                # As in Ray, the values yielded before the error stay readable; the error is the last one.
                self.stream_values.complete_dynamic(spec)
            for oid in spec.return_ids:
                complete(oid, error=error)
            self._finish(spec, error=describe(error), ran=result.ran)
            return
        elif spec.stream is not None and spec.stream.dynamic:
            self.stream_values.complete_dynamic(spec)
        elif spec.stream is None:
            position = 0
            stored = False
            for oid, ret in zip(spec.return_ids, result.rets):
                contained = [(inner.oid, inner.owner) for inner in ret.refs]
                if ret.kind == "v":
                    value_frames = frames[position : position + 1 + ret.first]
                    complete(oid, inline=(value_frames[0], value_frames[1:]), size=ret.second, contained=contained)
                    position += 1 + ret.first
                else:
                    complete(oid, node_id=ret.second, size=ret.first, contained=contained)
                    stored = True
            if stored and spec.actor is None and spec.retries_left != 0:
                # Lineage: a stored return dies with its node; re-running the task rebuilds it, so
                # the task (and its arguments) stays known while any of its returns is referenced.
                self.lineage[spec.task_id] = spec
                self._finish(spec, keep_arguments=True, ran=result.ran)
                return
        self._finish(spec, ran=result.ran)

    def _finish(self, spec: TaskSpec, error=None, keep_arguments: bool = False, ran: float | None = None) -> None:
        """``ran``: the seconds the worker says it ran the task (without the time it was queued there)."""
        self.specs.pop(spec.task_id, None)
        if spec.events:
            fields = {} if ran is None else {"ran": ran}
            if error is None:
                self.client.task_event("finished", spec.task_id, **fields)
            else:
                self.client.task_event("failed", spec.task_id, error=error, **fields)
        if spec.stream is not None:
            spec.stream.done = True
            self.streams.pop(spec.task_id, None)
            self.client.changed = True  # a consumer waiting in next() looks again
            if spec.stream.dynamic:
                spec.stream.items = []  # values of a task that failed before the end: nobody can read them
        if not keep_arguments:
            spec.keepalive = None

    def fail(self, spec: TaskSpec, error) -> None:
        if spec.stream is not None and not spec.stream.dynamic:
            oid = self.stream_values.new_item(spec, len(spec.stream.items))
            self.objects.complete(oid, error=error)
        for oid in spec.return_ids:
            self.objects.complete(oid, error=error)
        self._finish(spec, error=describe(error))

    def on_leased_worker_died(self, msg: LeasedWorkerDied, frames) -> None:
        """Push from the node manager: a worker leased to us died."""
        self.lease_lost(msg.wid)

    def lease_lost(self, worker_id: bytes) -> None:
        """A leased worker is gone: its tasks are retried (or fail when they have no retries left)."""
        lease = self.leases.pop(worker_id, None)
        if lease is None:
            return
        self.shapes[lease.key].leases.pop(lease.worker_id, None)
        self._close_worker_peers(lease)
        for spec in list(lease.inflight.values()):
            spec.lease = None
            self.client.forget_reply(spec.task_id)
            if spec.cancelled:
                self.fail(spec, exceptions.TaskCancelledError(f"Task {spec.name} was cancelled (force=True)."))
            elif lease.retiring:
                self._enqueue(spec, front=True)
            elif spec.retries_left != 0 and (spec.stream is None or not spec.stream.items):
                spec.retries_left -= 1 if spec.retries_left > 0 else 0
                self._enqueue(spec, front=True)
            else:
                self.fail(
                    spec,
                    exceptions.WorkerCrashedError(
                        f"The worker running task {spec.name} died unexpectedly (SIGKILL, out of memory, or "
                        "os._exit) and the task has no retries left (max_retries)."
                    ),
                )
        self._pump(lease.key)

    # --- node failure ---------------------------------------------------------------------------
    def on_node_dead(self, node_id: bytes, address: str | None) -> None:
        """Leases on a dead node are lost like dead workers (their tasks retried); lease requests
        waiting there are asked again elsewhere."""
        for lease in [lease for lease in self.leases.values() if lease.node_id == node_id]:
            self.lease_lost(lease.worker_id)
        for key, shape in list(self.shapes.items()):
            lost = [rid for rid, manager in shape.requests.items() if manager == address]
            for rid in lost:
                del shape.requests[rid]
                self.client.forget_reply(rid)
            for rid in [rid for rid, manager in shape.withdrawn.items() if manager == address]:
                del shape.withdrawn[rid]  # no answer will come
                self.client.forget_reply(rid)
            if shape.target == address:
                shape.target = "node_manager"
            if lost:
                self._pump(key)

    def can_rebuild(self, oid: bytes) -> bool:
        spec = self.lineage.get(task_id_of(oid))
        return spec is not None and spec.retries_left != 0

    def rebuild(self, oids: list) -> None:
        """Re-run the tasks that made these lost objects (each task once, whatever it returned)."""
        for task_id in dict.fromkeys(task_id_of(oid) for oid in oids):
            spec = self.lineage.pop(task_id, None)
            if spec is None:
                continue
            spec.retries_left -= 1 if spec.retries_left > 0 else 0
            spec.lease, spec.pending, spec.cancelled = None, 0, False
            self.submit(spec)

    def forget_lineage(self, oid: bytes) -> None:
        """An owned object was freed (called with the client's lock held, on any thread)."""
        if self.lineage:
            self.client.call_soon(self._forget_lineage, task_id_of(oid))

    def _forget_lineage(self, task_id: bytes) -> None:
        spec = self.lineage.get(task_id)
        if spec is not None and not any(oid in self.objects.entries for oid in spec.return_ids):
            del self.lineage[task_id]
            spec.keepalive = None

    def on_infeasible(self, msg: LeaseInfeasible, frames) -> None:
        print(
            f"Warning: a task or actor needs {msg.res}, but no node in the cluster has that much "
            f"(this node has {msg.total}). It stays pending until a node that can run it joins.",
            file=sys.stderr,
            flush=True,
        )

    def tick(self, now: float) -> None:
        empty = []
        for key, shape in self.shapes.items():
            if shape.queue:
                continue
            for lease in [lease for lease in shape.leases.values() if not lease.inflight]:
                if now - lease.idle_since > LEASE_LINGER:
                    self._return_lease(lease)
            if not shape.leases and not shape.requests and not shape.withdrawn:
                empty.append(key)
        # A shape with nothing queued, leased or asked for is forgotten (its next task makes a new
        # one, which costs less than a lease): shapes keyed by locality target or by placement
        # group would otherwise pile up for good.
        for key in empty:
            del self.shapes[key]

    def close(self) -> None:
        for lease in list(self.leases.values()):
            self._return_lease(lease)

    def idle(self) -> bool:
        """No task of ours is unfinished and we hold no lease."""
        return not self.specs and not self.leases and not any(shape.requests for shape in self.shapes.values())

    # --- streaming generators -----------------------------------------------------------------------
    def on_stream_item(self, msg: StreamItem, frames) -> None:
        """Push from the worker running a generator task: its next value."""
        spec = self.specs.get(msg.rid)
        if spec is None or spec.stream is None:
            return
        if msg.ret.kind == "v" and len(frames) < 1 + msg.ret.first:
            logger.warning("dropped a stream item of task %s: its payload is short", msg.rid.hex())
            return
        self.stream_values.item(spec, msg.idx, msg.ret, frames)

    # --- cancellation -------------------------------------------------------------------------------
    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        spec = self.specs.get(task_id)
        if spec is None or spec.cancelled:
            return
        spec.cancelled = True
        error = exceptions.TaskCancelledError(f"Task {spec.name} was cancelled.")
        if spec.actor is not None:
            self.actor_calls.cancel(spec, error, recursive)
            return
        if spec.lease is None:
            for shape in self.shapes.values():  # the shape it queues in may be keyed by locality too
                if spec in shape.queue:
                    shape.queue.remove(spec)
            self.fail(spec, error)
            return
        running = next(iter(spec.lease.inflight)) == task_id  # a worker runs its tasks in order
        if force and running:
            # The other task sent ahead to this worker did nothing wrong: it goes back to the queue
            # without using a retry, as when a worker retires.
            spec.lease.retiring = True
            self.client.send(spec.lease.manager, {"op": protocol.KILL_WORKER, "wid": spec.lease.worker_id})
        else:  # a task still waiting on the worker is refused there when its turn comes
            self.client.send(
                spec.lease.client_address, {"op": protocol.CANCEL_TASK, "task_id": task_id, "recursive": recursive}
            )

    def cancel_children(self, parent: bytes) -> None:
        for spec in [s for s in self.specs.values() if s.parent == parent]:
            self.cancel(spec.task_id, force=False, recursive=True)
