"""The head: the cluster's control service (one per cluster).

Data flow::

    node managers --register_node / node_stats / worker_died / logs--> +------+ --PUB logs, events--> drivers,
    drivers ------register_job / job_finished / kv / get_nodes-------> | head |                        widgets
    clients ------create_actor / subscribe_actor / kill_actor -------> +------+ --actor_update--> subscribed clients
                                  |                   ^
               request_lease ---> node manager        | task_result (actor constructor ran)
               create_actor_instance --------> actor's worker

The head keeps the tables that must outlive any one driver: nodes, jobs, the internal key-value
store (exported functions), named and detached actors and their restarts. It is never on a task's
path: tasks and actor calls go straight from caller to worker.
"""

import logging
import os
import time
from dataclasses import dataclass, field

import msgpack

from ember.runtime import protocol, transport
from ember.runtime.bounded import DEAD_JOBS, DEAD_NODES, DESTROYED_ACTORS, EndedCache, cap_from_env
from ember.runtime.head.actor_directory import DEAD, ActorDirectory, ActorInfo
from ember.runtime.head.placement_groups import PlacementGroupManager
from ember.runtime.head.state_table import StateQueries, TaskTable
from ember.runtime.ids import new_id
from ember.runtime.node.cluster_scheduler import ClusterPolicy, NodeView
from ember.runtime.service import Service

logger = logging.getLogger(__name__)

NODE_TIMEOUT = 5.0  # seconds without a heartbeat before a node is declared dead (EMBER_NODE_TIMEOUT_S)
SUSPECT_GRACE = 1.5  # a node whose connection dropped is dead if it sends no heartbeat for this long
VIEW_PERIOD = 0.1  # the cluster view goes to node managers at most this often


@dataclass
class NodeInfo:
    node_id: bytes
    address: str
    resources: dict
    identity: bytes
    alive: bool = True
    available: dict = field(default_factory=dict)
    store: dict = field(default_factory=dict)
    demand: list = field(default_factory=list)
    host: str = "127.0.0.1"
    last_heartbeat: float = field(default_factory=time.monotonic)
    gpus: list = field(default_factory=list)  # GPU assignments: {gpu_id, holder, share}
    # What the head placed there since the node last reported: counted against it when placing,
    # so a burst of actors spreads, but never shown as used (the node's own report says that).
    claimed: dict = field(default_factory=dict)
    suspect_since: float | None = None  # when its connection dropped (see on_node_disconnected)

    def unclaimed(self) -> dict:
        return {name: amount - self.claimed.get(name, 0) for name, amount in self.available.items()}


def _wire_entry(entry: dict) -> dict:
    """A table entry as msgpack carries it: map keys must be strings (clients turn them back)."""
    entry = dict(entry)
    entry["bundles"] = {str(i): b for i, b in entry["bundles"].items()}
    entry["bundles_to_node_id"] = {str(i): n for i, n in entry["bundles_to_node_id"].items()}
    return entry


