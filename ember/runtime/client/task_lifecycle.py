"""The owner's normal tasks as a plain state machine: events in, actions out.

A task's states (``TaskSpec.state``)::

    WAITING (owned arguments pending) --argument_ready--> QUEUED (in its shape's queue)
       |                                                    |  ^
       |                                       a lease idle |  | worker died / retiring / rejected / retried error
       |                                                    v  |
       +--cancel--> FINISHED <--result, fail, cancel-- RUNNING (sent to a leased worker, maybe pipelined)

Tasks that need the same resources, strategy and first node to ask share a shape
(:class:`~ember.runtime.client.task_spec.ShapeQueue`): its queue, the leases it holds (workers
granted by node managers) and its lease requests, outstanding or withdrawn. Each lease runs up to
``PIPELINE`` tasks in order; a shape asks for at most ``MAX_LEASE_REQUESTS`` workers at a time and
withdraws its requests once its queue is empty; an idle lease goes back after ``LEASE_LINGER``.

The machine knows nothing of sockets, clocks or serialization. The
:class:`~ember.runtime.client.task_submitter.TaskSubmitter` feeds it what happened (time comes in
with the events; whether an error may be retried is decided there, as it means reading the error)
and carries out the actions it answers, in order. Actions are tuples, the kind first:

    REQUEST_LEASE         (kind, shape, key, rid, manager, spilled): ask ``manager`` for a worker
    CANCEL_LEASE_REQUEST  (kind, manager, rid): withdraw a request (its answer still comes)
    RETURN_LEASE          (kind, lease): give an idle worker back to its node manager
    DISPATCH              (kind, spec, lease): send the task to the leased worker (arguments resolved
                          then; when that fails, ``dispatch_failed`` says so)
    CLOSE_WORKER          (kind, lease): the worker is gone or exits now: close its sockets
    KILL_WORKER           (kind, lease): ask its node manager to kill it (a forced cancel)
    CANCEL_TASK           (kind, address, task id, recursive): ask the worker (its client address) to
                          skip or interrupt the task
    FORGET_REPLY          (kind, request id or task id): no answer will come
    RECORD                (kind, spec, result, frames, keep_arguments): the task's values or error
    FAIL                  (kind, spec, error): the task failed with ``error`` (an exception)
    RESUBMIT              (kind, spec): run a finished task again to rebuild its lost returns
    ACTOR_CALL, ACTOR_READY  (kind, spec): an actor call submitted / whose arguments are now ready
    ACTOR_CANCEL          (kind, spec, error, recursive): cancel an actor call

Actor calls have their own queue (:mod:`~ember.runtime.client.actor_calls`); they share with tasks
the table of unfinished tasks (``specs``), argument waits and cancellation, which pass through here.
"""

import collections

from ember import exceptions
from ember.runtime.client.task_spec import Lease, ShapeQueue
from ember.runtime.ids import new_id, task_id_of

PIPELINE = 2  # tasks sent ahead to one leased worker
MAX_LEASE_REQUESTS = 8  # outstanding lease requests per resource shape
LEASE_LINGER = 0.05  # seconds an idle lease is kept for the next task of its shape
# Seconds a lease serves one task after another before it goes back to the node once its worker is
# between tasks (its shape asks again for what is still queued). The node grants requests in order,
# so another driver's request waiting there gets its turn: a driver that keeps its workers busy
# (rounds of tasks back to back) held its leases for good, and a job's first task never ran.
LEASE_TURN = 1.0

WAITING, QUEUED, RUNNING, FINISHED = "WAITING", "QUEUED", "RUNNING", "FINISHED"

REQUEST_LEASE, CANCEL_LEASE_REQUEST, RETURN_LEASE = "request_lease", "cancel_lease_request", "return_lease"
DISPATCH, CLOSE_WORKER, KILL_WORKER, CANCEL_TASK = "dispatch", "close_worker", "kill_worker", "cancel_task"
FORGET_REPLY, RECORD, FAIL, RESUBMIT = "forget_reply", "record", "fail", "resubmit"
ACTOR_CALL, ACTOR_READY, ACTOR_CANCEL = "actor_call", "actor_ready", "actor_cancel"

OWN_MANAGER = "node_manager"  # the node manager of our node; other managers go by address


def _no_locality(spec) -> str:
    return OWN_MANAGER


