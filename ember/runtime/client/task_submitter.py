"""Submitting tasks and actor calls: the owner's side of the hot path.

Data flow (all on the client's I/O thread but for ``submit_*``, which build the message)::

    submit_task --> wait for owned arguments --> queue per resource shape --> leased workers (pipelined)
                                                      |  request_lease / return_lease (node manager)
                                                      v
                     task_result / stream_item <-- worker --> owner records values, retries on crash

    submit_actor_task --> per-actor queue, in submission order --> the actor's worker
                          actor_update (head): RESTARTING resends unacknowledged calls, DEAD fails them

The decisions (queues, leases, pipelining, retries, cancellation, lineage) are the plain state
machine :class:`~ember.runtime.client.task_lifecycle.TaskLifecycle` (``submitter.tasks``); this
module feeds it what happened and carries out the actions it answers (sends, replies expected, task
events, objects completed).
"""

import collections
import logging
import os
import sys
import time
from functools import partial

from ember import exceptions
from ember.runtime import protocol
from ember.runtime.client import task_lifecycle as life
from ember.runtime.client.actor_calls import ActorCalls
from ember.runtime.client.object_ref import ObjectRefGenerator
from ember.runtime.client.ownership import FAILED, PENDING
from ember.runtime.client.streams import StreamValues
from ember.runtime.client.task_builder import build_spec
from ember.runtime.client.task_lifecycle import FINISHED, TaskLifecycle
from ember.runtime.client.task_spec import (
    Arg,  # noqa: F401 - the worker imports it from here
    TaskSpec,
    describe,
    refused_result,
)
from ember.runtime.ids import task_id_of
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
from ember.runtime.runtime_env import env_key
from ember.runtime.serialization import deserialize

