"""Every op's header, defined once as a typed schema.

Each op listed in :mod:`ember.runtime.protocol` has one :class:`msgspec.Struct` here, tagged by its
``op`` field. The services a process runs accept different sets of ops; each set is a tagged union
with its own msgpack decoder, so a header is parsed and validated in one pass, straight from the
frame's bytes, and a message that is not exactly what some sender of the real system sends is
refused as :class:`BadMessage` before any handler sees it. Payload frames (pickles, buffers) are
never described here: they stay raw.

Unknown fields are refused (``forbid_unknown_fields``). Every process of a cluster runs the same
Ember code, so a field that no schema names is a sender's bug or a forged message, never a newer
peer; refusing it also makes the send-time check (``EMBER_CHECK_MESSAGES=1``, see
:func:`check_header`) complete: a field a sender adds without declaring it here fails loudly in
tests instead of being silently dropped once handlers read Structs. Replies are the exception:
their bodies depend on the request they answer, so :class:`Reply` lists every body field the
services return, all optional.
"""

from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta, Struct, field

from ember.runtime.message_fields import (  # noqa: F401 - the part types are re-exported
    ActorId,
    ActorPublic,
    Address,
    ArgRef,
    Availability,
    Bundle,
    ClientId,
    ClusterNode,
    Concurrency,
    Count,
    GpuRow,
    GroupName,
    JobId,
    Key,
    Location,
    LogBatches,
    MethodMeta,
    MethodOptions,
    Name,
    NodeId,
    NumReturns,
    ObjectId,
    OwnerAddress,
    Pid,
    PlacementGroupId,
    PlacementInfo,
    RequestId,
    Resources,
    Retries,
    Return,
    RuntimeEnvSpec,
    SchedulingStrategy,
    Size,
    StoreStats,
    Strategy,
    TaskId,
    WorkerId,
)

# --- messages -------------------------------------------------------------------------------------


