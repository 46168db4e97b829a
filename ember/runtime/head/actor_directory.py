"""The head's actor table: creation, placement, restarts, names and deaths of actors.

Data flow::

    clients -----create_actor / subscribe / get_named / kill / handle_released----> +-------+
    node managers --lease granted (a worker for the actor) / worker_died ---------> | actor |
    the actor's worker --task_result of its constructor----------------------------> | table |
                   <--request_lease (on the node the policy picks), kill_worker---- +-------+
    subscribed clients <--actor_update (ALIVE with its address, RESTARTING, DEAD)--

An object the :class:`~ember.runtime.head.head.Head` owns; what it uses of the head (the node table,
sending to node managers and clients, the event hub) comes in as :class:`HeadLinks`. Each actor's
state is an :class:`~ember.runtime.head.actor_lifecycle.ActorLifecycle`; this module turns socket
events into its events and carries out its actions. The node for an actor is picked by the same
policy as for tasks (``cluster_scheduler``).
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from ember.runtime import messages, protocol, transport
from ember.runtime.bounded import DESTROYED_ACTORS, EndedCache, cap_from_env
from ember.runtime.head import actor_lifecycle as life
from ember.runtime.head.actor_lifecycle import ALIVE, DEAD, PENDING, RESTARTING, ActorLifecycle, outlives_job
from ember.runtime.ids import new_id
from ember.runtime.message_fields import runtime_env_dict
from ember.runtime.messages import ActorSpec, CreateActorInstance, LeaseGranted, LeaseInfeasible
from ember.runtime.node.cluster_scheduler import INFEASIBLE, ClusterPolicy, NodeView
from ember.runtime.node.scheduler import to_fixed
from ember.runtime.runtime_env import ACTOR_SETUP_FAILED

logger = logging.getLogger(__name__)

__all__ = ["ALIVE", "DEAD", "PENDING", "RESTARTING", "ActorDirectory", "ActorInfo", "HeadLinks", "forgotten_actor"]

NIL_ACTOR_ID = b"\x00" * 16
HEAD_CLIENT_ID = new_id(16)  # who the head is to the node managers it leases actors' workers from
# The fields of a creation spec that the constructor's worker gets (the rest names the head's message).
_INSTANCE_FIELDS = tuple(name for name in ActorSpec.__struct_fields__ if name != "rid")


@dataclass
class HeadLinks:
    """What the actor directory needs of the head, passed in explicitly."""

    loop: object  # the event loop its sockets to actors' workers join (add_socket / remove_socket)
    nodes: dict  # node id -> NodeInfo: the head's node table, read here, never changed but for ``claimed``
    kv: dict  # the internal key-value store: where exported classes are
    send_node: Callable[[bytes, dict], bool]  # a message to a node manager; False when it has no socket
    send_client: Callable[[bytes, dict], None]  # a message to a peer of the head's ROUTER
    publish: Callable[[bytes, dict], None]  # an event on the head's event hub


@dataclass
class ActorInfo:
    actor_id: bytes
    spec: ActorSpec | None  # None once dead: only needed to (re)start it
    frames: list
    job_id: bytes | None
    life: ActorLifecycle
    # What lookups and the fate of the actors it created still read once it is dead.
    name: str | None = None
    namespace: str | None = None
    class_name: str | None = None
    meta: dict | None = None
    owner_actor: bytes | None = None
    address: str | None = None
    client_address: str | None = None
    worker_id: bytes | None = None
    node_id: bytes | None = None
    subscribers: set = field(default_factory=set)
    lease_rid: bytes | None = None
    pid: int | None = None
    waiting_for_node: bool = False

    @property
    def state(self) -> str:
        return self.life.state

    def public(self) -> dict:
        return {
            "actor_id": self.actor_id,
            "state": self.life.state,
            "address": self.address,
            "client_address": self.client_address,
            "node_id": self.node_id,
            "num_restarts": self.life.num_restarts,
            "death_cause": self.life.death_cause,
            "pid": self.pid,
            "name": self.name,
            "namespace": self.namespace,
            "class_name": self.class_name,
            "meta": self.meta,
        }


def forgotten_actor(actor_id: bytes) -> dict:
    """What the head answers about an actor id it does not know: dead, as Ray's GCS answers."""
    return {
        "actor_id": actor_id,
        "state": DEAD,
        "address": None,
        "client_address": None,
        "node_id": None,
        "num_restarts": 0,
        "death_cause": "The actor is dead; the cluster no longer remembers how it died (see "
        "EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT).",
        "pid": None,
        "name": None,
        "namespace": None,
        "class_name": None,
        "meta": None,
    }