class Head(ActorDirectory, StateQueries, Service):
    handlers = {
        protocol.REGISTER_NODE: "on_register_node",
        protocol.UNREGISTER_NODE: "on_unregister_node",
        protocol.NODE_STATS: "on_node_stats",
        protocol.REGISTER_JOB: "on_register_job",
        protocol.JOB_FINISHED: "on_job_finished",
        protocol.KV_PUT: "on_kv_put",
        protocol.KV_GET: "on_kv_get",
        protocol.KV_DEL: "on_kv_del",
        protocol.KV_KEYS: "on_kv_keys",
        protocol.GET_NODES: "on_get_nodes",
        protocol.CREATE_ACTOR: "on_create_actor",
        protocol.SUBSCRIBE_ACTOR: "on_subscribe_actor",
        protocol.GET_NAMED_ACTOR: "on_get_named_actor",
        protocol.LIST_NAMED_ACTORS: "on_list_named_actors",
        protocol.KILL_ACTOR: "on_kill_actor",
        protocol.ACTOR_HANDLE_RELEASED: "on_actor_handle_released",
        protocol.WORKER_DIED: "on_worker_died",
        protocol.LOGS: "on_logs",
        protocol.TASK_EVENTS: "on_task_events",
        protocol.SHUTDOWN: "on_shutdown",
        protocol.CREATE_PLACEMENT_GROUP: "on_create_placement_group",
        protocol.REMOVE_PLACEMENT_GROUP: "on_remove_placement_group",
        protocol.WAIT_PLACEMENT_GROUP: "on_wait_placement_group",
        protocol.PLACEMENT_GROUP_TABLE: "on_placement_group_table",
        protocol.STATE_QUERY: "on_state_query",
        protocol.TABLE_SIZES: "on_table_sizes",
    }

    def __init__(self, loop, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.loop = loop
        self.publisher, self.publisher_address = transport.bind_publisher(host)
        self.nodes: dict[bytes, NodeInfo] = {}
        self.node_sockets: dict[bytes, object] = {}
        self.node_monitors: dict[bytes, object] = {}
        self.kv: dict[bytes, bytes] = {}
        self.jobs: dict[bytes, dict] = {}
        self.actors: dict[bytes, ActorInfo] = {}
        self.named: dict[tuple, bytes] = {}
        self.worker_actor: dict[bytes, bytes] = {}
        self.pending_requests: dict[bytes, tuple] = {}  # rid -> (kind, actor_id)
        self.worker_sockets: dict[bytes, object] = {}
        self.next_job = 1
        self.on_stop = None
        self.node_timeout = float(os.environ.get("EMBER_NODE_TIMEOUT_S", NODE_TIMEOUT))
        self.view_dirty = False
        self.last_view = 0.0
        self.last_tick = time.monotonic()
        self.actor_policy = ClusterPolicy(b"")  # actors have no "local" node: least used first
        self.placement_groups = PlacementGroupManager()
        self.task_table = TaskTable()  # the recent tasks, for the state API (bounded)
        # What ended is remembered up to a cap, oldest forgotten first (see ember.runtime.bounded).
        self.dead_actors = EndedCache(cap_from_env(DESTROYED_ACTORS))
        self.dead_nodes = EndedCache(cap_from_env(DEAD_NODES))
        self.dead_jobs = EndedCache(cap_from_env(DEAD_JOBS))
        self.view_removals: dict[bytes, int] = {}  # node id -> the removal version its last view carried

    # --- nodes and jobs -------------------------------------------------------------------------
    def on_register_node(self, identity, header, frames):
        node = NodeInfo(
            header["node_id"], header["address"], header["resources"], identity, host=header.get("host", "")
        )
        node.available = dict(node.resources)
        self.nodes[node.node_id] = node
        sock = transport.connect_dealer(node.address)
        self.node_sockets[node.node_id] = sock
        self.loop.add_socket(sock, self.on_node_reply)
        # A node manager process that dies drops its connections at once: hearing that, we need not
        # wait out the whole heartbeat timeout (a live one that merely lost its connection still
        # heartbeats within SUSPECT_GRACE and is left alone).
        monitor = self.node_monitors[node.node_id] = transport.watch_disconnects(sock)
        self.loop.add_socket(monitor, lambda frames, n=node: self.on_node_disconnected(n))
        self.view_dirty = True
        self.publish(b"event:node", {"node_id": node.node_id, "alive": True, "address": node.address})
        self._schedule_pending_actors()
        self._placement_nodes_changed()
        return {"publisher": self.publisher_address}

    def on_node_stats(self, identity, header, frames):
        """A node's heartbeat, with its resources, store usage and queued demand when they changed."""
        node = self.nodes.get(header["node_id"])
        if node is None:
            return
        if not node.alive:
            # Declared dead while it was cut off: its work has been redone elsewhere, so it must not
            # come back half-alive. It stops, as Ray's raylets do.
            self.send(identity, {"op": protocol.NODE_DEAD, "node_id": node.node_id})
            return
        node.last_heartbeat = time.monotonic()
        if "available" not in header:
            return  # a bare heartbeat: nothing changed
        changed = node.available != header["available"] or node.resources != header.get("total", node.resources)
        node.available = header["available"]
        node.claimed = {}
        node.resources = header.get("total", node.resources)
        node.store = header["store"]
        node.demand = header.get("demand", [])
        node.gpus = header.get("gpus", [])
        if changed:
            self.view_dirty = True
            self._schedule_pending_actors()
        if changed or self.placement_groups.needs_retry:
            self._placement_nodes_changed()
        self.publish(
            b"event:node",
            {
                "node_id": node.node_id,
                "alive": True,
                "available": node.available,
                "total": node.resources,
                "store": node.store,
                "gpus": node.gpus,
            },
        )

    def on_unregister_node(self, identity, header, frames):
        node = self.nodes.get(header["node_id"])
        if node is not None and node.alive:
            self.node_died(node, "it stopped")
        return {}

    def tick(self, now: float) -> None:
        stalled = now - self.last_tick
        self.last_tick = now
        if stalled > 1.0:
            # We did not run for a while (the machine was overloaded, or we were stopped): the
            # heartbeats that queued meanwhile are not late, so nobody is judged on that gap.
            for node in self.nodes.values():
                node.last_heartbeat += stalled
        for node in list(self.nodes.values()):  # a node declared dead may push the oldest dead one out
            if node.alive and now - node.last_heartbeat > self.node_timeout:
                self.node_died(node, f"no heartbeat for {self.node_timeout:g} s")
            elif node.alive and node.suspect_since is not None:
                if node.last_heartbeat > node.suspect_since:
                    node.suspect_since = None  # it reconnected and lives
                elif now - node.suspect_since > SUSPECT_GRACE:
                    self.node_died(node, "its connection dropped and it stopped heartbeating")
        if self.view_dirty and now - self.last_view >= VIEW_PERIOD:
            self.view_dirty = False
            self.last_view = now
            self._send_views()

    def _send_views(self) -> None:
        nodes = [[n.node_id, n.address, n.resources, n.available, n.alive] for n in self.nodes.values()]
        groups = self.placement_groups
        encoded: dict = {}  # one encoding per distinct removal version (usually all nodes share one)
        for node_id, sock in self.node_sockets.items():
            if not self.nodes[node_id].alive:
                continue
            seen = self.view_removals.get(node_id, 0)
            if seen not in encoded:
                # Work that needs a removed group's bundles can never run: node managers fail it.
                # Each node is sent only the removals it has not seen (ZeroMQ keeps our messages to
                # it in order), or all we remember when it is new or too far behind.
                removed, full = groups.removals_since(seen)
                view = {"op": protocol.CLUSTER_VIEW, "nodes": nodes, "removed_groups": removed}
                if full:
                    view["removed_full"] = True
                encoded[seen] = protocol.encode(view)
            sock.send_multipart(encoded[seen])
            self.view_removals[node_id] = groups.removal_version

    def on_node_disconnected(self, node: NodeInfo) -> None:
        if node.alive and node.suspect_since is None:
            node.suspect_since = time.monotonic()

    def _close_monitor(self, node_id: bytes) -> None:
        monitor = self.node_monitors.pop(node_id, None)
        if monitor is not None:
            self.loop.remove_socket(monitor)
            self.node_sockets[node_id].disable_monitor()
            monitor.close(0)

    def node_died(self, node: NodeInfo, why: str) -> None:
        """Mark a node dead: its actors restart elsewhere (or die); owners hear it from their node
        managers (through the next cluster view) and retry its tasks and rebuild its objects."""
        logger.warning("node %s (%s) is dead: %s", node.node_id.hex()[:12], node.address, why)
        node.alive = False
        node.available = {}
        self.view_dirty = True
        self._close_monitor(node.node_id)
        sock = self.node_sockets.pop(node.node_id, None)
        if sock is not None:
            sock.send_multipart(protocol.encode({"op": protocol.NODE_DEAD, "node_id": node.node_id}))
            self.loop.remove_socket(sock)
            sock.close(0)
        for actor in list(self.actors.values()):
            if actor.node_id != node.node_id or actor.state == DEAD:
                continue
            if actor.worker_id is not None:
                self.on_worker_died(None, {"wid": actor.worker_id}, [])
            elif actor.lease_rid is not None:  # its worker was still being leased there
                self.pending_requests.pop(actor.lease_rid, None)
                actor.lease_rid = None
        self.view_removals.pop(node.node_id, None)
        self.publish(b"event:node", {"node_id": node.node_id, "alive": False, "address": node.address})
        self._schedule_pending_actors()
        self.placement_node_died(node.node_id)
        for evicted in self.dead_nodes.add(node.node_id):
            self.nodes.pop(evicted, None)

    def on_register_job(self, identity, header, frames):
        job_id = self.next_job.to_bytes(4, "little")
        self.next_job += 1
        self.jobs[job_id] = {
            "job_id": job_id,
            "driver_pid": header.get("pid"),
            "namespace": header.get("namespace") or job_id.hex(),
            "alive": True,
            "start_time": time.time(),
            "entrypoint": header.get("entrypoint", ""),
        }
        return {"job_id": job_id, "namespace": self.jobs[job_id]["namespace"], "publisher": self.publisher_address}

    def on_job_finished(self, identity, header, frames):
        job = self.jobs.get(header["job_id"])
        if job is None or not job["alive"]:
            return {}
        job["alive"] = False
        job["end_time"] = time.time()
        for evicted in self.dead_jobs.add(header["job_id"]):
            self.jobs.pop(evicted, None)
        for actor in list(self.actors.values()):
            if actor.job_id == header["job_id"] and actor.state != DEAD and not self._outlives_job(actor):
                self._kill(actor, "the job that created the actor finished")
        self._placement_actions(self.placement_groups.job_finished(header["job_id"]))
        return {}

    def on_get_nodes(self, identity, header, frames):
        return {
            "nodes": [
                {
                    "node_id": n.node_id,
                    "address": n.address,
                    "host": n.host,
                    "alive": n.alive,
                    "resources": n.resources,
                    "available": n.available,
                    "store": n.store,
                    "demand": n.demand,
                    "gpus": n.gpus,
                }
                for n in self.nodes.values()
            ],
            "pending_bundles": self.placement_groups.pending_bundles(),
        }

    def on_table_sizes(self, identity, header, frames):
        """How many entries each of the head's tables holds (for soak tests and debugging)."""
        sizes = {
            "actors": len(self.actors),
            "dead_actors": len(self.dead_actors),
            "named": len(self.named),
            "worker_actor": len(self.worker_actor),
            "worker_sockets": len(self.worker_sockets),
            "pending_requests": len(self.pending_requests),
            "nodes": len(self.nodes),
            "jobs": len(self.jobs),
            "kv": len(self.kv),
            "placement_groups": len(self.placement_groups.groups),
            "placement_group_names": len(self.placement_groups.names),
            "removed_placement_groups": len(self.placement_groups.removals),
        }
        return {"sizes": sizes}

    # --- internal key-value store ---------------------------------------------------------------
    def on_kv_put(self, identity, header, frames):
        key = header["key"]
        if header.get("overwrite", True) or key not in self.kv:
            self.kv[key] = bytes(frames[0])
            return {"added": True}
        return {"added": False}

    def on_kv_get(self, identity, header, frames):
        value = self.kv.get(header["key"])
        return ({"found": value is not None}, [value] if value is not None else [])

    def on_kv_del(self, identity, header, frames):
        return {"deleted": self.kv.pop(header["key"], None) is not None}

    def on_kv_keys(self, identity, header, frames):
        prefix = header.get("prefix", b"")
        return {"keys": [k for k in self.kv if k.startswith(prefix)]}

    def on_node_reply(self, frames):
        header, payload = protocol.decode(frames)
        kind, actor_id = self.pending_requests.pop(header.get("rid"), (None, None))
        if kind == "bundles":
            self._on_bundles_reply(actor_id, header)
        elif kind == "lease" or header["op"] == protocol.LEASE_INFEASIBLE:
            self.on_actor_lease(kind, actor_id, header)

    # --- placement groups -----------------------------------------------------------------------
    # The table and its decisions live in PlacementGroupManager (a state machine); here its events
    # come from sockets and its actions go out as messages to node managers and waiting clients.
    def on_create_placement_group(self, identity, header, frames):
        actions = self.placement_groups.create(
            header["pg_id"],
            header["bundles"],
            header["strategy"],
            name=header.get("name") or "",
            namespace=header.get("namespace"),
            job_id=header.get("job_id"),
            detached=bool(header.get("detached")),
            requester=identity,
            soft_target=header.get("soft_target"),
        )
        infeasible = any(a[0] == "infeasible" and a[1] == identity for a in actions)
        self._placement_actions([a for a in actions if not (a[0] == "infeasible" and a[1] == identity)])
        # The creator warns its user at once, as Ray's driver does for a group no node can hold.
        return {"infeasible": infeasible, "total": self._alive_totals() if infeasible else []}

    def on_remove_placement_group(self, identity, header, frames):
        self._placement_actions(self.placement_groups.remove(header["pg_id"]))
        self.view_dirty = True
        return {}

    def on_wait_placement_group(self, identity, header, frames):
        # Answered when the group is created or removed, maybe much later: a delayed reply.
        self._placement_actions(self.placement_groups.wait(header["pg_id"], (identity, header.get("rid"))))

    def on_placement_group_table(self, identity, header, frames):
        pg_id = header.get("pg_id")
        if header.get("name"):
            pg_id = self.placement_groups.lookup(header["name"], header.get("namespace"))
            if pg_id is None:
                raise ValueError(
                    f"Failed to look up placement group with name: {header['name']} "
                    f"(namespace {header.get('namespace')!r})."
                )
        if pg_id is None:
            table = self.placement_groups.table()
            return {"table": {key: _wire_entry(entry) for key, entry in table.items()}}
        entry = self.placement_groups.table(pg_id)
        return {"entry": None if entry is None else _wire_entry(entry)}

    def placement_node_died(self, node_id: bytes) -> None:
        """A node is dead: the placement groups re-place the bundles it held."""
        self._placement_actions(self.placement_groups.node_died(node_id))

    def _placement_nodes_changed(self) -> None:
        views = [NodeView(n.node_id, n.resources, n.available, n.alive) for n in self.nodes.values()]
        self._placement_actions(self.placement_groups.nodes_changed(views))

    def _alive_totals(self) -> list:
        return [n.resources for n in self.nodes.values() if n.alive]

    def _placement_actions(self, actions: list) -> None:
        for action in actions:
            kind = action[0]
            if kind == "reply":
                _, (identity, rid), state = action
                if state is None:
                    self.reply_error(identity, rid, ValueError("no such placement group"))
                else:
                    self.reply(identity, rid, {"state": state})
            elif kind == "infeasible":
                _, requester, pg_id, bundles = action
                logger.warning("placement group %s is infeasible: %s", pg_id.hex(), bundles)
                self.publish(b"event:placement_group", {"pg_id": pg_id, "infeasible": bundles})
            else:
                _, node_id, pg_id, items = action
                sock = self.node_sockets.get(node_id)
                if sock is None:
                    if kind == "prepare":  # the node is gone: as good as a no
                        self._placement_actions(self.placement_groups.prepared(pg_id, node_id, False))
                    continue
                header = {"op": getattr(protocol, f"{kind.upper()}_BUNDLES"), "pg_id": pg_id}
                if kind == "prepare":
                    header["bundles"] = items
                    header["rid"] = rid = new_id(8)
                    self.pending_requests[rid] = ("bundles", (pg_id, node_id))
                else:
                    header["indexes"] = items
                sock.send_multipart(protocol.encode(header))

    def _on_bundles_reply(self, request, header) -> None:
        pg_id, node_id = request
        ok = header.get("op") == protocol.REPLY and bool(header.get("ok"))
        self._placement_actions(self.placement_groups.prepared(pg_id, node_id, ok))

    # --- logs and events ------------------------------------------------------------------------
    def on_logs(self, identity, header, frames):
        for job_id, batch in header["batches"].items():
            self.publisher.send_multipart([b"logs:" + job_id, msgpack.packb(batch)])

    def on_task_events(self, identity, header, frames):
        # Republished as they came; the head's own copy feeds the state API's bounded task table.
        self.publisher.send_multipart([b"event:task", frames[0]])
        self.task_table.apply_batch(frames[0])

    def publish(self, topic: bytes, body: dict) -> None:
        self.publisher.send_multipart([topic, msgpack.packb(body)])

    def on_shutdown(self, identity, header, frames):
        if self.on_stop is not None:
            self.on_stop()
        return {}

    def close(self) -> None:
        for monitor in self.node_monitors.values():
            monitor.close(0)
        for sock in [*self.node_sockets.values(), *self.worker_sockets.values()]:
            sock.close(0)
        self.publisher.close(0)
        super().close()
