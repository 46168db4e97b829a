"""The owner's records of its tasks and leases (plain data, shared by the submitter and actor calls)."""

import collections

from ember.runtime.messages import Error, LeaseGranted, TaskResult, op_of
from ember.runtime.serialization import deserialize


class Arg:
    """Stands in the pickled arguments for a top-level ObjectRef, replaced by its value on the worker."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __reduce__(self):
        return Arg, (self.key,)


class TaskSpec:
    __slots__ = (
        "task_id",
        "header",
        "frames",
        "refs",
        "keepalive",
        "return_ids",
        "key",
        "resources",
        "running",
        "retries_left",
        "retry_exceptions",
        "pending",
        "lease",
        "actor",
        "stream",
        "cancelled",
        "name",
        "parent",
        "strategy",
        "renv",
        "events",
        "state",
    )

    def __init__(self):
        self.state = None  # see task_lifecycle: WAITING, QUEUED, RUNNING, FINISHED
        self.events = True  # False: enable_task_events=False, the task sends no task events
        self.pending = 0
        self.lease = None
        self.actor = None
        self.stream = None
        self.cancelled = False
        self.strategy = None
        self.renv = None  # the resolved runtime env its worker must have (see runtime/runtime_env.py)


class Lease:
    __slots__ = (
        "worker_id",
        "address",
        "client_address",
        "key",
        "inflight",
        "idle_since",
        "gpus",
        "assigned",
        "retiring",
        "returning",
        "granted_at",
        "node_id",
        "pid",
        "manager",
    )

    def __init__(self, grant: LeaseGranted, key, manager, now: float):
        self.worker_id = grant.wid
        self.address = grant.addr
        self.client_address = grant.caddr
        self.gpus = grant.gpus
        self.assigned = grant.res
        self.node_id = grant.node_id
        self.pid = grant.pid
        self.manager = manager  # the node manager that granted it: "node_manager" (ours) or an address
        self.key = key
        self.inflight: dict = {}
        self.idle_since = now
        self.granted_at = now
        self.retiring = False
        self.returning = False  # its turn is over: no new task, back to the node once idle


class ShapeQueue:
    """Tasks that need the same resources, scheduling strategy and first node to ask."""

    def __init__(self, resources, running, strategy, target, what, renv=None):
        self.queue: collections.deque = collections.deque()
        self.leases: dict = {}
        self.requests: dict = {}  # lease request id -> the node manager asked
        # Requests we withdrew: the answer may still be a grant that crossed our cancel, and that
        # lease must go back to the node manager that granted it.
        self.withdrawn: dict = {}
        self.resources = resources
        self.running = running
        self.strategy = strategy
        self.target = target  # "node_manager" (ours), or the node manager of the node with the arguments
        self.what = what
        self.renv = renv


class Stream:
    """The values a generator task has yielded so far, as ObjectRefs we own.

    A "dynamic" task's stream has no consumer while it runs: when the task ends, its refs become the
    value of the task's one return object (a DynamicObjectRefGenerator), which holds them from then on.
    """

    def __init__(self, task_id, dynamic: bool = False):
        self.task_id = task_id
        self.items: list = []
        self.done = False
        self.dynamic = dynamic
        self.offset = 2 if dynamic else 1  # value i is return object i + offset (1 is the dynamic's own)


def describe(error) -> str:
    """One line naming a task's error, for task events (the widgets' hover text)."""
    if isinstance(error, (bytes, bytearray, memoryview)):
        try:
            error = deserialize(error)
            error = getattr(error, "cause", None) or error
        except Exception:
            return "the task raised an exception"
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


def refused_result(spec, result, frames) -> Exception | None:
    """Why a worker's answer to task ``spec`` cannot be taken as its result (None when it can): an
    error reply, another message with the task's id, or values that do not match what was asked."""
    if isinstance(result, Error):
        return RuntimeError(f"Task {spec.name}: The worker refused the task: {result.error}")
    if not isinstance(result, TaskResult):
        return RuntimeError(f"Task {spec.name}: The worker answered the task with a {op_of(result)} message.")
    if result.rejected:
        return None
    if result.err:
        return None if frames else RuntimeError(f"Task {spec.name}: The worker's error reply had no error in it.")
    if spec.stream is not None:
        return None  # a generator's values came as stream items
    if len(result.rets) != len(spec.return_ids):
        return RuntimeError(
            f"Task {spec.name}: the worker returned {len(result.rets)} values, {len(spec.return_ids)} expected."
        )
    if len(frames) < sum(1 + ret.first for ret in result.rets if ret.kind == "v"):
        return RuntimeError(f"Task {spec.name}: The worker's reply lacks some of the values it describes.")
    return None