class ActorDirectory:
    """Every actor of the cluster, from its creation until it is dead and forgotten."""

    def __init__(self, links: HeadLinks, dead_cap: int | None = None):
        self.links = links
        self.actors: dict[bytes, ActorInfo] = {}
        self.named: dict[tuple, bytes] = {}  # (namespace, name) -> id of the live actor with that name
        self.worker_actor: dict[bytes, bytes] = {}  # worker id -> the actor it hosts
        self.worker_sockets: dict[bytes, object] = {}  # worker id -> our socket to it (its constructor)
        self.leases: dict[bytes, bytes] = {}  # request id -> actor, for requests for a worker in flight
        self.policy = ClusterPolicy(b"")  # actors have no "local" node: least used first
        # Dead actors are remembered up to a cap, oldest forgotten first (see ember.runtime.bounded).
        self.dead_actors = EndedCache(cap_from_env(DESTROYED_ACTORS) if dead_cap is None else dead_cap)

    # --- requests from clients ------------------------------------------------------------------
    def on_create_actor(self, identity, msg, frames):
        spec = msg.spec
        if msg.actor_id == NIL_ACTOR_ID:
            raise ValueError("an actor id cannot be nil")
        if msg.actor_id in self.actors:
            raise ValueError(f"an actor with id {msg.actor_id.hex()} exists already")
        if spec.cid not in self.links.kv:
            raise ValueError(f"the actor's class {spec.class_name!r} was not exported to the cluster")
        key = (spec.namespace, spec.name)
        if spec.name:
            existing = self.actors.get(self.named.get(key, b""))
            if existing is not None and existing.state != DEAD:
                if spec.get_if_exists:
                    return {"existing": existing.public()}
                raise ValueError(f"An actor named {spec.name!r} already exists in namespace {key[0]!r}.")
        actor = ActorInfo(
            msg.actor_id,
            spec,
            [bytes(f) for f in frames],
            msg.job_id,
            ActorLifecycle(spec.max_restarts, spec.detached),
            name=spec.name,
            namespace=spec.namespace,
            class_name=spec.class_name,
            meta=msgspec.to_builtins(spec.meta, builtin_types=(bytes,)),  # replies are plain msgpack
            owner_actor=spec.owner_actor,
        )
        actor.subscribers.add(identity)
        self.actors[actor.actor_id] = actor
        if spec.name:
            self.named[key] = actor.actor_id
        self._place(actor)
        return {"existing": None}

    def on_subscribe_actor(self, identity, msg, frames):
        actor = self.actors.get(msg.actor_id)
        if actor is None:
            # Every actor is registered here before a handle to it exists: an id we do not know is
            # one that died and was forgotten (past EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT).
            return {"actor": forgotten_actor(msg.actor_id)}
        if actor.state != DEAD:  # a dead actor sends no more updates
            actor.subscribers.add(identity)
        return {"actor": actor.public()}

    def on_get_named_actor(self, identity, msg, frames):
        actor = self.actors.get(self.named.get((msg.namespace, msg.name), b""))
        if actor is None or actor.state == DEAD:
            return {"actor": None}
        return {"actor": actor.public()}

    def on_list_named_actors(self, identity, msg, frames):
        names = []
        for (namespace, name), actor_id in self.named.items():
            if self.actors[actor_id].state != DEAD and (msg.all_namespaces or namespace == msg.namespace):
                names.append({"name": name, "namespace": namespace} if msg.all_namespaces else name)
        return {"names": names}

    def on_kill_actor(self, identity, msg, frames):
        actor = self.actors.get(msg.actor_id)
        if actor is None:
            raise ValueError("no such actor")
        cause = msg.cause or "The actor was killed by ember.kill()."
        self._run(actor, actor.life.kill(cause, msg.no_restart))
        return {}

    def on_actor_handle_released(self, identity, msg, frames):
        actor = self.actors.get(msg.actor_id)
        if actor is not None and not actor.name and not actor.life.detached:
            self._run(actor, actor.life.kill("all references to the actor were removed"))

    # --- events from the head -------------------------------------------------------------------
    def worker_died(self, worker_id: bytes, node_id: bytes | None = None) -> None:
        """A worker died; if it hosted an actor, the actor restarts or dies. With ``node_id``, only a
        worker of that node counts (a node speaks for its own workers only)."""
        actor = self.actors.get(self.worker_actor.get(worker_id, b""))
        if actor is None or actor.worker_id != worker_id or (node_id is not None and actor.node_id != node_id):
            return
        del self.worker_actor[worker_id]
        self._close_worker_socket(worker_id)
        actor.worker_id = actor.address = actor.client_address = None
        default = f"The actor's worker process (pid={actor.pid}) died unexpectedly."
        self._run(actor, actor.life.worker_died(default))

    def node_died(self, node_id: bytes) -> None:
        """A node is dead: its actors restart elsewhere (or die)."""
        for actor in list(self.actors.values()):
            if actor.node_id != node_id or actor.state == DEAD:
                continue
            if actor.worker_id is not None:
                self.worker_died(actor.worker_id)
            elif actor.lease_rid is not None:  # its worker was still being leased there
                self.leases.pop(actor.lease_rid, None)
                actor.lease_rid = None
                self._run(actor, actor.life.lease_lost())
        self.schedule_pending()

    def job_finished(self, job_id: bytes) -> None:
        for actor in list(self.actors.values()):
            if actor.job_id == job_id and actor.state != DEAD:
                self._run(actor, actor.life.job_finished(self._outlives_job(actor)))

    def schedule_pending(self) -> None:
        """Place the actors that wait for a node (called when the nodes changed)."""
        for actor in list(self.actors.values()):  # placing one may end another, and forget a third
            if actor.life.wants_worker():
                self._place(actor)
            elif actor.waiting_for_node and actor.lease_rid is not None and self._placeable(actor):
                # It queues on a node that cannot run it, and one that can has joined: move it.
                actor.waiting_for_node = False
                self.links.send_node(actor.node_id, {"op": protocol.CANCEL_LEASE_REQUEST, "rid": actor.lease_rid})

    def on_lease_reply(self, msg, node_id: bytes) -> None:
        """A node manager answered a request for an actor's worker (``msg`` is a head_node_replies Struct)."""
        actor_id = self.leases.get(msg.rid)
        actor = self.actors.get(actor_id or b"")
        if actor is None or actor.node_id != node_id or actor.lease_rid != msg.rid:
            if isinstance(msg, LeaseGranted) and msg.node_id == node_id:
                self.leases.pop(msg.rid, None)
                self._kill_worker(node_id, msg.wid)  # nobody wants it any more
            return
        if isinstance(msg, LeaseInfeasible):
            # It stays queued there; the creator warns its user, as for a task.
            update = {"op": protocol.LEASE_INFEASIBLE, "rid": msg.rid, "res": msg.res, "total": msg.total}
            for identity in actor.subscribers:
                self.links.send_client(identity, update)
            return
        del self.leases[msg.rid]
        actor.lease_rid = None
        if isinstance(msg, LeaseGranted):
            actor.worker_id = msg.wid  # known before the actions run: a dead actor's grant is stopped
            actions = actor.life.worker_granted()
            if life.KILL_WORKER in actions:
                actor.worker_id = None
                self._kill_worker(node_id, msg.wid)
                return
            self._start_instance(actor, msg)
            return
        if isinstance(msg, messages.Error):
            cause = msg.error or "lease failed"
            if msg.etype == "RuntimeEnvSetupError":
                cause = ACTOR_SETUP_FAILED + cause
            self._run(actor, actor.life.lease_failed(cause))
        elif msg.cancelled:
            self._run(actor, actor.life.lease_withdrawn())
        else:
            logger.warning("an unexpected answer to the lease for actor %s: %r", actor.actor_id.hex(), msg)
            self._run(actor, actor.life.lease_lost())
            self.schedule_pending()

    # --- placement ------------------------------------------------------------------------------
    def _choose_node(self, actor: ActorInfo) -> tuple:
        """The policy's answer for an actor (the head has no "local" node: never LOCAL)."""
        views = {
            n.node_id: NodeView(n.node_id, to_fixed(n.resources), to_fixed(n.unclaimed()), address=n.address)
            for n in self.links.nodes.values()
            if n.alive
        }
        strategy = actor.spec.strategy
        if strategy is not None and not isinstance(strategy, str):
            strategy = msgspec.to_builtins(strategy)
        try:
            return self.policy.choose_node(to_fixed(actor.spec.resources), strategy, views)
        except ValueError as error:  # a node id that is not hex, say: this actor can never be placed
            return "error", f"The actor cannot be scheduled: {error}"

    def _placeable(self, actor: ActorInfo) -> bool:
        return actor.spec is not None and self._choose_node(actor)[0] not in (INFEASIBLE, "error")

    def _place(self, actor: ActorInfo) -> None:
        nodes = [n for n in self.links.nodes.values() if n.alive]
        if not nodes or not actor.life.wants_worker():
            return
        wanted = actor.spec.resources
        where, message = self._choose_node(actor)
        if where == "error":
            self._run(actor, actor.life.unplaceable(message))
            return
        actor.waiting_for_node = where == INFEASIBLE
        if actor.waiting_for_node:
            # Nowhere can run it yet: queue it on the node with the most of what it needs; the node
            # manager warns its creator, and a node that joins later gets it (see schedule_pending).
            node = max(nodes, key=lambda n: sum(min(n.resources.get(k, 0), v) for k, v in wanted.items()))
        else:
            node = self.links.nodes[where]
            for name, amount in wanted.items():  # until its next heartbeat says better
                node.claimed[name] = node.claimed.get(name, 0) + amount
        rid = new_id(8)
        header = {
            "op": protocol.REQUEST_LEASE,
            "rid": rid,
            "res": wanted,
            "run": actor.spec.running,
            "what": actor.class_name or "",
            "actor": True,
            "job": actor.job_id,
            "cid": actor.spec.cid,
        }
        if actor.spec.renv is not None:
            header["renv"] = runtime_env_dict(actor.spec.renv)
        # Node managers lease only to registered clients: the head registers as a peer right before
        # each request, on the same socket (which also covers one that reconnected meanwhile).
        register = {"op": protocol.REGISTER_CLIENT, "client_id": HEAD_CLIENT_ID, "pid": os.getpid(), "kind": "peer"}
        if self.links.send_node(node.node_id, register) and self.links.send_node(node.node_id, header):
            actor.lease_rid = rid
            actor.node_id = node.node_id
            self.leases[rid] = actor.actor_id
            actor.life.lease_requested()

    def _start_instance(self, actor: ActorInfo, lease: LeaseGranted) -> None:
        """Send the constructor to the worker granted for the actor."""
        actor.address = lease.addr
        actor.client_address = lease.caddr
        actor.pid = lease.pid
        self.worker_actor[actor.worker_id] = actor.actor_id
        sock = transport.connect_dealer(actor.address)
        self.worker_sockets[actor.worker_id] = sock
        self.links.loop.add_socket(sock, lambda f, a=actor.actor_id: self.on_actor_created(a, f))
        spec = actor.spec
        instance = CreateActorInstance(
            **{name: getattr(spec, name) for name in _INSTANCE_FIELDS},
            rid=actor.actor_id,
            actor_id=actor.actor_id,
            gpus=lease.gpus,
            assigned=lease.res,
            restarted=actor.life.num_restarts > 0,
        )
        instance.job = actor.job_id
        sock.send_multipart([msgspec.msgpack.encode(instance), *actor.frames], copy=False)

    def on_actor_created(self, actor_id: bytes, frames: list) -> None:
        """The actor's worker answered its constructor (a head_actor_replies message)."""
        actor = self.actors.get(actor_id)
        try:
            msg = messages.decode_header("head_actor_replies", frames[0])
        except messages.BadMessage as error:
            logger.warning("refused a reply from the worker of actor %s: %s", actor_id.hex(), error)
            return
        if msg.rid != actor_id:
            logger.warning("the worker of actor %s answered %r, not its constructor", actor_id.hex(), msg.rid)
            return
        self._close_worker_socket(actor.worker_id if actor else None)
        if actor is None or actor.state == DEAD:
            return
        if isinstance(msg, messages.Error) or msg.rejected:
            cause = msg.error if isinstance(msg, messages.Error) else "its worker refused it"
            self._run(actor, actor.life.constructor_failed(f"The actor could not be created: {cause}"))
        elif msg.err:
            self._run(actor, actor.life.constructor_failed(_constructor_error(frames[1:])))
        else:
            self._run(actor, actor.life.constructed())

    # --- carrying out the lifecycle's actions ---------------------------------------------------
    def _run(self, actor: ActorInfo, actions: list) -> None:
        for action in actions:
            if action == life.PLACE:
                self._place(actor)
            elif action == life.KILL_WORKER:
                self._kill_worker(actor.node_id, actor.worker_id)
            elif action == life.CANCEL_LEASE:
                # If it was granted meanwhile, on_lease_reply stops that worker.
                self.links.send_node(actor.node_id, {"op": protocol.CANCEL_LEASE_REQUEST, "rid": actor.lease_rid})
            elif action == life.NOTIFY:
                self._notify(actor)
            elif action[0] == life.DIED:
                self._set_dead(actor)
            else:
                raise ValueError(f"unknown actor action {action!r}")

    def _kill_worker(self, node_id, worker_id) -> None:
        if worker_id is not None:
            self.links.send_node(node_id, {"op": protocol.KILL_WORKER, "wid": worker_id})

    def _close_worker_socket(self, worker_id) -> None:
        sock = self.worker_sockets.pop(worker_id, None)
        if sock is not None:
            self.links.loop.remove_socket(sock)
            sock.close(0)

    def _outlives_job(self, actor: ActorInfo) -> bool:
        def lookup(actor_id):
            found = self.actors.get(actor_id)
            return None if found is None else (found.life.detached, found.owner_actor, found.state == DEAD)

        return outlives_job(actor.actor_id, lookup)

    def _set_dead(self, actor: ActorInfo) -> None:
        self._notify(actor)
        # The constructor's arguments and its creation spec are only needed to restart it, and it
        # will not restart: a dead actor keeps what lookups and its children's fate read.
        actor.frames = []
        actor.spec = None
        actor.subscribers = set()
        if actor.lease_rid is not None:
            self.leases.pop(actor.lease_rid, None)
            actor.lease_rid = None
        for evicted in self.dead_actors.add(actor.actor_id):
            self._forget_actor(evicted)
        for child in list(self.actors.values()):  # the actors it created share its fate
            if child.owner_actor == actor.actor_id:
                self._run(child, child.life.owner_died())
        if actor.name and self.named.get((actor.namespace, actor.name)) == actor.actor_id:
            del self.named[(actor.namespace, actor.name)]

    def _forget_actor(self, actor_id: bytes) -> None:
        """Drop a dead actor's entry for good (the oldest past the cap of remembered dead actors)."""
        actor = self.actors.pop(actor_id, None)
        if actor is not None and actor.worker_id is not None:
            if self.worker_actor.get(actor.worker_id) == actor_id:
                del self.worker_actor[actor.worker_id]
            self._close_worker_socket(actor.worker_id)

    def _notify(self, actor: ActorInfo) -> None:
        update = {"op": protocol.ACTOR_UPDATE, "actor": actor.public()}
        for identity in actor.subscribers:
            self.links.send_client(identity, update)
        self.links.publish(
            b"event:actor",
            {
                "actor_id": actor.actor_id,
                "state": actor.state,
                "name": actor.name,
                "class_name": actor.class_name,
                "pid": actor.pid,
                "node_id": actor.node_id,
                "num_restarts": actor.life.num_restarts,
            },
        )

    def rows(self) -> list:
        """The state API's actor rows."""
        return [_actor_row(actor) for actor in self.actors.values()]


def _constructor_error(payload: list) -> str:
    from ember.runtime.serialization import deserialize

    try:
        cause = str(deserialize(payload[0]))
    except Exception as error:  # the exception's class is not importable in the head, or no payload
        cause = f"the actor's constructor raised ({error})"
    return f"The actor's constructor raised an exception:\n{cause}"


def _actor_row(actor: ActorInfo) -> dict:
    spec = actor.spec
    row = actor.public()
    row.pop("meta", None)
    row.update(
        job_id=actor.job_id,
        is_detached=actor.life.detached,
        required_resources=dict(spec.resources) if spec is not None else {},
        placement_group_id=spec.pg.group if spec is not None and spec.pg is not None else None,
        max_restarts=actor.life.max_restarts,
    )
    return row