class TaskLifecycle:
    """The owner's unfinished tasks, their shapes, leases and lease requests, and lineage.

    ``locality(spec)`` names the node manager a ready task asks first (``OWN_MANAGER`` or another
    node's address: where its large arguments are); ``new_rid()`` makes lease request ids.
    """

    def __init__(self, locality=_no_locality, new_rid=None):
        self.locality = locality
        self.new_rid = new_rid or (lambda: new_id(8))
        self.specs: dict = {}  # task id -> TaskSpec, every unfinished task (actor calls too)
        self.dep_waiters: dict = collections.defaultdict(list)  # object id -> specs waiting for it
        self.shapes: dict = {}  # shape key -> ShapeQueue
        self.leases: dict = {}  # worker id -> Lease, of every shape
        self.lineage: dict = {}  # task id -> TaskSpec of finished tasks whose stored returns may need rebuilding

    # --- submission and arguments ------------------------------------------------------------------
    def submitted(self, spec, pending=()) -> list:
        """A task or actor call to run; ``pending``: the ids of its owned arguments not ready yet."""
        if spec.task_id in self.specs:
            return []  # submitted twice: it is on its way already
        self.specs[spec.task_id] = spec
        for oid in pending:
            spec.pending += 1
            self.dep_waiters[oid].append(spec)
        if spec.actor is not None:
            spec.state = WAITING if spec.pending else QUEUED
            return [(ACTOR_CALL, spec)]
        if spec.pending:
            spec.state = WAITING
            return []
        actions = []
        self._enqueue(spec, actions)
        return actions

    def argument_ready(self, oid: bytes) -> list:
        """An owned object is ready (or failed): the tasks waiting for it may go."""
        waiters = self.dep_waiters.pop(oid, None)
        if not waiters:
            return []
        actions = []
        for spec in waiters:
            spec.pending -= 1
            if spec.pending:
                continue
            if spec.actor is not None:
                if spec.state == WAITING:
                    spec.state = QUEUED
                actions.append((ACTOR_READY, spec))
            elif spec.state == WAITING and not spec.cancelled:
                self._enqueue(spec, actions)
        return actions

    # --- queues and leases -------------------------------------------------------------------------
    def _enqueue(self, spec, actions: list, front: bool = False) -> None:
        target = self.locality(spec) if spec.strategy is None else OWN_MANAGER
        key = spec.key if target == OWN_MANAGER else (*spec.key, target)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = ShapeQueue(
                spec.resources, spec.running, spec.strategy, target, spec.name, spec.renv
            )
        spec.state = QUEUED
        spec.lease = None
        if front:
            shape.queue.appendleft(spec)
        else:
            shape.queue.append(spec)
        self._pump(key, shape, actions)

    def _pump(self, key, shape, actions: list) -> None:
        queue = shape.queue
        requests = shape.requests
        if not queue:  # the common case after a result: nothing to hand out, maybe requests to withdraw
            if requests:
                self._withdraw(shape, actions)
            return
        leases = [lease for lease in shape.leases.values() if not lease.retiring and not lease.returning]
        # 1. Every idle leased worker gets a task.
        for lease in leases:
            if queue and not lease.inflight:
                self._dispatch(queue.popleft(), lease, actions)
        # 2. Ask for more workers for what is left.
        for _ in range(min(len(queue), MAX_LEASE_REQUESTS) - len(requests)):
            self._request_lease(key, shape, shape.target, False, actions)
        # 3. Send a task ahead to a busy worker only when the workers on their way could not take
        # them all: tasks that can run in parallel must not queue behind one another.
        while len(queue) > len(requests):
            lease = min(leases, key=lambda lease: len(lease.inflight), default=None)
            if lease is None or len(lease.inflight) >= PIPELINE:
                break
            self._dispatch(queue.popleft(), lease, actions)
        if not queue and requests:
            self._withdraw(shape, actions)

    def _withdraw(self, shape, actions: list) -> None:
        # The answer to each request (a grant that crossed the cancel, or "cancelled") still comes.
        requests = shape.requests
        for rid, manager in requests.items():
            actions.append((CANCEL_LEASE_REQUEST, manager, rid))
        shape.withdrawn.update(requests)
        requests.clear()

    def _dispatch(self, spec, lease, actions: list) -> None:
        spec.state = RUNNING
        spec.lease = lease
        lease.inflight[spec.task_id] = spec
        actions.append((DISPATCH, spec, lease))

    def _request_lease(self, key, shape, manager: str, spilled: bool, actions: list) -> None:
        rid = self.new_rid()
        shape.requests[rid] = manager
        actions.append((REQUEST_LEASE, shape, key, rid, manager, spilled))

    def _answered(self, key, rid):
        """The shape and the manager asked, for the answer to request ``rid`` (None, None: not ours)."""
        shape = self.shapes.get(key)
        if shape is None:
            return None, None
        manager = shape.requests.pop(rid, None) or shape.withdrawn.pop(rid, None)
        return shape, manager

    def lease_granted(self, key, rid: bytes, grant, now: float) -> list:
        """A node manager leased us a worker (``grant``: a LeaseGranted message)."""
        shape, manager = self._answered(key, rid)
        if manager is None:
            return []
        if grant.wid in self.leases:
            return []  # the same worker granted twice: it is ours already
        lease = Lease(grant, key, manager, now)
        actions = []
        shape.leases[lease.worker_id] = lease
        self.leases[lease.worker_id] = lease
        if not shape.queue:
            self._return_lease(lease, actions)
        else:
            self._pump(key, shape, actions)
        return actions

    def request_cancelled(self, key, rid: bytes) -> list:
        """The node manager confirmed a withdrawn request: nothing was granted."""
        self._answered(key, rid)
        return []

    def lease_refused(self, key, rid: bytes, reason: str, env_failed: bool = False) -> list:
        """No node can ever run this shape (or set up its runtime env): its queued tasks fail."""
        shape, manager = self._answered(key, rid)
        if manager is None:
            return []
        actions = []
        if env_failed:
            error = exceptions.RuntimeEnvSetupError(f"The runtime_env of this task could not be set up: {reason}")
        else:
            error = exceptions.TaskUnschedulableError(reason or "the task cannot be scheduled")
        while shape.queue:
            self._fail(shape.queue.popleft(), error, actions)
        return actions

    def spillback(self, key, rid: bytes, address: str) -> list:
        """The node manager asked says another node (its manager at ``address``) should run it."""
        shape, manager = self._answered(key, rid)
        if manager is None or not shape.queue:
            return []
        actions = []
        self._request_lease(key, shape, address, True, actions)
        return actions

    def request_lost(self, key, rid: bytes) -> list:
        """The answer to a request was not one we understand: the request is gone, ask again."""
        shape, manager = self._answered(key, rid)
        if manager is None:
            return []
        actions = []
        self._pump(key, shape, actions)
        return actions

    def _return_lease(self, lease, actions: list) -> None:
        self.shapes[lease.key].leases.pop(lease.worker_id, None)
        self.leases.pop(lease.worker_id, None)
        actions.append((RETURN_LEASE, lease))

    # --- results -----------------------------------------------------------------------------------
    def task_result(self, spec, result, frames, refused, retry: bool, now: float) -> list:
        """The worker's answer to a task we sent: ``refused`` is why it cannot be taken (None when it
        can, see ``refused_result``); ``retry`` whether its error may be retried (``retry_exceptions``)."""
        lease = spec.lease
        if lease is None or spec.state != RUNNING:
            return []
        task_id = spec.task_id
        spec.lease = None
        inflight = lease.inflight
        del inflight[task_id]
        if refused is None and result.retire:
            lease.retiring = True  # before any requeue below: the task must not go back to it
        if refused is not None:
            actions = []
            self._fail(spec, refused, actions)
        elif result.rejected:
            actions = []
            self._enqueue(spec, actions, front=True)
        elif result.err and retry:
            actions = []
            self._use_retry(spec)
            self._enqueue(spec, actions)
        else:
            keep = False
            if spec.retries_left != 0 and spec.stream is None and not result.err:
                # Lineage: a stored return dies with its node; re-running the task rebuilds it, so
                # the task (and its arguments) stays known while any of its returns is referenced.
                for ret in result.rets:
                    if ret.kind != "v":
                        keep = True
                        self.lineage[task_id] = spec
                        break
            spec.state = FINISHED
            self.specs.pop(task_id, None)
            actions = [(RECORD, spec, result, frames, keep)]
        if inflight:
            shape = self.shapes[lease.key]
        elif self.leases.get(lease.worker_id) is not lease:
            return actions  # not ours any more (the worker died meanwhile)
        else:
            shape = self.shapes[lease.key]
            if lease.retiring:
                del shape.leases[lease.worker_id]
                del self.leases[lease.worker_id]
                actions.append((CLOSE_WORKER, lease))  # it exits now (max_calls)
            elif lease.returning:
                self._return_lease(lease, actions)  # its turn is over (LEASE_TURN)
            else:
                lease.idle_since = now
        self._pump(lease.key, shape, actions)
        return actions

    def dispatch_failed(self, spec, error: Exception) -> list:
        """A task could not be sent (an argument was lost or failed): it fails; the lease may idle."""
        lease = spec.lease
        if spec.state != RUNNING or lease is None:
            return []
        spec.lease = None
        lease.inflight.pop(spec.task_id, None)
        actions = []
        self._fail(spec, error, actions)
        if self.leases.get(lease.worker_id) is lease:
            if lease.returning and not lease.inflight:
                self._return_lease(lease, actions)
            self._pump(lease.key, self.shapes[lease.key], actions)  # the worker may take the next task
        return actions

    def worker_died(self, worker_id: bytes) -> list:
        """A leased worker is gone: its tasks are retried (or fail when they have no retries left);
        those of a retiring worker go back to the queue without using a retry."""
        lease = self.leases.pop(worker_id, None)
        if lease is None:
            return []
        shape = self.shapes[lease.key]
        shape.leases.pop(worker_id, None)
        actions = [(CLOSE_WORKER, lease)]
        for spec in list(lease.inflight.values()):
            spec.lease = None
            actions.append((FORGET_REPLY, spec.task_id))
            if spec.cancelled:
                error = exceptions.TaskCancelledError(f"Task {spec.name} was cancelled (force=True).")
                self._fail(spec, error, actions)
            elif lease.retiring:
                self._enqueue(spec, actions, front=True)
            elif spec.retries_left != 0 and (spec.stream is None or not spec.stream.items):
                self._use_retry(spec)
                self._enqueue(spec, actions, front=True)
            else:
                error = exceptions.WorkerCrashedError(
                    f"The worker running task {spec.name} died unexpectedly (SIGKILL, out of memory, or "
                    "os._exit) and the task has no retries left (max_retries)."
                )
                self._fail(spec, error, actions)
        lease.inflight.clear()
        self._pump(lease.key, shape, actions)
        return actions

    def node_dead(self, node_id: bytes, address: str | None) -> list:
        """Leases on a dead node are lost like dead workers; requests waiting there are asked again."""
        actions = []
        for lease in [lease for lease in self.leases.values() if lease.node_id == node_id]:
            actions += self.worker_died(lease.worker_id)
        for key, shape in list(self.shapes.items()):
            lost = [rid for rid, manager in shape.requests.items() if manager == address]
            for rid in lost:
                del shape.requests[rid]
                actions.append((FORGET_REPLY, rid))
            for rid in [rid for rid, manager in shape.withdrawn.items() if manager == address]:
                del shape.withdrawn[rid]  # no answer will come
                actions.append((FORGET_REPLY, rid))
            if shape.target == address:
                shape.target = OWN_MANAGER
            if lost:
                self._pump(key, shape, actions)
        return actions

    def _use_retry(self, spec) -> None:
        if spec.retries_left > 0:  # -1: without limit
            spec.retries_left -= 1

    def _finished(self, spec) -> None:
        spec.state = FINISHED
        spec.lease = None
        self.specs.pop(spec.task_id, None)

    def _fail(self, spec, error, actions: list) -> None:
        self._finished(spec)
        actions.append((FAIL, spec, error))

    def finished(self, spec) -> None:
        """An actor call ended (its queue is kept by ActorCalls): it is no longer unfinished."""
        self._finished(spec)

    # --- cancellation ------------------------------------------------------------------------------
    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> list:
        """``ember.cancel``: a task not sent yet fails at once; a sent one is cancelled by its worker
        (``force``: the worker running it is killed; a task sent ahead to it is requeued)."""
        spec = self.specs.get(task_id)
        if spec is None or spec.cancelled:
            return []
        spec.cancelled = True
        error = exceptions.TaskCancelledError(f"Task {spec.name} was cancelled.")
        if spec.actor is not None:
            return [(ACTOR_CANCEL, spec, error, recursive)]
        lease = spec.lease
        if lease is None:
            actions = []
            if spec.state == QUEUED:
                for key, shape in list(self.shapes.items()):  # it may queue in a shape keyed by locality too
                    if spec in shape.queue:
                        shape.queue.remove(spec)
                        # Its lease requests go with it when nothing else waits: a request left at the
                        # node manager would be demand for a task that no longer exists (an
                        # infeasible one would have the autoscaler launch a node for nothing).
                        self._pump(key, shape, actions)
            self._fail(spec, error, actions)
            return actions
        if force and next(iter(lease.inflight)) == task_id:  # a worker runs its tasks in order
            # The other task sent ahead to this worker did nothing wrong: it goes back to the queue
            # without using a retry, as when a worker retires.
            lease.retiring = True
            return [(KILL_WORKER, lease)]
        # A task still waiting on the worker is refused there when its turn comes.
        return [(CANCEL_TASK, lease.client_address, task_id, recursive)]

    def cancel_children(self, parent: bytes) -> list:
        """The task ``parent`` was cancelled recursively: so are the tasks it submitted."""
        actions = []
        for spec in [spec for spec in self.specs.values() if spec.parent == parent]:
            actions += self.cancel(spec.task_id, force=False, recursive=True)
        return actions

    # --- lineage -----------------------------------------------------------------------------------
    def can_rebuild(self, oid: bytes) -> bool:
        spec = self.lineage.get(task_id_of(oid))
        return spec is not None and spec.retries_left != 0

    def rebuild(self, oids) -> list:
        """Lost stored objects: the tasks that made them run again (each once, whatever it returned)."""
        actions = []
        for task_id in dict.fromkeys(task_id_of(oid) for oid in oids):
            spec = self.lineage.pop(task_id, None)
            if spec is None:
                continue
            self._use_retry(spec)
            spec.lease, spec.pending, spec.cancelled = None, 0, False
            actions.append((RESUBMIT, spec))
        return actions

    def lineage_released(self, task_id: bytes, live):
        """A return of the task was freed: when none of them is in ``live`` (the owned objects still
        referenced) the task is forgotten, and its spec returned (its arguments may go too)."""
        spec = self.lineage.get(task_id)
        if spec is None or any(oid in live for oid in spec.return_ids):
            return None
        del self.lineage[task_id]
        return spec

    # --- time --------------------------------------------------------------------------------------
    def tick(self, now: float) -> list:
        """Return the leases idle for longer than LEASE_LINGER and end the turn of those held longer
        than LEASE_TURN; forget empty shapes."""
        actions = []
        for lease in list(self.leases.values()):
            if not lease.returning and now - lease.granted_at >= LEASE_TURN:
                lease.returning = True
                if not lease.inflight:
                    self._return_lease(lease, actions)
                    self._pump(lease.key, self.shapes[lease.key], actions)  # ask again for its queue
        empty = []
        for key, shape in self.shapes.items():
            if shape.queue:
                continue
            for lease in [lease for lease in shape.leases.values() if not lease.inflight]:
                if now - lease.idle_since > LEASE_LINGER:
                    self._return_lease(lease, actions)
            if not shape.leases and not shape.requests and not shape.withdrawn:
                empty.append(key)
        # A shape with nothing queued, leased or asked for is forgotten (its next task makes a new
        # one, which costs less than a lease): shapes keyed by locality target or by placement
        # group would otherwise pile up for good.
        for key in empty:
            del self.shapes[key]
        return actions

    def return_idle(self) -> list:
        """Return now every lease that runs nothing and whose shape has nothing queued, without the
        LEASE_LINGER wait: an actor is about to be created, and the node would otherwise start a new
        worker process for it while ours sit idle, kept for a next task that may never come."""
        actions = []
        for shape in self.shapes.values():
            if shape.queue:
                continue
            for lease in [lease for lease in shape.leases.values() if not lease.inflight]:
                self._return_lease(lease, actions)
        return actions

    def close(self) -> list:
        """The process ends: every lease goes back."""
        actions = []
        for lease in list(self.leases.values()):
            self._return_lease(lease, actions)
        return actions

    def idle(self) -> bool:
        """No task of ours is unfinished and we hold no lease nor ask for one."""
        return not self.specs and not self.leases and not any(shape.requests for shape in self.shapes.values())
