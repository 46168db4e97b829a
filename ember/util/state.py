"""The state API, as Ray's ``ray.util.state``: list the cluster's tasks, actors, objects, nodes,
jobs and placement groups (``ember.timeline()``, in :mod:`ember.util.timeline`, reads the same tasks).

Each ``list_*`` returns dataclasses with Ray's field names (``TaskState``, ``ActorState``, ...);
``filters=[("state", "=", "RUNNING")]`` keeps the items whose field equals (``"="``) or differs from
(``"!="``) the value, compared as strings regardless of case; ``limit`` (100 by default) caps the
count; ``detail=False`` leaves the detail-only fields None, as Ray's basic columns do.

Where the data comes from, and its limits:

- tasks: the head's table of the most recent tasks (10,000 by default, ``EMBER_TASK_TABLE_SIZE`` on
  the head), fed by the owners' task events, which reach it within about a second. Older tasks, and
  calls made with ``enable_task_events=False``, are not listed.
- objects: in Ember (as in Ray) only an object's owner knows it. ``list_objects`` lists the objects
  the calling process owns; the stores' totals per node are in ``list_nodes(detail=True)``.
- actors, jobs, nodes, placement groups: the head's tables.
"""

import dataclasses
from dataclasses import dataclass, field

from ember.connection import connected_client
from ember.runtime import protocol

DEFAULT_LIMIT = 100
_PREDICATES = ("=", "!=")


def _detail(default=None):
    return field(default=default, metadata={"detail": True})


@dataclass
class TaskState:
    task_id: str
    name: str
    state: str
    job_id: str | None = None
    actor_id: str | None = None
    type: str = "NORMAL_TASK"
    func_or_class_name: str | None = None
    parent_task_id: str | None = None
    node_id: str | None = None
    worker_id: str | None = None
    worker_pid: int | None = None
    error_type: str | None = None
    attempt_number: int = 0
    language: str = _detail("PYTHON")
    error_message: str | None = _detail()
    creation_time_ms: int | None = _detail()
    start_time_ms: int | None = _detail()
    end_time_ms: int | None = _detail()


@dataclass
class ActorState:
    actor_id: str
    class_name: str
    state: str
    job_id: str
    name: str
    node_id: str | None = None
    pid: int | None = None
    ray_namespace: str | None = None
    num_restarts: int = 0
    death_cause: str | None = _detail()
    is_detached: bool | None = _detail()
    placement_group_id: str | None = _detail()
    required_resources: dict | None = _detail()
    repr_name: str | None = _detail()


@dataclass
class ObjectState:
    object_id: str
    object_size: int
    task_status: str
    reference_type: str
    type: str
    pid: int
    ip: str
    node_id: str | None = _detail()
    call_site: str = _detail("disabled")


@dataclass
class NodeState:
    node_id: str
    node_ip: str
    is_head_node: bool
    state: str
    node_name: str
    resources_total: dict
    labels: dict = field(default_factory=dict)
    state_message: str | None = None
    resources_available: dict | None = _detail()
    object_store: dict | None = _detail()


@dataclass
class JobState:
    job_id: str
    type: str
    status: str
    entrypoint: str
    submission_id: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    driver_info: dict | None = _detail()
    namespace: str | None = _detail()


@dataclass
class PlacementGroupState:
    placement_group_id: str
    name: str
    state: str
    bundles: list = _detail()
    strategy: str | None = _detail()
    stats: dict | None = _detail()


# --- the queries ---------------------------------------------------------------------------------
def _query(kind: str) -> list:
    """The head's rows of one state table."""
    reply, _ = connected_client().request("head", {"op": protocol.STATE_QUERY, "kind": kind})
    return reply.rows or []


def _hex(value):
    return value.hex() if isinstance(value, (bytes, bytearray)) else value


def _ms(seconds):
    return None if seconds is None else int(seconds * 1000)


def _task_state(row: dict) -> TaskState:
    error = row.get("error")
    return TaskState(
        task_id=_hex(row["task_id"]),
        name=row.get("name") or "",
        state=row["state"],
        job_id=_hex(row.get("job")),
        actor_id=_hex(row.get("actor")),
        type="ACTOR_TASK" if row.get("actor") else "NORMAL_TASK",
        func_or_class_name=row.get("name") or None,
        parent_task_id=_hex(row.get("parent")),
        node_id=_hex(row.get("node")),
        worker_id=_hex(row.get("worker")),
        worker_pid=row.get("pid"),
        error_type=error.split(":", 1)[0] if error else None,
        error_message=error,
        creation_time_ms=_ms(row.get("submitted")),
        start_time_ms=_ms(row.get("running")),
        end_time_ms=_ms(row.get("finished", row.get("failed"))),
    )