LOCALITY_MIN_BYTES = 1 << 20  # arguments smaller than this are cheaper to move than to chase

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
        self.tasks = TaskLifecycle(locality=self._locality_target)
        # The machine's tables, under the names the client, tests and soak benchmark read.
        self.shapes = self.tasks.shapes
        self.leases = self.tasks.leases  # worker id -> Lease
        self.specs = self.tasks.specs  # task id -> TaskSpec, for every unfinished task this process owns
        self.dep_waiters = self.tasks.dep_waiters
        self.lineage = self.tasks.lineage
        self.actor_calls = ActorCalls(self)
        self.stream_values = StreamValues(client, objects)
        self._running = False  # carrying out actions (see _run)
        self._backlog: collections.deque = collections.deque()
        actor_calls = self.actor_calls
        self._handlers = {
            life.DISPATCH: self._do_dispatch,
            life.RECORD: lambda action: self.record(action[1], action[2], action[3], action[4]),
            life.REQUEST_LEASE: self._do_request_lease,
            life.CANCEL_LEASE_REQUEST: self._do_cancel_lease_request,
            life.RETURN_LEASE: self._do_return_lease,
            life.CLOSE_WORKER: self._do_close_worker,
            life.KILL_WORKER: self._do_kill_worker,
            life.CANCEL_TASK: self._do_cancel_task,
            life.FORGET_REPLY: self._do_forget_reply,
            life.FAIL: lambda action: self.fail(action[1], action[2]),
            life.RESUBMIT: lambda action: self.submit(action[1]),
            life.ACTOR_CALL: lambda action: actor_calls.enqueue(action[1]),
            life.ACTOR_READY: lambda action: actor_calls.argument_ready(action[1]),
            life.ACTOR_CANCEL: lambda action: actor_calls.cancel(action[1], action[2], action[3]),
        }

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
        runtime_env=None,
        max_calls: int = 0,
        strategy=None,
        placement_group=None,
        task_events: bool = True,
    ):
        header = {
            "op": protocol.EXECUTE_TASK,
            "fid": function_key,
            "nret": num_returns,
            "max_calls": max_calls,
        }
        if placement_group is not None:
            header["pg"] = placement_group
        spec = self.new_spec(name, num_returns, args, kwargs, header)
        spec.resources = spec.running = resources
        spec.strategy = strategy
        spec.renv = runtime_env or None
        spec.key = (tuple(sorted(resources.items())), repr(strategy), env_key(spec.renv))
        spec.retries_left = max_retries
        spec.retry_exceptions = retry_exceptions
        spec.events = task_events
        outputs = self.outputs(spec)
        self.client.call_soon(self.submit, spec)
        return outputs

    # --- dependencies -------------------------------------------------------------------------------
    def submit(self, spec: TaskSpec) -> None:
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
        pending = ()
        if spec.refs:
            entries = self.objects.entries
            pending = []
            for _, ref in spec.refs:
                entry = entries.get(ref._id)
                if entry is not None and entry.state == PENDING:
                    pending.append(ref._id)
        self._run(self.tasks.submitted(spec, pending))

    def object_ready(self, oid: bytes) -> None:
        if oid in self.dep_waiters:
            self._run(self.tasks.argument_ready(oid))

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

    # --- carrying out the machine's actions -------------------------------------------------------
    def _run(self, actions: list) -> None:
        """Carry out ``actions`` in order. Actions of events that happen meanwhile (an object
        completed by RECORD readies a waiting task, say) run after them, in the order they were
        decided, so tasks reach a worker in the order its lease lists them."""
        if not actions:
            return
        backlog = self._backlog
        if self._running:
            backlog.extend(actions)
            return
        self._running = True
        try:
            handlers = self._handlers
            for action in actions:
                handlers[action[0]](action)
            while backlog:
                action = backlog.popleft()
                handlers[action[0]](action)
        finally:
            self._running = False

    def _do_request_lease(self, action) -> None:
        _, shape, key, rid, manager, spilled = action
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
        if shape.renv:
            header["renv"] = shape.renv
        if spilled:
            header["spilled"] = True
        if manager != "node_manager":
            # Another node's manager leases only to registered clients; registering right before
            # each request (on the same socket) also covers a socket that reconnected meanwhile.
            register = {"op": protocol.REGISTER_CLIENT, "client_id": self.client.client_id, "pid": os.getpid()}
            self.client.send(manager, {**register, "kind": "peer"})
        self.client.send(manager, header, callback=partial(self._on_lease, key, rid))

    def _on_lease(self, key, rid, reply, frames) -> None:
        tasks = self.tasks
        if isinstance(reply, LeaseGranted):
            self._run(tasks.lease_granted(key, rid, reply, time.monotonic()))
        elif isinstance(reply, Reply) and reply.cancelled:
            tasks.request_cancelled(key, rid)
        elif isinstance(reply, Error):
            self._run(tasks.lease_refused(key, rid, reply.error, env_failed=reply.etype == "RuntimeEnvSetupError"))
        elif isinstance(reply, Reply) and reply.spillback is not None and reply.address is not None:
            # Another node should run it: ask that node's manager, which grants it there.
            self.client.node_addresses.setdefault(reply.spillback, reply.address)
            self._run(tasks.spillback(key, rid, reply.address))
        else:
            logger.warning("dropped an answer to a lease request that is not one: %r", reply)
            self._run(tasks.request_lost(key, rid))

    def _do_cancel_lease_request(self, action) -> None:
        self.client.send(action[1], {"op": protocol.CANCEL_LEASE_REQUEST, "rid": action[2]})

    def _do_return_lease(self, action) -> None:
        lease = action[1]
        self.client.send(lease.manager, {"op": protocol.RETURN_LEASE, "wid": lease.worker_id})
        # The worker may be leased to us again soon (keep the socket), or exit idle (close it later).
        self.client.release_peer(lease.address)
        self.client.release_peer(lease.client_address)

    def uses_peer(self, address: str) -> bool:
        """Whether a lease we hold talks to ``address``."""
        return any(address in (lease.address, lease.client_address) for lease in self.leases.values())

    def _do_close_worker(self, action) -> None:
        lease = action[1]
        self.client.close_peer(lease.address)
        self.client.close_peer(lease.client_address)

    def _do_kill_worker(self, action) -> None:
        lease = action[1]
        self.client.send(lease.manager, {"op": protocol.KILL_WORKER, "wid": lease.worker_id})

    def _do_cancel_task(self, action) -> None:
        _, address, task_id, recursive = action
        self.client.send(address, {"op": protocol.CANCEL_TASK, "task_id": task_id, "recursive": recursive})

    def _do_forget_reply(self, action) -> None:
        self.client.forget_reply(action[1])

    def _do_dispatch(self, action) -> None:
        _, spec, lease = action
        frames, error = self.resolve(spec, lease.node_id)
        if error is not None:
            self._run(self.tasks.dispatch_failed(spec, error))
            return
        header = spec.header
        header["res"] = lease.assigned
        header["gpus"] = lease.gpus
        self.client.send(lease.address, header, frames)
        if spec.events:
            self.client.task_event("running", spec.task_id, node=lease.node_id, worker=lease.worker_id, pid=lease.pid)
        self.client.expect_reply(spec.task_id, partial(self._on_result, spec))

    def _on_result(self, spec: TaskSpec, result, frames) -> None:
        refused = refused_result(spec, result, frames)
        retry = refused is None and not result.rejected and result.err and self.should_retry(spec, frames[0])
        self._run(self.tasks.task_result(spec, result, frames, refused, retry, time.monotonic()))

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

    def record(self, spec: TaskSpec, result: TaskResult, frames, keep_arguments: bool = False) -> None:
        """A task's values (or its error), checked by ``refused_result``, become its return objects;
        ``keep_arguments``: the task stays in the lineage, to be run again if a stored return is lost."""
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
            for oid, ret in zip(spec.return_ids, result.rets):
                contained = [(inner.oid, inner.owner) for inner in ret.refs]
                if ret.kind == "v":
                    value_frames = frames[position : position + 1 + ret.first]
                    complete(oid, inline=(value_frames[0], value_frames[1:]), size=ret.second, contained=contained)
                    position += 1 + ret.first
                else:
                    complete(oid, node_id=ret.second, size=ret.first, contained=contained)
        self._finish(spec, keep_arguments=keep_arguments, ran=result.ran)

    def _finish(self, spec: TaskSpec, error=None, keep_arguments: bool = False, ran: float | None = None) -> None:
        """``ran``: the seconds the worker says it ran the task (without the time it was queued there)."""
        if spec.state != FINISHED:  # the machine knows already of a normal task; an actor call ends here
            self.tasks.finished(spec)
        if spec.events:
            fields = {} if ran is None else {"ran": ran}
            if error is None:
                self.client.task_event("finished", spec.task_id, **fields)
            else:
                self.client.task_event("failed", spec.task_id, error=error, **fields)
        if spec.stream is not None:
            spec.stream.done = True
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
        self._run(self.tasks.worker_died(worker_id))

    def on_node_dead(self, node_id: bytes, address: str | None) -> None:
        """Leases on a dead node are lost like dead workers (their tasks retried); lease requests
        waiting there are asked again elsewhere."""
        self._run(self.tasks.node_dead(node_id, address))

    def can_rebuild(self, oid: bytes) -> bool:
        return self.tasks.can_rebuild(oid)

    def rebuild(self, oids: list) -> None:
        """Re-run the tasks that made these lost objects (each task once, whatever it returned)."""
        self._run(self.tasks.rebuild(oids))

    def forget_lineage(self, oid: bytes) -> None:
        """An owned object was freed (called with the client's lock held, on any thread)."""
        if self.lineage:
            self.client.call_soon(self._forget_lineage, task_id_of(oid))

    def _forget_lineage(self, task_id: bytes) -> None:
        spec = self.tasks.lineage_released(task_id, self.objects.entries)
        if spec is not None:
            spec.keepalive = None

    def on_infeasible(self, msg: LeaseInfeasible, frames) -> None:
        print(
            f"Warning: a task or actor needs {msg.res}, but no node in the cluster has that much "
            f"(this node has {msg.total}). It stays pending until a node that can run it joins.",
            file=sys.stderr,
            flush=True,
        )

    def tick(self, now: float) -> None:
        self._run(self.tasks.tick(now))

    def return_idle_leases(self) -> None:
        """Give back the workers leased for tasks and idle now (on the loop's thread; see
        ``TaskLifecycle.return_idle``)."""
        self._run(self.tasks.return_idle())

    def close(self) -> None:
        self._run(self.tasks.close())

    def idle(self) -> bool:
        """No task of ours is unfinished and we hold no lease."""
        return self.tasks.idle()

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
        self._run(self.tasks.cancel(task_id, force, recursive))

    def cancel_children(self, parent: bytes) -> None:
        self._run(self.tasks.cancel_children(parent))
