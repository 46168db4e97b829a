"""Placement groups, with Ray's names and semantics (``ray.util.placement_group``).

A placement group reserves bundles of resources across the cluster atomically; tasks and actors
then run inside a bundle with ``PlacementGroupSchedulingStrategy``. The head keeps the table
(:mod:`ember.runtime.head.placement_groups`); this module is the client's side of it.
"""

import concurrent.futures
import sys

from ember.connection import connected_client
from ember.runtime import protocol
from ember.runtime.head.placement import STRATEGIES
from ember.runtime.head.placement_groups import check_bundles
from ember.runtime.ids import new_id, new_task_id, return_object_id
from ember.runtime.messages import Error, Reply
from ember.runtime.task_context import current_task

PG_ID_SIZE = 18  # as Ray's PlacementGroupID


class PlacementGroupID:
    """The id of a placement group (``pg.id``)."""

    __slots__ = ("_id",)

    def __init__(self, binary: bytes):
        self._id = bytes(binary)

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def is_nil(self) -> bool:
        return not any(self._id)

    def __eq__(self, other):
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        return f"PlacementGroupID({self.hex()})"

    def __reduce__(self):
        return PlacementGroupID, (self._id,)


class PlacementGroup:
    """A handle to a placement group: pass it to tasks, actors and scheduling strategies.

    ``ready()`` gives an ObjectRef that resolves (to this handle) once every bundle is reserved;
    ``wait(timeout_seconds)`` blocks for the same and says whether it happened in time.
    """

    def __init__(self, id: PlacementGroupID, bundle_cache: list | None = None):
        self.id = id
        self.bundle_cache = bundle_cache

    @staticmethod
    def empty() -> "PlacementGroup":
        return PlacementGroup(PlacementGroupID(bytes(PG_ID_SIZE)))

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    @property
    def bundle_specs(self) -> list:
        """The bundles as created: a list of dicts of resource name to amount."""
        if self.bundle_cache is None:
            entry = _table_entry(self.id.binary())
            self.bundle_cache = [] if entry is None else [entry["bundles"][i] for i in sorted(entry["bundles"])]
        return [dict(bundle) for bundle in self.bundle_cache]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves to this placement group once it is created, for
        ``ember.get``/``ember.wait`` (a group removed first makes ``get`` raise)."""
        client = connected_client()
        oid = return_object_id(new_task_id(), 0)
        client.new_owned(oid)
        ref = client.ref(oid)
        handle = PlacementGroup(self.id, self.bundle_cache)

        def on_reply(reply, frames):
            # On the I/O thread: the head answers once the group is created or removed.
            from ember.runtime.serialization import serialize

            state = getattr(reply, "state", None)
            if isinstance(reply, Reply) and state == "CREATED":
                data, buffers, _ = serialize(handle, "a placement group")
                client.complete(oid, inline=(data, [bytes(b) for b in buffers]), size=len(data))
                return
            why = getattr(reply, "error", None) or f"it was {str(state or 'removed').lower()} before it was created"
            client.complete(oid, error=RuntimeError(f"Placement group {self.id.hex()} is not ready: {why}."))

        request = {"op": protocol.WAIT_PLACEMENT_GROUP, "pg_id": self.id.binary()}
        client.call_soon(client.send, "head", request, (), on_reply)
        return ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Block until the group is created; False if it is not within ``timeout_seconds``."""
        client = connected_client()
        answer = concurrent.futures.Future()
        rid = new_id(8)
        request = {"op": protocol.WAIT_PLACEMENT_GROUP, "rid": rid, "pg_id": self.id.binary()}
        client.call_soon(client.send, "head", request, (), lambda reply, _: answer.set_result(reply))
        try:
            reply = answer.result(timeout_seconds)
        except concurrent.futures.TimeoutError:
            # Stop listening: a late answer is then dropped instead of kept for nobody.
            client.call_soon(client.forget_reply, rid)
            return False
        if isinstance(reply, Error):
            raise ValueError(f"Placement group {self.id.hex()} does not exist.")
        return getattr(reply, "state", None) == "CREATED"

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"PlacementGroup(id={self.id.hex()})"

    def __reduce__(self):
        return PlacementGroup, (self.id, self.bundle_cache)