def _actor_state(row: dict) -> ActorState:
    return ActorState(
        actor_id=_hex(row["actor_id"]),
        class_name=row.get("class_name") or "",
        state=row["state"],
        job_id=_hex(row.get("job_id")),
        name=row.get("name") or "",
        node_id=_hex(row.get("node_id")),
        pid=row.get("pid"),
        ray_namespace=row.get("namespace"),
        num_restarts=row.get("num_restarts", 0),
        death_cause=row.get("death_cause") or None,
        is_detached=row.get("is_detached"),
        placement_group_id=_hex(row.get("placement_group_id")),
        required_resources=row.get("required_resources"),
        repr_name=row.get("class_name") or "",
    )


def _job_state(row: dict) -> JobState:
    return JobState(
        job_id=_hex(row["job_id"]),
        type="DRIVER",
        status="RUNNING" if row.get("alive") else "SUCCEEDED",
        entrypoint=row.get("entrypoint") or "",
        start_time=_ms(row.get("start_time")),
        end_time=_ms(row.get("end_time")),
        driver_info={"pid": row.get("driver_pid")},
        namespace=row.get("namespace"),
    )


def _node_states() -> list:
    from ember.api import _nodes_raw

    states = []
    for index, node in enumerate(_nodes_raw()):
        host = node["host"] or node["address"].rsplit(":", 1)[0]
        states.append(
            NodeState(
                node_id=node["node_id"].hex(),
                node_ip=host,
                # The head registers no node of its own; the first node to join is the one that
                # `ember start --head` (or ember.init) started beside it.
                is_head_node=index == 0,
                state="ALIVE" if node["alive"] else "DEAD",
                node_name=host,
                resources_total=node["resources"],
                resources_available=node["available"],
                object_store=node.get("store", {}),
            )
        )
    return states


def _object_states() -> list:
    import os

    from ember.runtime.client.ownership import FAILED, PENDING

    client = connected_client()
    ip = client.address.split("//")[-1].rsplit(":", 1)[0] if client.address else ""
    kind = "DRIVER" if client.kind == "driver" else "WORKER"
    objects = client.objects
    with objects.lock:
        entries = list(objects.entries.items())
        local = dict(objects.references.local)
        owned = dict(objects.references.owned)
    states = []
    for oid, entry in entries:
        status = {PENDING: "PENDING_NODE_ASSIGNMENT", FAILED: "FAILED"}.get(entry.state, "FINISHED")
        held = owned.get(oid)
        if local.get(oid):
            reference_type = "LOCAL_REFERENCE"
        elif held is not None and held.borrowers:
            reference_type = "BORROWER"
        else:
            reference_type = "CAPTURED_IN_OBJECT"  # held only inside another object's value
        states.append(
            ObjectState(
                object_id=oid.hex(),
                object_size=entry.size,
                task_status=status,
                reference_type=reference_type,
                type=kind,
                pid=os.getpid(),
                ip=ip,
                node_id=_hex(entry.node_id),
            )
        )
    return states


def _placement_group_states() -> list:
    from ember.util.placement_group import placement_group_table

    states = []
    for entry in placement_group_table().values():
        bundles = [
            {
                "bundle_id": index,
                "unit_resources": entry["bundles"][index],
                "node_id": entry["bundles_to_node_id"].get(index),
            }
            for index in sorted(entry["bundles"])
        ]
        states.append(
            PlacementGroupState(
                placement_group_id=entry["placement_group_id"],
                name=entry.get("name") or "",
                state=entry["state"],
                bundles=bundles,
                strategy=entry.get("strategy"),
                stats=entry.get("stats"),
            )
        )
    return states


def _select(items: list, filters, limit, detail: bool, what: str) -> list:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}.")
    checks = []
    names = None
    for condition in filters or ():
        if not isinstance(condition, (tuple, list)) or len(condition) != 3:
            raise ValueError(f"A filter is a (key, predicate, value) tuple, got {condition!r}.")
        key, predicate, value = condition
        if predicate not in _PREDICATES:
            raise ValueError(f"Unsupported filter predicate {predicate!r}: use '=' or '!='.")
        if names is None and items:
            names = {f.name for f in dataclasses.fields(items[0])}
        if names is not None and key not in names:
            raise ValueError(f"Cannot filter {what} on {key!r}; valid keys: {', '.join(sorted(names))}.")
        checks.append((key, predicate == "=", str(value).lower()))
    selected = []
    for item in items:
        if all((str(getattr(item, key)).lower() == value) == equal for key, equal, value in checks):
            selected.append(item if detail else _basic(item))
            if limit is not None and len(selected) >= limit:
                break
    return selected


def _basic(item):
    cleared = {f.name: None for f in dataclasses.fields(item) if f.metadata.get("detail")}
    return dataclasses.replace(item, **cleared)


