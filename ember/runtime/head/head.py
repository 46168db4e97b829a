"""The head: the cluster's control service (one per cluster).

Data flow::

    node managers --register_node / node_stats / worker_died / logs--> +------+ --PUB logs, events--> drivers,
    drivers ------register_job / job_finished / kv / get_nodes-------> | head |                        widgets
    clients ------create_actor / subscribe_actor / kill_actor -------> +------+ --actor_update--> subscribed clients
                                  |                   ^
               request_lease ---> node manager        | task_result (actor constructor ran)
               create_actor_instance --------> actor's worker

The head keeps the tables that must outlive any one driver: nodes, jobs, the internal key-value
store (exported functions), named and detached actors and their restarts. Owners' task events are
republished as they came (``event:task``) and folded into a summary published at most ten times a
second (``event:summary``, see task_summary.py). It is never on a task's
path: tasks and actor calls go straight from caller to worker.
"""

import logging
import os
import time
from dataclasses import dataclass, field

import msgpack
import msgspec

from ember.runtime import messages, protocol, transport
from ember.runtime.bounded import DEAD_JOBS, DEAD_NODES, EndedCache, cap_from_env
from ember.runtime.head.actor_directory import ActorDirectory, HeadLinks
from ember.runtime.head.placement_groups import PlacementGroupManager
from ember.runtime.head.state_table import StateQueries
from ember.runtime.head.task_summary import TaskSummary
from ember.runtime.ids import new_id
from ember.runtime.node.cluster_scheduler import NodeView
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
    ram: list | None = None  # [bytes in use, bytes in all] of the machine's memory
    workers: dict | None = None  # how many workers are idle, busy, actor, blocked
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


