"""The head's actor table: creation, placement, restarts, names and deaths of actors.

Data flow::

    clients -----create_actor / subscribe / get_named / kill / handle_released----> +-------+
    node managers --lease granted (a worker for the actor) / worker_died ---------> | actor |
    the actor's worker --task_result of its constructor----------------------------> | table |
                   <--request_lease (on the node the policy picks), kill_worker---- +-------+
    subscribed clients <--actor_update (ALIVE with its address, RESTARTING, DEAD)--

A mixin of :class:`~ember.runtime.head.head.Head`, whose sockets, node table and event hub it uses. The
node for an actor is picked by the same policy as for tasks (``cluster_scheduler``).
"""

import os
from dataclasses import dataclass, field

from ember.runtime import protocol, transport
from ember.runtime.ids import new_id
from ember.runtime.node.cluster_scheduler import INFEASIBLE, NodeView
from ember.runtime.node.scheduler import to_fixed

HEAD_CLIENT_ID = new_id(16)  # who the head is to the node managers it leases actors' workers from

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"
KEPT_WHEN_DEAD = ("name", "namespace", "class_name", "meta", "detached", "owner_actor")


@dataclass
class ActorInfo:
    actor_id: bytes
    spec: dict
    frames: list
    job_id: bytes
    state: str = PENDING
    address: str | None = None
    client_address: str | None = None
    worker_id: bytes | None = None
    node_id: bytes | None = None
    num_restarts: int = 0
    no_restart: bool = False
    death_cause: str = ""
    subscribers: set = field(default_factory=set)
    lease_rid: bytes | None = None
    pid: int | None = None
    waiting_for_node: bool = False

    def public(self) -> dict:
        return {
            "actor_id": self.actor_id,
            "state": self.state,
            "address": self.address,
            "client_address": self.client_address,
            "node_id": self.node_id,
            "num_restarts": self.num_restarts,
            "death_cause": self.death_cause,
            "pid": self.pid,
            "name": self.spec.get("name"),
            "namespace": self.spec.get("namespace"),
            "class_name": self.spec.get("class_name"),
            "meta": self.spec.get("meta"),
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
    def _outlives_job(self, actor: ActorInfo) -> bool:
        """Detached actors outlive their job, and so do the actors they created: an actor shares the
        fate of the actor that created it (its owner), as in Ray."""
        while actor is not None:
            if actor.spec.get("detached"):
                return True
            actor = self.actors.get(actor.spec.get("owner_actor") or b"")
            if actor is not None and actor.state == DEAD:
                return False
        return False

    def on_create_actor(self, identity, header, frames):
        spec = header["spec"]
        name = spec.get("name")
        key = (spec.get("namespace"), name)
        if name:
            existing = self.actors.get(self.named.get(key, b""))
            if existing is not None and existing.state != DEAD:
                if spec.get("get_if_exists"):
                    return {"existing": existing.public()}
                raise ValueError(f"An actor named {name!r} already exists in namespace {key[0]!r}.")
        actor = ActorInfo(header["actor_id"], spec, [bytes(f) for f in frames], header["job_id"])
        actor.subscribers.add(identity)
        self.actors[actor.actor_id] = actor
        if name:
            self.named[key] = actor.actor_id
        self._place(actor)
        return {"existing": None}

    def _schedule_pending_actors(self):
        for actor in list(self.actors.values()):  # placing one may end another, and forget a third
            if actor.state not in (PENDING, RESTARTING) or actor.worker_id is not None:
                continue  # placed already, or its worker is running the constructor
            if actor.lease_rid is None:
                self._place(actor)
            elif actor.waiting_for_node and actor.node_id in self.node_sockets and self._placeable(actor):
                # It queues on a node that cannot run it, and one that can has joined: move it.
                actor.waiting_for_node = False
                self.node_sockets[actor.node_id].send_multipart(
                    protocol.encode({"op": protocol.CANCEL_LEASE_REQUEST, "rid": actor.lease_rid})
                )

    def _choose_node(self, actor: ActorInfo) -> tuple:
        """The policy's answer for an actor (the head has no "local" node: never LOCAL)."""
        views = {
            n.node_id: NodeView(n.node_id, to_fixed(n.resources), to_fixed(n.unclaimed()), address=n.address)
            for n in self.nodes.values()
            if n.alive
        }
        return self.actor_policy.choose_node(to_fixed(actor.spec["resources"]), actor.spec.get("strategy"), views)

    def _placeable(self, actor: ActorInfo) -> bool:
        return self._choose_node(actor)[0] not in (INFEASIBLE, "error")

    def _place(self, actor: ActorInfo) -> None:
        nodes = [n for n in self.nodes.values() if n.alive]
        if not nodes:
            return
        wanted = actor.spec["resources"]
        where, message = self._choose_node(actor)
        if where == "error":
            self._set_dead(actor, message)
            return
        actor.waiting_for_node = where == INFEASIBLE
        if actor.waiting_for_node:
            # Nowhere can run it yet: queue it on the node with the most of what it needs; the node
            # manager warns its creator, and a node that joins later gets it (see on_register_node).
            node = max(nodes, key=lambda n: sum(min(n.resources.get(k, 0), v) for k, v in wanted.items()))
        else:
            node = self.nodes[where]
            for name, amount in wanted.items():  # until its next heartbeat says better
                node.claimed[name] = node.claimed.get(name, 0) + amount
        rid = new_id(8)
        actor.lease_rid = rid
        actor.node_id = node.node_id
        self.pending_requests[rid] = ("lease", actor.actor_id)
        header = {
            "op": protocol.REQUEST_LEASE,
            "rid": rid,
            "res": wanted,
            "run": actor.spec["running"],
            "what": actor.spec.get("class_name", ""),
            "actor": True,
            "job": actor.job_id,
        }
        # Node managers lease only to registered clients: the head registers as a peer right before
        # each request, on the same socket (which also covers one that reconnected meanwhile).
        register = {"op": protocol.REGISTER_CLIENT, "client_id": HEAD_CLIENT_ID, "pid": os.getpid(), "kind": "peer"}
        self.node_sockets[node.node_id].send_multipart(protocol.encode(register))
        self.node_sockets[node.node_id].send_multipart(protocol.encode(header))

    def on_actor_lease(self, kind, actor_id, header) -> None:
        """A node manager answered the lease request for an actor's worker."""
        actor = self.actors.get(actor_id)
        if header["op"] == protocol.LEASE_INFEASIBLE:
            self.pending_requests[header["rid"]] = (kind, actor_id)
            if actor is not None:  # the creator warns its user, as for a task
                for identity in actor.subscribers:
                    self.send(identity, header)
            return
        if kind != "lease" or actor is None:
            return
        actor.lease_rid = None
        if header.get("cancelled"):
            if actor.state in (PENDING, RESTARTING):
                self._place(actor)  # withdrawn to be placed on a node that joined since
            return
        if header["op"] == protocol.ERROR:
            self._set_dead(actor, header.get("error", "lease failed"))
            return
        if actor.state == DEAD:  # killed while waiting for its worker
            self._kill_worker(actor.node_id, header["wid"])
            return
        actor.worker_id = header["wid"]
        actor.address = header["addr"]
        actor.client_address = header["caddr"]
        actor.pid = header.get("pid")
        self.worker_actor[actor.worker_id] = actor.actor_id
        sock = transport.connect_dealer(actor.address)
        self.worker_sockets[actor.worker_id] = sock
        self.loop.add_socket(sock, lambda f, a=actor.actor_id: self.on_actor_created(a, f))
        spec = dict(actor.spec)
        spec.update(
            op=protocol.CREATE_ACTOR_INSTANCE,
            rid=actor.actor_id,
            actor_id=actor.actor_id,
            job=actor.job_id,
            gpus=header.get("gpus", []),
            assigned=header.get("res", {}),
            restarted=actor.num_restarts > 0,
        )
        sock.send_multipart(protocol.encode(spec, actor.frames), copy=False)

    def on_actor_created(self, actor_id, frames):
        header, payload = protocol.decode(frames)
        actor = self.actors.get(actor_id)
        self._close_worker_socket(actor.worker_id if actor else None)
        if actor is None or actor.state == DEAD:
            return
        if header.get("err"):
            from ember.runtime.serialization import deserialize

            try:
                cause = str(deserialize(payload[0]))
            except Exception as error:  # the exception's class is not importable in the head
                cause = f"the actor's constructor raised ({error})"
            actor.no_restart = True
            self._set_dead(actor, f"The actor's constructor raised an exception:\n{cause}")
            self._kill_worker(actor.node_id, actor.worker_id)
            return
        actor.state = ALIVE
        self._notify(actor)

    def _close_worker_socket(self, worker_id):
        sock = self.worker_sockets.pop(worker_id, None)
        if sock is not None:
            self.loop.remove_socket(sock)
            sock.close(0)

    def on_subscribe_actor(self, identity, header, frames):
        actor = self.actors.get(header["actor_id"])
        if actor is None:
            # Every actor is registered here before a handle to it exists: an id we do not know is
            # one that died and was forgotten (past EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT).
            return {"actor": forgotten_actor(header["actor_id"])}
        if actor.state != DEAD:  # a dead actor sends no more updates
            actor.subscribers.add(identity)
        return {"actor": actor.public()}

    def on_get_named_actor(self, identity, header, frames):
        actor = self.actors.get(self.named.get((header.get("namespace"), header["name"]), b""))
        if actor is None or actor.state == DEAD:
            return {"actor": None}
        return {"actor": actor.public()}

    def on_list_named_actors(self, identity, header, frames):
        names = []
        for (namespace, name), actor_id in self.named.items():
            if self.actors[actor_id].state != DEAD and (
                header.get("all_namespaces") or namespace == header.get("namespace")
            ):
                names.append({"name": name, "namespace": namespace} if header.get("all_namespaces") else name)
        return {"names": names}

    def on_kill_actor(self, identity, header, frames):
        actor = self.actors.get(header["actor_id"])
        if actor is None:
            raise ValueError("no such actor")
        cause = header.get("cause") or "The actor was killed by ember.kill()."
        self._kill(actor, cause, no_restart=header.get("no_restart", True))
        return {}

    def on_actor_handle_released(self, identity, header, frames):
        actor = self.actors.get(header["actor_id"])
        if actor is not None and not actor.spec.get("name") and not actor.spec.get("detached"):
            self._kill(actor, "all references to the actor were removed", no_restart=True)

    def _kill(self, actor: ActorInfo, cause: str, no_restart: bool = True) -> None:
        if actor.state == DEAD:
            return
        actor.no_restart = actor.no_restart or no_restart
        actor.death_cause = cause
        if actor.worker_id is not None and actor.state in (ALIVE, PENDING, RESTARTING):
            self._kill_worker(actor.node_id, actor.worker_id)
            if actor.no_restart:
                self._set_dead(actor, cause)
        elif actor.no_restart:
            if actor.lease_rid is not None and actor.node_id in self.node_sockets:
                # Still waiting for a worker: withdraw the request (if it was granted meanwhile,
                # on_node_reply stops that worker).
                self.node_sockets[actor.node_id].send_multipart(
                    protocol.encode({"op": protocol.CANCEL_LEASE_REQUEST, "rid": actor.lease_rid})
                )
            self._set_dead(actor, cause)

    def _kill_worker(self, node_id, worker_id) -> None:
        sock = self.node_sockets.get(node_id)
        if sock is not None and worker_id is not None:
            sock.send_multipart(protocol.encode({"op": protocol.KILL_WORKER, "wid": worker_id}))

    def on_worker_died(self, identity, header, frames):
        actor = self.actors.get(self.worker_actor.pop(header["wid"], b""))
        if actor is None or actor.worker_id != header["wid"]:
            return
        self._close_worker_socket(actor.worker_id)
        actor.worker_id = actor.address = actor.client_address = None
        if actor.state == DEAD:
            return
        max_restarts = actor.spec.get("max_restarts", 0)
        if not actor.no_restart and (max_restarts == -1 or actor.num_restarts < max_restarts):
            actor.num_restarts += 1
            actor.state = RESTARTING
            self._notify(actor)
            self._place(actor)
        else:
            self._set_dead(
                actor, actor.death_cause or f"The actor's worker process (pid={actor.pid}) died unexpectedly."
            )

    def _set_dead(self, actor: ActorInfo, cause: str) -> None:
        actor.state = DEAD
        actor.death_cause = cause
        self._notify(actor)
        # The constructor's arguments and the rest of its creation spec are only needed to restart
        # it, and it will not restart: a dead actor keeps what lookups and its children's fate read.
        actor.frames = []
        actor.spec = {key: actor.spec[key] for key in KEPT_WHEN_DEAD if key in actor.spec}
        actor.subscribers = set()
        for evicted in self.dead_actors.add(actor.actor_id):
            self._forget_actor(evicted)
        for child in list(self.actors.values()):  # the actors it created share its fate
            if child.spec.get("owner_actor") == actor.actor_id and not child.spec.get("detached"):
                self._kill(child, "The actor that created this actor died.")
        name = actor.spec.get("name")
        if name and self.named.get((actor.spec.get("namespace"), name)) == actor.actor_id:
            del self.named[(actor.spec.get("namespace"), name)]

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
            self.send(identity, update)
        self.publish(
            b"event:actor",
            {
                "actor_id": actor.actor_id,
                "state": actor.state,
                "name": actor.spec.get("name"),
                "class_name": actor.spec.get("class_name"),
            },
        )