def list_tasks(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout=None, detail: bool = False, **_):
    """The cluster's recent tasks and actor calls, oldest first, as TaskState (see the module's notes)."""
    rows = _query("tasks")
    return _select([_task_state(row) for row in rows], filters, limit, detail, "tasks")


def list_actors(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout=None, detail: bool = False, **_):
    """Every actor the head knows, dead ones included, as ActorState."""
    rows = _query("actors")
    return _select([_actor_state(row) for row in rows], filters, limit, detail, "actors")


def list_objects(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout=None, detail: bool = False, **_):
    """The objects this process owns, as ObjectState (only an object's owner knows it)."""
    return _select(_object_states(), filters, limit, detail, "objects")


def list_nodes(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout=None, detail: bool = False, **_):
    """The cluster's nodes, dead ones included, as NodeState."""
    return _select(_node_states(), filters, limit, detail, "nodes")


def list_jobs(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout=None, detail: bool = False, **_):
    """The jobs (drivers) the cluster has had, as JobState."""
    rows = _query("jobs")
    return _select([_job_state(row) for row in rows], filters, limit, detail, "jobs")


def list_placement_groups(
    address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout=None, detail: bool = False, **_
):
    """The cluster's placement groups, removed ones included, as PlacementGroupState."""
    return _select(_placement_group_states(), filters, limit, detail, "placement groups")


def _get(items: list, key: str, wanted) -> object | None:
    wanted = _hex(wanted)
    for item in items:
        if getattr(item, key) == wanted:
            return item
    return None


def get_task(id, address=None, timeout=None, **_) -> TaskState | None:
    """The task with this id (hex or bytes), or None when the head's task table does not hold it."""
    return _get(list_tasks(limit=None, detail=True), "task_id", id)


def get_actor(id, address=None, timeout=None, **_) -> ActorState | None:
    """The actor with this id (hex or bytes), or None."""
    return _get(list_actors(limit=None, detail=True), "actor_id", id)


def get_node(id, address=None, timeout=None, **_) -> NodeState | None:
    """The node with this id (hex or bytes), or None."""
    return _get(list_nodes(limit=None, detail=True), "node_id", id)


def get_placement_group(id, address=None, timeout=None, **_) -> PlacementGroupState | None:
    """The placement group with this id (hex or bytes), or None."""
    return _get(list_placement_groups(limit=None, detail=True), "placement_group_id", id)


# --- logs ------------------------------------------------------------------------------------------
# Each node manager lists and reads its own log files (runtime/node/log_files.py): the driver asks the
# node's manager directly, with the cluster's secret, as it asks one for a lease.
LOG_CHUNK = 1 << 20  # bytes a node sends per answer (its cap)
FOLLOW_INTERVAL = 0.5  # seconds between looks for more output with follow=True


def _log_node(node_id=None, node_ip=None) -> dict:
    """The head's entry of the node asked for: by id (hex or bytes), by ip, else the head's node."""
    from ember.api import _nodes_raw

    nodes = _nodes_raw()
    if node_id is not None:
        wanted = _hex(node_id)
        found = [n for n in nodes if n["node_id"].hex() == wanted]
        if not found:
            raise ValueError(f"No node {wanted!r} in the cluster (list_nodes() lists them).")
    elif node_ip is not None:
        found = [n for n in nodes if (n["host"] or n["address"].rsplit(":", 1)[0]) == node_ip]
        if not found:
            raise ValueError(f"No node with ip {node_ip!r} in the cluster.")
        alive = [n for n in found if n["alive"]]
        if len(alive) > 1:
            raise ValueError(f"{len(alive)} nodes run at {node_ip!r}: name one with node_id.")
        found = alive or found
    else:
        if not nodes:
            raise ValueError("The cluster has no node.")
        found = nodes[:1]  # the head's node (see _node_states), as `ray logs` reads by default
    node = found[0]
    if not node["alive"]:
        raise ValueError(f"Node {node['node_id'].hex()} is dead: only alive nodes' logs can be read.")
    return node


def _ask_node(node: dict, header: dict, timeout) -> tuple:
    client = connected_client()
    address = node["address"]
    try:
        return client.request(address, header, timeout=timeout)
    finally:
        # A socket to a node we hold no lease on is closed after a while unused (see PeerSockets).
        client.call_soon(client.release_peer, address)


def _node_log_files(node: dict, timeout) -> list:
    return _ask_node(node, {"op": protocol.LOG_FILES}, timeout)[0].files or []