class Head(Service):
    """The control service. Its actor table (:class:`ActorDirectory`) and its state-API answers
    (:class:`StateQueries`) are objects it owns; the op table points at their methods."""

    schema = "head"
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
        protocol.WORKER_DIED: "on_worker_died",
        protocol.LOGS: "on_logs",
        protocol.TASK_EVENTS: "on_task_events",
        protocol.SHUTDOWN: "on_shutdown",
        protocol.CREATE_PLACEMENT_GROUP: "on_create_placement_group",
        protocol.REMOVE_PLACEMENT_GROUP: "on_remove_placement_group",
        protocol.WAIT_PLACEMENT_GROUP: "on_wait_placement_group",
        protocol.PLACEMENT_GROUP_TABLE: "on_placement_group_table",
        protocol.TABLE_SIZES: "on_table_sizes",
    }

    # Ops served by the objects the head owns rather than by its own methods: op -> (attribute, method).
    delegated = {
        protocol.CREATE_ACTOR: ("actor_directory", "on_create_actor"),
        protocol.SUBSCRIBE_ACTOR: ("actor_directory", "on_subscribe_actor"),
        protocol.GET_NAMED_ACTOR: ("actor_directory", "on_get_named_actor"),
        protocol.LIST_NAMED_ACTORS: ("actor_directory", "on_list_named_actors"),
        protocol.KILL_ACTOR: ("actor_directory", "on_kill_actor"),
        protocol.ACTOR_HANDLE_RELEASED: ("actor_directory", "on_actor_handle_released"),
        protocol.STATE_QUERY: ("state_queries", "on_state_query"),
    }

    def __init__(self, loop, host: str = "127.0.0.1", port: int = 0):
        self.loop = loop
        self.nodes: dict[bytes, NodeInfo] = {}
        self.node_ids: dict[bytes, bytes] = {}  # ROUTER identity of a node manager -> its node id
        self.node_sockets: dict[bytes, object] = {}
        self.node_monitors: dict[bytes, object] = {}
        self.kv: dict[bytes, bytes] = {}
        self.jobs: dict[bytes, dict] = {}
        self.job_owners: dict[bytes, bytes] = {}  # job id -> ROUTER identity of the driver that registered it
        self.bundle_requests: dict[bytes, tuple] = {}  # rid -> (pg_id, node_id) of a prepare in flight
        self.actor_directory = ActorDirectory(
            HeadLinks(loop, self.nodes, self.kv, self._send_node, self.send, self.publish)
        )
        self.task_summary = TaskSummary()  # the recent tasks (state API) and what the widgets show of all
        self.state_queries = StateQueries(self.task_summary, self.actor_directory.rows, self.jobs)
        super().__init__(host, port)
        for op, (owner, method) in self.delegated.items():
            self.table[op] = getattr(getattr(self, owner), method)
        self.publisher, self.publisher_address = transport.bind_publisher(host)
        self.next_job = 1
        self.on_stop = None
        self.node_timeout = float(os.environ.get("EMBER_NODE_TIMEOUT_S", NODE_TIMEOUT))
        self.view_dirty = False
        self.last_view = 0.0
        self.last_tick = time.monotonic()
        self.placement_groups = PlacementGroupManager()
        # What ended is remembered up to a cap, oldest forgotten first (see ember.runtime.bounded).
        self.dead_nodes = EndedCache(cap_from_env(DEAD_NODES))
        self.dead_jobs = EndedCache(cap_from_env(DEAD_JOBS))
        self.view_removals: dict[bytes, int] = {}  # node id -> the removal version its last view carried

    # --- nodes and jobs -------------------------------------------------------------------------
    def on_register_node(self, identity, msg, frames):
        known = self.nodes.get(msg.node_id)
        if known is not None:
            if known.alive and known.identity == identity:
                return {"publisher": self.publisher_address}  # said twice: nothing changes
            # A dead node stays dead (its work was redone elsewhere); a live one is not replaced.
            raise ValueError(f"node {msg.node_id.hex()} is registered already")
        if identity in self.node_ids:
            raise ValueError("this connection registered another node already")
        node = NodeInfo(msg.node_id, msg.address, dict(msg.resources), identity, host=msg.host)
        node.available = dict(node.resources)
        self.nodes[node.node_id] = node
        self.node_ids[identity] = node.node_id
        sock = transport.connect_dealer(node.address)
        self.node_sockets[node.node_id] = sock
        self.loop.add_socket(sock, lambda frames, n=node.node_id: self.on_node_reply(n, frames))
        # A node manager process that dies drops its connections at once: hearing that, we need not
        # wait out the whole heartbeat timeout (a live one that merely lost its connection still
        # heartbeats within SUSPECT_GRACE and is left alone).
        monitor = self.node_monitors[node.node_id] = transport.watch_disconnects(sock)
        self.loop.add_socket(monitor, lambda frames, n=node: self.on_node_disconnected(n))
        self.view_dirty = True
        self.publish(b"event:node", {"node_id": node.node_id, "alive": True, "address": node.address})
        self.actor_directory.schedule_pending()
        self._placement_nodes_changed()
        return {"publisher": self.publisher_address}

    def _sending_node(self, identity: bytes, op: str, node_id: bytes | None = None) -> NodeInfo | None:
        """The node that sent ``op`` on this connection, or None (logged) when it is not a registered
        node, or not the node it names: only a node manager speaks for its node and its workers."""
        node = self.nodes.get(self.node_ids.get(identity, b""))
        if node is None or (node_id is not None and node.node_id != node_id):
            logger.warning("refused %s from %r: not sent by the node manager it concerns", op, identity)
            return None
        return node

    def on_node_stats(self, identity, msg, frames):
        """A node's heartbeat, with its resources, store usage and queued demand when they changed."""
        node = self._sending_node(identity, protocol.NODE_STATS, msg.node_id)
        if node is None:
            return
        if not node.alive:
            # Declared dead while it was cut off: its work has been redone elsewhere, so it must not
            # come back half-alive. It stops, as Ray's raylets do.
            self.send(identity, {"op": protocol.NODE_DEAD, "node_id": node.node_id})
            return
        node.last_heartbeat = time.monotonic()
        if msg.available is None:
            return  # a bare heartbeat: nothing changed
        total = dict(msg.total) if msg.total is not None else node.resources
        changed = node.available != msg.available or node.resources != total
        node.available = dict(msg.available)
        node.claimed = {}
        node.resources = total
        node.store = msgspec.to_builtins(msg.store, builtin_types=(bytes,)) if msg.store is not None else {}
        node.demand = msg.demand
        node.gpus = msgspec.to_builtins(msg.gpus, builtin_types=(bytes,))
        node.ram = msg.ram
        node.workers = msg.workers
        if changed:
            self.view_dirty = True
            self.actor_directory.schedule_pending()
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
                "ram": node.ram,
                "demand": node.demand,
                "workers": node.workers,
            },
        )

    def on_unregister_node(self, identity, msg, frames):
        node = self._sending_node(identity, protocol.UNREGISTER_NODE, msg.node_id)
        if node is None:
            raise PermissionError("only a node manager may unregister its node")
        if node.alive:
            self.node_died(node, "it stopped")
        return {}

    def on_worker_died(self, identity, msg, frames):
        node = self._sending_node(identity, protocol.WORKER_DIED)
        if node is not None and node.alive:
            self.actor_directory.worker_died(msg.wid, node.node_id)

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
        largest = (entry[0] for node in self.nodes.values() for entry in (node.store or {}).get("largest") or ())
        summary = self.task_summary.due(now, largest)
        if summary is not None:
            self.publish(b"event:summary", summary)
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
        for rid in [rid for rid, (_, node_id) in self.bundle_requests.items() if node_id == node.node_id]:
            del self.bundle_requests[rid]  # never answered now: the placement groups hear of the death below
        self.view_removals.pop(node.node_id, None)
        self.publish(b"event:node", {"node_id": node.node_id, "alive": False, "address": node.address})
        self.actor_directory.node_died(node.node_id)
        self.placement_node_died(node.node_id)
        for evicted in self.dead_nodes.add(node.node_id):
            gone = self.nodes.pop(evicted, None)
            if gone is not None and self.node_ids.get(gone.identity) == evicted:
                del self.node_ids[gone.identity]

    def on_register_job(self, identity, msg, frames):
        job_id = self.next_job.to_bytes(4, "little")
        self.next_job += 1
        self.jobs[job_id] = {
            "job_id": job_id,
            "driver_pid": msg.pid,
            "namespace": msg.namespace or job_id.hex(),
            "alive": True,
            "start_time": time.time(),
            "entrypoint": msg.entrypoint,
        }
        self.job_owners[job_id] = identity
        return {"job_id": job_id, "namespace": self.jobs[job_id]["namespace"], "publisher": self.publisher_address}

    def on_job_finished(self, identity, msg, frames):
        job = self.jobs.get(msg.job_id)
        if job is None or not job["alive"]:
            return {}
        # Its driver says so, or the node manager that saw the driver's process end.
        sender = self.nodes.get(self.node_ids.get(identity, b""))
        if self.job_owners.get(msg.job_id) != identity and (sender is None or not sender.alive):
            raise PermissionError("only the job's driver or a node manager may end a job")
        job["alive"] = False
        job["end_time"] = time.time()
        del self.job_owners[msg.job_id]
        for evicted in self.dead_jobs.add(msg.job_id):
            self.jobs.pop(evicted, None)
        self.actor_directory.job_finished(msg.job_id)
        self._placement_actions(self.placement_groups.job_finished(msg.job_id))
        self.task_summary.job_finished(msg.job_id)
        return {}

    def on_get_nodes(self, identity, msg, frames):
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
                    "ram": n.ram,
                    "workers": n.workers,
                }
                for n in self.nodes.values()
            ],
            "pending_bundles": self.placement_groups.pending_bundles(),
        }

    def on_table_sizes(self, identity, msg, frames):
        """How many entries each of the head's tables holds (for soak tests and debugging)."""
        actors = self.actor_directory
        sizes = {
            "actors": len(actors.actors),
            "dead_actors": len(actors.dead_actors),
            "named": len(actors.named),
            "worker_actor": len(actors.worker_actor),
            "worker_sockets": len(actors.worker_sockets),
            "pending_requests": len(self.bundle_requests) + len(actors.leases),
            "nodes": len(self.nodes),
            "node_ids": len(self.node_ids),
            "jobs": len(self.jobs),
            "job_owners": len(self.job_owners),
            "kv": len(self.kv),
            "placement_groups": len(self.placement_groups.groups),
            "placement_group_names": len(self.placement_groups.names),
            "removed_placement_groups": len(self.placement_groups.removals),
        }
        return {"sizes": sizes}

    # --- internal key-value store ---------------------------------------------------------------
    def on_kv_put(self, identity, msg, frames):
        if not frames:
            raise ValueError("kv_put carries its value as the first payload frame")
        if msg.overwrite or msg.key not in self.kv:
            self.kv[msg.key] = bytes(frames[0])
            return {"added": True}
        return {"added": False}

    def on_kv_get(self, identity, msg, frames):
        value = self.kv.get(msg.key)
        return ({"found": value is not None}, [value] if value is not None else [])

    def on_kv_del(self, identity, msg, frames):
        return {"deleted": self.kv.pop(msg.key, None) is not None}

    def on_kv_keys(self, identity, msg, frames):
        return {"keys": [k for k in self.kv if k.startswith(msg.prefix)]}

    def on_node_reply(self, node_id: bytes, frames: list) -> None:
        """Replies on our socket to a node manager: to bundle prepares and to leases for actors. One
        that does not decode as such is logged and dropped."""
        try:
            msg = messages.decode_header("head_node_replies", frames[0])
        except messages.BadMessage as error:
            logger.warning("refused a reply from node %s: %s", node_id.hex()[:12], error)
            return
        request = self.bundle_requests.get(msg.rid)
        if request is not None and request[1] == node_id:
            del self.bundle_requests[msg.rid]
            ok = isinstance(msg, messages.Reply) and bool(msg.ok)
            self._placement_actions(self.placement_groups.prepared(request[0], node_id, ok))
        elif msg.rid is not None:
            self.actor_directory.on_lease_reply(msg, node_id)

    def _send_node(self, node_id: bytes, header: dict) -> bool:
        """Send to a node manager; False when we have no connection to it (it is dead or unknown)."""
        sock = self.node_sockets.get(node_id)
        if sock is None:
            return False
        sock.send_multipart(protocol.encode(header))
        return True

    # --- placement groups -----------------------------------------------------------------------
    # The table and its decisions live in PlacementGroupManager (a state machine); here its events
    # come from sockets and its actions go out as messages to node managers and waiting clients.
    def on_create_placement_group(self, identity, msg, frames):
        actions = self.placement_groups.create(
            msg.pg_id,
            [dict(bundle) for bundle in msg.bundles],
            msg.strategy,
            name=msg.name,
            namespace=msg.namespace,
            job_id=msg.job_id,
            detached=msg.detached,
            requester=identity,
            soft_target=msg.soft_target,
        )
        infeasible = any(a[0] == "infeasible" and a[1] == identity for a in actions)
        self._placement_actions([a for a in actions if not (a[0] == "infeasible" and a[1] == identity)])
        # The creator warns its user at once, as Ray's driver does for a group no node can hold.
        return {"infeasible": infeasible, "total": self._alive_totals() if infeasible else []}

    def on_remove_placement_group(self, identity, msg, frames):
        self._placement_actions(self.placement_groups.remove(msg.pg_id))
        self.view_dirty = True
        return {}

    def on_wait_placement_group(self, identity, msg, frames):
        # Answered when the group is created or removed, maybe much later: a delayed reply.
        if msg.rid is None:
            raise ValueError("wait_placement_group needs a request id to answer")
        self._placement_actions(self.placement_groups.wait(msg.pg_id, (identity, msg.rid)))

    def on_placement_group_table(self, identity, msg, frames):
        pg_id = msg.pg_id
        if msg.name:
            pg_id = self.placement_groups.lookup(msg.name, msg.namespace)
            if pg_id is None:
                raise ValueError(
                    f"Failed to look up placement group with name: {msg.name} (namespace {msg.namespace!r})."
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
                    self.bundle_requests[rid] = (pg_id, node_id)
                else:
                    header["indexes"] = items
                sock.send_multipart(protocol.encode(header))

    # --- logs and events ------------------------------------------------------------------------
    def on_logs(self, identity, msg, frames):
        node = self._sending_node(identity, protocol.LOGS)
        if node is None or not node.alive:
            return
        for job_id, batch in msg.batches.items():
            self.publisher.send_multipart([b"logs:" + job_id, msgspec.msgpack.encode(batch)])

    def on_task_events(self, identity, msg, frames):
        if not frames:
            raise ValueError("task_events carries its events as the first payload frame")
        # Republished as they came (for views that show tasks one by one); the head's own fold feeds
        # the state API's bounded task records and the summary the other views show.
        self.publisher.send_multipart([b"event:task", frames[0]])
        self.task_summary.apply_batch(frames[0])

    def publish(self, topic: bytes, body: dict) -> None:
        self.publisher.send_multipart([topic, msgpack.packb(body)])

    def on_shutdown(self, identity, msg, frames):
        if self.on_stop is not None:
            self.on_stop()
        return {}

    def close(self) -> None:
        for monitor in self.node_monitors.values():
            monitor.close(0)
        for sock in [*self.node_sockets.values(), *self.actor_directory.worker_sockets.values()]:
            sock.close(0)
        self.publisher.close(0)
        super().close()