def placement_group(
    bundles: list,
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _soft_target_node_id: str | None = None,
) -> PlacementGroup:
    """Reserve ``bundles`` (a list of dicts of resource name to amount) with ``strategy``: PACK,
    SPREAD, STRICT_PACK or STRICT_SPREAD. Returns at once; ``pg.ready()``/``pg.wait()`` tell when
    the bundles are reserved. ``lifetime="detached"`` keeps the group after its job ends;
    ``name`` makes it findable with :func:`get_placement_group` in the job's namespace."""
    check_bundles(bundles, strategy)
    if lifetime not in (None, "detached"):
        raise ValueError(f"Placement group `lifetime` must be None or 'detached', got {lifetime!r}.")
    if not isinstance(name, str):
        raise TypeError(f"Placement group `name` must be a string, got {type(name).__name__}.")
    if _soft_target_node_id is not None and strategy != "STRICT_PACK":
        raise ValueError("_soft_target_node_id currently only works with the STRICT_PACK strategy.")
    client = connected_client()
    context = current_task.get()
    pg_id = PlacementGroupID(new_id(PG_ID_SIZE))
    bundles = [dict(bundle) for bundle in bundles]
    reply, _ = client.request(
        "head",
        {
            "op": protocol.CREATE_PLACEMENT_GROUP,
            "pg_id": pg_id.binary(),
            "bundles": bundles,
            "strategy": strategy,
            "name": name,
            "namespace": client.current_namespace(),
            "job_id": (context.job_id if context is not None else None) or client.job_id,
            "detached": lifetime == "detached",
            "soft_target": bytes.fromhex(_soft_target_node_id) if _soft_target_node_id else None,
        },
    )
    if reply.infeasible:
        # Only the resources the bundles ask for: a node's full list (with every group's) says little.
        asked = {resource for bundle in bundles for resource in bundle}
        nodes = [{k: v for k, v in total.items() if k in asked} for total in reply.total or []]
        print(
            f"Warning: placement group {name or pg_id.hex()} with bundles {bundles} and strategy {strategy} "
            f"cannot be placed on any set of nodes in the cluster (nodes have {nodes}). "
            "It stays pending until nodes that can hold it join.",
            file=sys.stderr,
            flush=True,
        )
    return PlacementGroup(pg_id, bundles)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's bundles; tasks and actors running in it are killed (as in Ray)."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() expects a PlacementGroup, got {type(placement_group).__name__}.")
    connected_client().request("head", {"op": protocol.REMOVE_PLACEMENT_GROUP, "pg_id": placement_group.id.binary()})


def _from_wire(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    entry = dict(entry)
    entry["bundles"] = {int(i): bundle for i, bundle in entry["bundles"].items()}
    entry["bundles_to_node_id"] = {int(i): node for i, node in entry["bundles_to_node_id"].items()}
    return entry


def _table_entry(pg_id: bytes) -> dict | None:
    reply, _ = connected_client().request("head", {"op": protocol.PLACEMENT_GROUP_TABLE, "pg_id": pg_id})
    return _from_wire(reply.entry)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """The state of one group (a dict with ``placement_group_id``, ``name``, ``bundles``,
    ``bundles_to_node_id``, ``strategy``, ``state``, ``stats``), or of all by id hex."""
    if placement_group is not None:
        return _table_entry(placement_group.id.binary()) or {}
    reply, _ = connected_client().request("head", {"op": protocol.PLACEMENT_GROUP_TABLE})
    return {key: _from_wire(entry) for key, entry in (reply.table or {}).items()}


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The group named ``placement_group_name`` in the job's namespace; ValueError if none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError(f"get_placement_group() expects a non-empty name, got {placement_group_name!r}.")
    client = connected_client()
    reply, _ = client.request(
        "head",
        {
            "op": protocol.PLACEMENT_GROUP_TABLE,
            "name": placement_group_name,
            "namespace": client.current_namespace(),
        },
    )
    entry = _from_wire(reply.entry)
    if entry is None:
        raise ValueError(f"There is no placement group named {placement_group_name!r}.")
    bundles = [entry["bundles"][i] for i in sorted(entry["bundles"])]
    return PlacementGroup(PlacementGroupID(bytes.fromhex(entry["placement_group_id"])), bundles)


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the running task or actor was scheduled in; None in a driver or
    outside any group."""
    context = current_task.get()
    group = getattr(context, "placement_group", None)
    if group is None or isinstance(group, PlacementGroup):
        return group
    if isinstance(group, (list, tuple)):  # [pg hex, bundle index, capture child tasks], as tasks carry it
        group = group[0]
    return PlacementGroup(PlacementGroupID(bytes.fromhex(group) if isinstance(group, str) else group))


def check_placement_group_index(placement_group: PlacementGroup, bundle_index: int) -> None:
    """ValueError unless ``bundle_index`` is -1 (any bundle) or names a bundle of the group."""
    if bundle_index < -1:
        raise ValueError("placement_group_bundle_index must be >= -1.")
    if (
        bundle_index >= 0
        and placement_group.bundle_cache is not None
        and bundle_index >= len(placement_group.bundle_cache)
    ):
        raise ValueError(
            f"placement_group_bundle_index {bundle_index} is out of range: the group has "
            f"{len(placement_group.bundle_cache)} bundles."
        )


__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "STRATEGIES",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]