def list_logs(address=None, node_id=None, node_ip=None, glob_filter=None, timeout: int = 30, **_) -> dict:
    """The log files of one node, as Ray's: ``{kind: [file names]}`` (kinds ``node_manager``, the node's
    process, Ray's raylet; and ``worker``, one file per worker process, exited ones included).
    ``node_id`` (hex) or ``node_ip`` picks the node (default: the head's); ``glob_filter`` keeps the
    names that match it (``"worker*"``). Each node lists only the files it wrote, even when several
    share a machine's session directory."""
    import fnmatch

    files = _node_log_files(_log_node(node_id, node_ip), timeout)
    groups: dict = {}
    for row in files:
        if glob_filter is None or fnmatch.fnmatch(row["name"], glob_filter):
            groups.setdefault(row["kind"], []).append(row["name"])
    return groups


def get_log(
    address=None,
    node_id=None,
    node_ip=None,
    filename=None,
    actor_id=None,
    task_id=None,
    pid=None,
    follow: bool = False,
    tail: int = -1,
    timeout: int = 30,
    suffix: str = "out",
    encoding: str | None = "utf-8",
    errors: str | None = "strict",
    submission_id=None,
    attempt_number: int = 0,
    _interval: float | None = None,
    **_,
):
    """A log file of a node, as Ray's: a generator of text (bytes when ``encoding`` is None), named by
    ``filename`` (see list_logs), by the ``pid`` of its process, or by the actor or task whose worker
    wrote it. ``tail``: the last that many lines (-1: the whole file); ``follow``: go on yielding what
    is written, until the file's process exits. A worker's stdout and stderr share one file, so
    ``suffix`` changes nothing. ValueError for a name or pid that is not one of the node's files."""
    if submission_id is not None:
        raise ValueError("A job's logs come from JobSubmissionClient.get_job_logs (or `ember job logs`).")
    if not isinstance(tail, int) or isinstance(tail, bool) or tail < -1:
        raise ValueError(f"tail must be -1 (the whole file) or a number of lines, got {tail!r}.")
    if actor_id is not None:
        actor = get_actor(actor_id)
        if actor is None or actor.pid is None:
            raise ValueError(f"No actor {_hex(actor_id)!r} with a worker process.")
        node_id, pid = actor.node_id, actor.pid
    elif task_id is not None:
        task = get_task(task_id)
        if task is None or task.worker_pid is None:
            raise ValueError(f"No task {_hex(task_id)!r} that ran on a worker (the head's task table).")
        node_id, pid = task.node_id, task.worker_pid
    if filename is None and pid is None:
        raise ValueError("get_log needs a filename, a pid, an actor_id or a task_id.")
    node = _log_node(node_id, node_ip)
    which = {"name": filename} if filename is not None else {}
    if pid is not None:
        which["pid"] = int(pid)
    return _log_text(node, which, tail, follow, timeout, encoding, errors, _interval or FOLLOW_INTERVAL)


def _read(node, which: dict, timeout, **where) -> tuple:
    reply, frames = _ask_node(node, {"op": protocol.LOG_READ, **which, **where}, timeout)
    return reply, bytes(frames[0]) if frames else b""


def _tail_start(node, which: dict, lines: int, timeout) -> tuple[int, dict]:
    """Where the last ``lines`` lines of the file start, read back from its end a part at a time."""
    reply, found = _read(node, which, timeout, tail=LOG_CHUNK)
    which = {"name": reply.filename}  # from now on the file found, even if the pid starts another
    start = reply.start
    cut = _last_lines(found, lines)
    while cut is None and start > 0:
        begin = max(0, start - LOG_CHUNK)
        found = _read(node, which, timeout, offset=begin, length=start - begin)[1] + found
        start = begin
        cut = _last_lines(found, lines)
    return start + (cut or 0), which


def _last_lines(data: bytes, lines: int) -> int | None:
    """Where in ``data`` its last ``lines`` lines begin; None when it holds fewer (a last line without
    its newline counts, as `tail -n` counts it)."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    if lines == 0:
        return len(data)
    for _ in range(lines):
        end = data.rfind(b"\n", 0, end)
        if end < 0:
            return None
    return end + 1


def _log_text(node, which: dict, tail: int, follow: bool, timeout, encoding, errors, interval: float):
    import codecs
    import time

    if tail >= 0:
        offset, which = _tail_start(node, which, tail, timeout)
    else:
        offset = 0
    decoder = codecs.getincrementaldecoder(encoding)(errors or "strict") if encoding else None
    while True:
        reply, data = _read(node, which, timeout, offset=offset, length=LOG_CHUNK)
        which = {"name": reply.filename}
        offset = reply.start + len(data)
        if data:
            text = decoder.decode(data) if decoder else data
            if text:
                yield text
        if offset < reply.file_size:
            continue
        if not follow or not reply.running:
            break
        time.sleep(interval)
    if decoder is not None:
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest
