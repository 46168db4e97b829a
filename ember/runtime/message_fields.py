"""The field types and nested parts that message headers are made of (see runtime/messages.py).

Ids are bytes of a fixed length, addresses "host:port" strings, amounts finite and non-negative;
the list-shaped parts (argument and return descriptors) are array-like Structs whose elements are
checked against their kind.
"""

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct


def _id(size: int, what: str):
    return Annotated[bytes, Meta(min_length=size, max_length=size, description=what)]


NodeId = _id(16, "a node id")
ClientId = _id(16, "a driver's or worker's client id (a worker's id is its client id)")
WorkerId = ClientId
ActorId = _id(16, "an actor id")
JobId = _id(4, "a job id (the head counts them)")
TaskId = _id(14, "a task id")
ObjectId = _id(16, "an object id: a task id and a 2-byte return index")
PlacementGroupId = _id(18, "a placement group id, as Ray's")
# Request ids are random 8 bytes from clients, a task's or actor's id for task messages, and a few
# fixed short names (b"reg", b"bye") from processes that wait for one reply only.
RequestId = Annotated[bytes, Meta(min_length=1, max_length=32)]
Key = Annotated[bytes, Meta(min_length=1, max_length=1024)]

_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = r"(?:[A-Za-z0-9_.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
Address = Annotated[str, Meta(pattern=f"^{_HOST}:{_PORT}$", description="host:port")]
# An owner's address names its process too (see CoreClient.address): host:port#client[.node].
_OWNER_PATTERN = f"^{_HOST}:{_PORT}(?:#[A-Za-z0-9_.\\-]{{1,64}})?$"
OwnerAddress = Annotated[str, Meta(pattern=_OWNER_PATTERN)]
_OWNER_ADDRESS = re.compile(_OWNER_PATTERN)

Count = Annotated[int, Meta(ge=0, le=2**62)]
Size = Count
Pid = Annotated[int, Meta(ge=1, le=2**31)]
Retries = Annotated[int, Meta(ge=-1, le=2**31)]  # -1: without limit
# Resource amounts: whole numbers stay ints (nodes() shows what the user gave); no NaN, no inf.
Amount = Annotated[int, Meta(ge=0, le=10**18)] | Annotated[float, Meta(ge=0, le=1e18)]
Resources = dict[Annotated[str, Meta(min_length=1, max_length=512)], Amount]
# What is free on a node: below zero while blocked workers' CPUs are lent out, then taken back.
Level = Annotated[int, Meta(ge=-(10**18), le=10**18)] | Annotated[float, Meta(ge=-1e18, le=1e18)]
Availability = dict[Annotated[str, Meta(min_length=1, max_length=512)], Level]
NumReturns = Count | Literal["streaming", "dynamic"]
Name = Annotated[str, Meta(max_length=4096)]
GroupName = Annotated[str, Meta(min_length=1, max_length=4096)]  # an actor's concurrency group
Concurrency = Annotated[int, Meta(ge=1, le=2**31)]
Strategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class _Part(Struct, kw_only=True, forbid_unknown_fields=True):
    """A nested part of a header (no op of its own)."""


class MethodOptions(_Part, kw_only=True, omit_defaults=True):
    """The options ``@ember.method`` gave an actor method besides ``num_returns`` (ActorHandle applies
    them; ``retry_exceptions`` is pickled when it lists exception classes)."""

    num_returns: NumReturns = 1
    name: Name | None = None
    max_task_retries: Retries | None = None
    retry_exceptions: bool | bytes | None = None
    concurrency_group: GroupName | None = None
    enable_task_events: bool | None = None


# Each method's default num_returns, or its options when @ember.method gave others.
MethodMeta = dict[Name, NumReturns | MethodOptions]


class NodeAffinity(_Part, kw_only=True):
    node: Annotated[str, Meta(max_length=256)]
    soft: bool
    spill: bool = False


SchedulingStrategy = Literal["SPREAD"] | NodeAffinity

PackageKey = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class RuntimeEnvSpec(_Part, kw_only=True, omit_defaults=True):
    """A resolved runtime env (see ember/runtime/runtime_env.py): packages by content hash, pip lines."""

    env_vars: dict[str, str] = {}
    working_dir: PackageKey | None = None
    py_modules: list[PackageKey] = []
    pip: list[Annotated[str, Meta(max_length=4096)]] = []


def runtime_env_dict(spec) -> dict:
    """A resolved env as the plain dict its key is computed from (the empty fields left out)."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        spec = msgspec.structs.asdict(spec)
    return {name: value for name, value in spec.items() if value}


class PlacementInfo(Struct, array_like=True, forbid_unknown_fields=True):
    """``[group hex, bundle index (-1: any), capture child tasks]`` of a task run inside a group."""

    group: Annotated[str, Meta(pattern="^[0-9a-f]{36}$")]
    index: Annotated[int, Meta(ge=-1, le=2**31)]
    capture: bool


class ArgRef(Struct, array_like=True, forbid_unknown_fields=True):
    """One top-level ObjectRef argument: ``[key, "v", first frame, buffer count]`` (inline, in the
    payload), ``[key, "s", object id, node id]`` (in a node's store) or ``[key, "r", object id,
    owner address]`` (borrowed: the worker asks its owner)."""

    key: Annotated[int, Meta(ge=0, le=2**31)] | Name
    kind: Literal["v", "s", "r"]
    where: Count | ObjectId
    # A count, a node id or an owner address: msgspec unions cannot hold both bytes and str, so the
    # element is checked against its kind here.
    what: object

    def __post_init__(self):
        where, what = self.where, self.what
        if self.kind == "v":
            ok = isinstance(where, int) and type(what) is int and 0 <= what <= 2**31
        elif self.kind == "s":
            ok = isinstance(where, bytes) and isinstance(what, bytes) and len(what) == 16
        else:
            ok = isinstance(where, bytes) and isinstance(what, str) and _OWNER_ADDRESS.match(what) is not None
        if not ok:
            raise ValueError(f"a {self.kind!r} argument entry has the wrong element types")


class Borrowed(Struct, array_like=True, forbid_unknown_fields=True):
    """``[object id, owner address]`` of a ref inside a returned value."""

    oid: ObjectId
    owner: OwnerAddress


class Return(Struct, array_like=True, forbid_unknown_fields=True):
    """One return value: ``["v", buffer count, size, refs]`` (inline, in the payload frames) or
    ``["s", size, node id, refs]`` (in that node's store)."""

    kind: Literal["v", "s"]
    first: Count
    second: Count | NodeId
    refs: list[Borrowed] = []

    def __post_init__(self):
        if (self.kind == "v") != isinstance(self.second, int):
            raise ValueError(f"a {self.kind!r} return entry has the wrong element types")


class LogLine(Struct, array_like=True, forbid_unknown_fields=True):
    """``[stream, task name, pid, text, output tag]``."""

    stream: Literal["stdout", "stderr"]
    name: Name
    pid: Pid
    text: str
    tag: str | None = None


LogBatches = dict[bytes, list[LogLine]]  # job id (b"" when none) -> lines


class StoreStats(_Part, kw_only=True):
    capacity: Size
    used: Size
    num_objects: Count
    spilled: Size
    num_spilled: Count
    spilling: Count = 0  # objects being written to disk
    restoring: Count = 0  # objects being read back
    pinned: Count = 0  # objects mapped by readers (never spilled meanwhile)
    reserved: Size
    pooled: Size = 0  # recycled files kept for new objects (counted against the capacity)
    largest: list[tuple[ObjectId, Size]] = []


class GpuRow(_Part, kw_only=True):
    gpu_id: Count
    holder: Name
    share: Annotated[float, Meta(ge=0, le=1)]
    actor: bool = False


class ClusterNode(Struct, array_like=True, forbid_unknown_fields=True):
    """One node in the head's cluster view: ``[node id, address, total, available, alive]``."""

    node_id: NodeId
    address: Address
    total: Resources
    available: Availability
    alive: bool


class Bundle(Struct, array_like=True, forbid_unknown_fields=True):
    """``[index, resources]`` of a placement-group bundle to reserve."""

    index: Annotated[int, Meta(ge=0, le=2**31)]
    resources: Resources


class ActorPublic(_Part, kw_only=True):
    """The head's description of an actor (ActorInfo.public)."""

    actor_id: ActorId
    state: Literal["PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"]
    address: Address | None = None
    client_address: OwnerAddress | None = None
    node_id: NodeId | None = None
    num_restarts: Count = 0
    death_cause: str = ""
    pid: Pid | None = None
    name: Name | None = None
    namespace: Name | None = None
    class_name: Name | None = None
    meta: MethodMeta | None = None


class Location(Struct, array_like=True, forbid_unknown_fields=True):
    """Where an owned object's value is (Ownership._reply_object): ``["e"]`` (the error is the
    payload), ``["v", buffer count]`` (inline, in the payload) or ``["s", node id]``."""

    kind: Literal["e", "v", "s"]
    detail: Count | NodeId | None = None

    def __post_init__(self):
        expected = {"e": type(None), "v": int, "s": bytes}[self.kind]
        if not isinstance(self.detail, expected):
            raise ValueError(f"a {self.kind!r} location has the wrong element types")