class Message(Struct, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """A header; ``op`` is its tag. ``rid`` is set on requests that expect a reply."""

    rid: RequestId | None = None


# --- head -----------------------------------------------------------------------------------------


class RegisterNode(Message, tag="register_node", kw_only=True):
    node_id: NodeId
    address: Address
    resources: Resources
    host: Annotated[str, Meta(max_length=253)] = ""


class UnregisterNode(Message, tag="unregister_node", kw_only=True):
    node_id: NodeId


class NodeStats(Message, tag="node_stats", kw_only=True):
    """A heartbeat: bare (``node_id`` only), or with the node's state when it changed."""

    node_id: NodeId
    available: Availability | None = None
    total: Resources | None = None
    store: StoreStats | None = None
    demand: list[Resources] = []
    gpus: list[GpuRow] = []
    ram: list[Count] | None = None  # [bytes in use, bytes in all] of the machine's memory
    workers: dict[str, Count] | None = None  # how many workers are idle, busy, actor, blocked


class RegisterJob(Message, tag="register_job", kw_only=True):
    pid: Pid
    namespace: Name | None = None
    entrypoint: str = ""


class JobFinished(Message, tag="job_finished", kw_only=True):
    job_id: JobId


class KvPut(Message, tag="kv_put", kw_only=True):
    """The value is the first payload frame."""

    key: Key
    overwrite: bool = True


class KvGet(Message, tag="kv_get", kw_only=True):
    key: Key


class KvDel(Message, tag="kv_del", kw_only=True):
    key: Key


class KvKeys(Message, tag="kv_keys", kw_only=True):
    prefix: bytes = b""


class GetNodes(Message, tag="get_nodes", kw_only=True):
    pass


class StateQuery(Message, tag="state_query", kw_only=True):
    kind: Literal["tasks", "actors", "jobs", "summary", "activity"]
    limit: Annotated[int, Meta(ge=0, le=10_000)] | None = None  # "activity": the newest tasks listed


class TableSizes(Message, tag="table_sizes", kw_only=True):
    """Head or node manager: how many entries each table holds (soak tests, debugging)."""


class LogFiles(Message, tag="log_files", kw_only=True):
    """A node manager's own log files (see ember/runtime/node/log_files.py)."""


# The most a log_read answers at once (runtime/node/log_files.py); a whole file is read in such parts.
LOG_READ_MAX = 1 << 20


class LogRead(Message, tag="log_read", kw_only=True):
    """Part of one of the node's log files, named by ``name`` or by the ``pid`` of its process: its
    last ``tail`` bytes, or ``length`` bytes from ``offset``."""

    name: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    pid: Pid | None = None
    tail: Annotated[int, Meta(ge=0, le=LOG_READ_MAX)] | None = None
    offset: Count | None = None
    length: Annotated[int, Meta(ge=0, le=LOG_READ_MAX)] = LOG_READ_MAX


class _TaskFields(Message, tag=False, kw_only=True):
    """What every task, actor call and actor constructor carries (see TaskSubmitter._new_spec)."""

    tname: Name = ""
    job: JobId | None = None
    owner: OwnerAddress
    owner_id: ClientId
    owner_node: NodeId | None = None
    tag: Name | None = None
    nbuf: Count = 0  # out-of-band buffers after the pickled arguments in the payload
    argobj: tuple[ObjectId, NodeId] | None = None  # large arguments, put in a store instead
    refs: list[ArgRef] = []


class _ActorFields(_TaskFields, tag=False, kw_only=True):
    """An actor's creation options (ember.actor.ActorClass._remote) and its constructor call."""

    cid: Key  # the exported class
    class_name: Name
    name: Name | None = None
    namespace: Name | None = None
    detached: bool = False
    get_if_exists: bool = False
    max_restarts: Retries = 0
    max_task_retries: Retries = 0
    max_concurrency: Annotated[int, Meta(ge=1, le=2**31)] | None = None
    concurrency_groups: dict[GroupName, Concurrency] | None = None
    resources: Resources
    running: Resources
    strategy: SchedulingStrategy | None = None
    pg: PlacementInfo | None = None
    renv: RuntimeEnvSpec | None = None
    owner_actor: ActorId | None = None
    meta: MethodMeta = {}


class ActorSpec(_ActorFields, tag=False, kw_only=True):
    rid: TaskId  # the constructor's task id (the head's create_actor_instance uses the actor id)


class CreateActor(Message, tag="create_actor", kw_only=True):
    """The constructor's arguments are the payload frames."""

    actor_id: ActorId
    job_id: JobId | None = None
    spec: ActorSpec


class SubscribeActor(Message, tag="subscribe_actor", kw_only=True):
    actor_id: ActorId


class ActorUpdate(Message, tag="actor_update", kw_only=True):
    actor: ActorPublic | None = None


class GetNamedActor(Message, tag="get_named_actor", kw_only=True):
    name: Name
    namespace: Name | None = None


class ListNamedActors(Message, tag="list_named_actors", kw_only=True):
    namespace: Name | None = None
    all_namespaces: bool = False


class KillActor(Message, tag="kill_actor", kw_only=True):
    actor_id: ActorId
    no_restart: bool = True
    cause: str | None = None


class ActorHandleReleased(Message, tag="actor_handle_released", kw_only=True):
    actor_id: ActorId


class WorkerDied(Message, tag="worker_died", kw_only=True):
    wid: WorkerId


class Logs(Message, tag="logs", kw_only=True):
    batches: LogBatches


class TaskEvents(Message, tag="task_events", kw_only=True):
    """The events are a msgpack list in the first payload frame, republished unread."""


class Shutdown(Message, tag="shutdown", kw_only=True):
    pass


class ClusterView(Message, tag="cluster_view", kw_only=True):
    nodes: list[ClusterNode]
    removed_groups: list[Annotated[str, Meta(pattern="^[0-9a-f]{36}$")]] = []
    removed_full: bool = False  # removed_groups is all the head remembers, not just what is new


class NodeDead(Message, tag="node_dead", kw_only=True):
    node_id: NodeId
    address: Address | None = None


class CreatePlacementGroup(Message, tag="create_placement_group", kw_only=True):
    pg_id: PlacementGroupId
    bundles: Annotated[list[Resources], Meta(min_length=1)]
    strategy: Strategy
    name: Name = ""
    namespace: Name | None = None
    job_id: JobId | None = None
    detached: bool = False
    soft_target: NodeId | None = None


class RemovePlacementGroup(Message, tag="remove_placement_group", kw_only=True):
    pg_id: PlacementGroupId


class WaitPlacementGroup(Message, tag="wait_placement_group", kw_only=True):
    pg_id: PlacementGroupId


class PlacementGroupTable(Message, tag="placement_group_table", kw_only=True):
    pg_id: PlacementGroupId | None = None
    name: Name | None = None
    namespace: Name | None = None


# --- node manager ---------------------------------------------------------------------------------


class RegisterClient(Message, tag="register_client", kw_only=True):
    client_id: ClientId
    pid: Pid
    kind: Literal["driver", "worker", "peer"]  # peer: the head, or a client on another node, that leases here
    addr: OwnerAddress | None = None
    job: JobId | None = None


class UnregisterClient(Message, tag="unregister_client", kw_only=True):
    client_id: ClientId


class RequestLease(Message, tag="request_lease", kw_only=True):
    """``res`` places the request; ``run`` is what the worker holds while it runs (they differ for
    actors, which need a CPU to be placed but hold none by default)."""

    rid: RequestId
    res: Resources
    run: Resources
    actor: bool = False
    what: Name = ""
    strategy: SchedulingStrategy | None = None
    spilled: bool = False
    job: JobId | None = None
    cid: Key | None = None  # an actor's exported class, which workers started for the pool load ahead
    renv: RuntimeEnvSpec | None = None  # the runtime env its worker must have been started in


class LeaseGranted(Message, tag="lease_granted", kw_only=True):
    rid: RequestId
    wid: WorkerId
    addr: Address
    caddr: OwnerAddress
    pid: Pid
    gpus: list[Count] = []
    res: Resources = {}
    node_id: NodeId


class LeaseInfeasible(Message, tag="lease_infeasible", kw_only=True):
    rid: RequestId
    res: Resources
    total: Resources


class ReturnLease(Message, tag="return_lease", kw_only=True):
    wid: WorkerId
    kill: bool = False


class CancelLeaseRequest(Message, tag="cancel_lease_request", kw_only=True):
    rid: RequestId  # the request to cancel


class LeasedWorkerDied(Message, tag="leased_worker_died", kw_only=True):
    wid: WorkerId


class OwnerDied(Message, tag="owner_died", kw_only=True):
    addr: OwnerAddress


class WorkerReady(Message, tag="worker_ready", kw_only=True):
    wid: WorkerId
    pid: Pid
    addr: Address  # its task socket
    caddr: OwnerAddress  # its core client's owner service


class WorkerBlocked(Message, tag="worker_blocked", kw_only=True):
    wid: WorkerId


class WorkerUnblocked(Message, tag="worker_unblocked", kw_only=True):
    wid: WorkerId


class KillWorker(Message, tag="kill_worker", kw_only=True):
    wid: WorkerId


class ExitIfIdle(Message, tag="exit_if_idle", kw_only=True):
    pass


class ExitRefused(Message, tag="exit_refused", kw_only=True):
    wid: WorkerId


class StoreCreate(Message, tag="store_create", kw_only=True):
    oid: ObjectId
    size: Size


class StoreSealed(Message, tag="store_sealed", kw_only=True):
    oid: ObjectId
    size: Size
    failed: bool = False
    owner: ClientId | None = None
    owner_node: NodeId | None = None


class StoreRestore(Message, tag="store_restore", kw_only=True):
    oid: ObjectId


class StoreDelete(Message, tag="store_delete", kw_only=True):
    oids: list[ObjectId]


class StoreTouch(Message, tag="store_touch", kw_only=True):
    """``oids``: objects a reader mapped (kept in memory); ``unpin``: mappings it let go of."""

    oids: list[ObjectId]
    unpin: list[ObjectId] = []


class WorkerLogs(Message, tag="worker_logs", kw_only=True):
    batches: LogBatches


class PrepareBundles(Message, tag="prepare_bundles", kw_only=True):
    pg_id: PlacementGroupId
    bundles: list[Bundle]


class CommitBundles(Message, tag="commit_bundles", kw_only=True):
    pg_id: PlacementGroupId
    indexes: list[Annotated[int, Meta(ge=0, le=2**31)]]


class CancelBundles(Message, tag="cancel_bundles", kw_only=True):
    pg_id: PlacementGroupId
    indexes: list[Annotated[int, Meta(ge=0, le=2**31)]]


class PullObject(Message, tag="pull_object", kw_only=True):
    oid: ObjectId
    chunks: list[Annotated[int, Meta(ge=0, le=2**31)]] = []  # the chunks still wanted


class ObjectChunk(Message, tag="object_chunk", kw_only=True):
    """One chunk of a pulled object (the chunk is the payload frame), or ``missing``."""

    oid: ObjectId
    missing: bool = False
    index: Annotated[int, Meta(ge=0, le=2**31)] = 0
    offset: Size = 0
    size: Size = 0


class StorePull(Message, tag="store_pull", kw_only=True):
    oid: ObjectId
    from_: NodeId = field(name="from")


# --- worker task socket ---------------------------------------------------------------------------


class ExecuteTask(_TaskFields, tag="execute_task", tag_field="op", kw_only=True):
    rid: TaskId
    fid: Key  # the exported function
    nret: NumReturns
    max_calls: Count = 0
    pg: PlacementInfo | None = None
    res: Resources = {}  # what the lease holds for it
    gpus: list[Count] = []


class ActorCall(_TaskFields, tag="actor_call", tag_field="op", kw_only=True):
    rid: TaskId
    method: Name
    nret: NumReturns
    cgroup: GroupName | None = None


class CreateActorInstance(_ActorFields, tag="create_actor_instance", tag_field="op", kw_only=True, omit_defaults=True):
    """Sent by the head as a Struct: fields left at their default are left out, as absent."""

    rid: ActorId
    actor_id: ActorId
    gpus: list[Count] = []
    assigned: Resources = {}
    restarted: bool = False


class TaskResult(Message, tag="task_result", kw_only=True):
    """The reply to the three above: ``rets`` (values), or ``err`` (a pickled error is the payload),
    or ``rejected`` (a retiring worker refused it: send it elsewhere)."""

    rid: Annotated[bytes, Meta(min_length=14, max_length=16)]  # a task's id, or an actor's for its constructor
    rets: list[Return] = []
    err: bool = False
    rejected: bool = False
    retire: bool = False  # max_calls reached: the worker exits after this reply
    stream_end: Count | None = None
    # Seconds the call ran on the worker: its duration without the time it waited there in a queue.
    ran: Annotated[float, Meta(ge=0)] | None = None


class StreamItem(Message, tag="stream_item", kw_only=True):
    rid: TaskId
    idx: Count
    ret: Return


# --- any client's owner service -------------------------------------------------------------------


class GetObject(Message, tag="get_object", kw_only=True):
    rid: RequestId
    oid: ObjectId
    to: OwnerAddress | None = None  # the owner meant (a port may have a new process now)
    node: NodeId | None = None  # the reader's node: a stored value's copy will be there


class AddBorrower(Message, tag="add_borrower", kw_only=True):
    oid: ObjectId
    addr: OwnerAddress


class RemoveBorrower(Message, tag="remove_borrower", kw_only=True):
    oid: ObjectId
    addr: OwnerAddress


class CancelTask(Message, tag="cancel_task", kw_only=True):
    task_id: TaskId
    recursive: bool = True


# --- replies --------------------------------------------------------------------------------------


class Reply(Message, tag="reply", kw_only=True):
    """A reply; which fields it has depends on the request it answers (named in the comments)."""

    rid: RequestId | None = None
    publisher: Address | None = None  # register_node, register_job
    job_id: JobId | None = None  # register_job
    namespace: Name | None = None  # register_job
    nodes: list[dict] | None = None  # get_nodes
    pending_bundles: list | None = None  # get_nodes
    added: bool | None = None  # kv_put
    found: bool | None = None  # kv_get, store_restore, store_pull
    deleted: bool | None = None  # kv_del
    keys: list[bytes] | None = None  # kv_keys
    existing: ActorPublic | None = None  # create_actor
    actor: ActorPublic | None = None  # subscribe_actor, get_named_actor
    names: list | None = None  # list_named_actors
    infeasible: bool | None = None  # create_placement_group
    total: list[Resources] | None = None  # create_placement_group
    state: Literal["PENDING", "CREATED", "REMOVED", "RESCHEDULING"] | None = None  # wait_placement_group
    table: dict[str, dict] | None = None  # placement_group_table
    entry: dict | None = None  # placement_group_table
    rows: list[dict] | None = None  # state_query
    dropped: Count | None = None  # state_query: tasks forgotten to stay within the table's capacity
    summary: dict | None = None  # state_query "summary": the task summary ``event:summary`` carries
    sizes: dict[str, Count] | None = None  # table_sizes
    prefix: Annotated[str, Meta(max_length=256)] | None = None  # register_client, worker_ready, store_create
    node_id: NodeId | None = None  # register_client, worker_ready
    preload: list[tuple[Key, JobId | None]] | None = None  # worker_ready: classes of recent actors to load
    resources: Resources | None = None  # register_client
    spillback: NodeId | None = None  # request_lease: ask that node instead
    address: Address | None = None  # request_lease (spillback)
    cancelled: bool | None = None  # cancel_lease_request
    full: str | None = None  # store_create, store_restore, store_pull
    reuse: Annotated[str, Meta(max_length=256)] | None = None  # store_create: a recycled file to rename into place
    lost: str | None = None  # store_pull
    dead: bool | None = None  # store_pull: the node that held it died
    ok: bool | None = None  # prepare_bundles
    loc: Location | None = None  # get_object
    files: list[dict] | None = None  # log_files
    filename: Name | None = None  # log_read: the file read (the data is the payload frame)
    file_size: Count | None = None  # log_read: the file's size when read
    start: Count | None = None  # log_read: the offset of the first byte sent
    running: bool | None = None  # log_read: the file's process still runs (more may come)


class Error(Message, tag="error", kw_only=True):
    error: str = ""
    etype: Annotated[str, Meta(max_length=256)] | None = None


# --- what each service accepts --------------------------------------------------------------------

HEAD_REQUESTS = (
    RegisterNode,
    UnregisterNode,
    NodeStats,
    RegisterJob,
    JobFinished,
    KvPut,
    KvGet,
    KvDel,
    KvKeys,
    GetNodes,
    CreateActor,
    SubscribeActor,
    GetNamedActor,
    ListNamedActors,
    KillActor,
    ActorHandleReleased,
    WorkerDied,
    Logs,
    TaskEvents,
    Shutdown,
    CreatePlacementGroup,
    RemovePlacementGroup,
    WaitPlacementGroup,
    PlacementGroupTable,
    StateQuery,
    TableSizes,
)
HEAD_NODE_REPLIES = (Reply, Error, LeaseGranted, LeaseInfeasible)  # on the head's sockets to node managers
HEAD_ACTOR_REPLIES = (TaskResult, Error)  # on the head's socket to an actor's worker (its constructor)
NODE_MANAGER_REQUESTS = (
    RegisterClient,
    UnregisterClient,
    RequestLease,
    CancelLeaseRequest,
    ReturnLease,
    WorkerReady,
    WorkerBlocked,
    WorkerUnblocked,
    KillWorker,
    ExitRefused,
    StoreCreate,
    StoreSealed,
    StoreRestore,
    StoreDelete,
    StoreTouch,
    WorkerLogs,
    ClusterView,
    NodeDead,
    StorePull,
    PullObject,
    PrepareBundles,
    CommitBundles,
    CancelBundles,
    TableSizes,
    LogFiles,
    LogRead,
)
NODE_MANAGER_HEAD_MESSAGES = (NodeDead, Reply, Error)  # on a node manager's socket to the head
NODE_MANAGER_PEER_MESSAGES = (ObjectChunk, Error)  # on a node manager's sockets to other node managers
WORKER_REQUESTS = (ExecuteTask, ActorCall, CreateActorInstance)
OWNER_REQUESTS = (GetObject, AddBorrower, RemoveBorrower, CancelTask)
# What reaches a core client on its sockets to the head, its node manager, workers and other owners.
CLIENT_PUSHES = (
    LeaseInfeasible,
    LeasedWorkerDied,
    ActorUpdate,
    StreamItem,
    OwnerDied,
    NodeDead,
    ExitIfIdle,
    LeaseGranted,
    TaskResult,
    Reply,
    Error,
)

SERVICES = {
    "head": HEAD_REQUESTS,
    "head_node_replies": HEAD_NODE_REPLIES,
    "head_actor_replies": HEAD_ACTOR_REPLIES,
    "node_manager": NODE_MANAGER_REQUESTS,
    "node_manager_head": NODE_MANAGER_HEAD_MESSAGES,
    "node_manager_peer": NODE_MANAGER_PEER_MESSAGES,
    "worker": WORKER_REQUESTS,
    "owner": OWNER_REQUESTS,
    "client": CLIENT_PUSHES,
}
ALL_MESSAGES = tuple({cls: None for group in SERVICES.values() for cls in group})
BY_OP = {cls.__struct_config__.tag: cls for cls in ALL_MESSAGES}
_ACCEPTED = {service: {cls.__struct_config__.tag for cls in group} for service, group in SERVICES.items()}
# A tuple of Structs makes a union only through Union[...]: the | operator needs them one by one.
_DECODERS = {service: msgspec.msgpack.Decoder(Union[group]) for service, group in SERVICES.items()}  # noqa: UP007
_ANY = msgspec.msgpack.Decoder(Union[ALL_MESSAGES])  # noqa: UP007


class BadMessage(ValueError):
    """A header that is not a valid message for the service that got it: the request is refused
    (answered with an error of this type when its ``rid`` could be read), and nothing else happens."""

    def __init__(self, op, reason: str, rid: bytes | None = None):
        self.op = op if isinstance(op, str) else None
        self.reason = reason
        self.rid = rid
        super().__init__(f"bad {self.op or 'message'!s} message: {reason}")

    def __reduce__(self):
        return BadMessage, (self.op, self.reason, self.rid)


class _Envelope(Struct):
    op: object = None
    rid: object = None


_envelope = msgspec.msgpack.Decoder(_Envelope)


def _envelope_of(frame) -> tuple:
    """(op, rid) of a header that failed validation, where they can be read at all."""
    try:
        envelope = _envelope.decode(frame)
    except Exception:  # garbage, not a map, or too deep to skip: nothing is readable
        return None, None
    op = envelope.op if isinstance(envelope.op, str) else None
    rid = envelope.rid
    if not (isinstance(rid, bytes) and 1 <= len(rid) <= 32):
        rid = None
    return op, rid


def op_of(message: Message) -> str:
    """The op of a decoded header (its tag: msgspec keeps tags out of the Struct's attributes)."""
    return message.__struct_config__.tag


# Headers carry ids and small fields; values travel in the frames after them. The largest real ones
# are batches (a round of object deletes, a state-API answer of 10,000 rows: a few MiB).
MAX_HEADER_BYTES = 64 << 20


def decode_header(service: str, frame) -> Message:
    """The header in ``frame`` (msgpack bytes) as the Struct of its op, if ``service`` accepts that
    op and every field is valid; :class:`BadMessage` otherwise (never another exception)."""
    decoder = _DECODERS.get(service)
    if decoder is None:
        raise KeyError(f"no service {service!r}: one of {sorted(SERVICES)}")
    try:
        if len(frame) > MAX_HEADER_BYTES:
            # Decoding it would cost a service the memory and the time of its whole loop.
            raise BadMessage(None, f"a header of {len(frame)} bytes (at most {MAX_HEADER_BYTES})")
        return decoder.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as error:
        op, rid = _envelope_of(frame)
        if op is not None and op not in _ACCEPTED[service]:
            reason = f"the {service} service does not accept {op!r}" if op in BY_OP else f"unknown op {op!r}"
        elif isinstance(error, RecursionError):
            reason = "nested too deeply"
        else:
            reason = str(error)
        raise BadMessage(op, reason, rid) from None
    except TypeError:  # not a bytes-like frame at all
        raise BadMessage(None, f"a header must be bytes, not {type(frame).__name__}") from None


def check_packed(frame) -> Message:
    """Validate a header about to be sent against its op's schema, whoever its receiver is (the
    debug check that ``EMBER_CHECK_MESSAGES=1`` switches on in :func:`ember.runtime.protocol.encode`)."""
    try:
        return _ANY.decode(frame)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as error:
        op, rid = _envelope_of(frame)
        raise BadMessage(op, str(error), rid) from None
