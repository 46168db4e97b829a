"""The node manager: one per machine; owns the worker pool, the local scheduler and the store.

Data flow::

    owners ---request_lease / return_lease---> +--------------+ ---lease_granted---> owners
    head   ---request_lease (actors), kill---> | node manager | ---register_node, node_stats, worker_died, logs--> head
    workers --worker_ready / blocked / logs--> |  scheduler   | ---spawn / SIGKILL---> worker processes
    clients --store_create / sealed / restore->|  store state | ---pwrite'd files in /dev/shm, spill files on disk
                                               +--------------+

Decisions live in two state machines (:class:`~ember.runtime.node.scheduler.LeaseScheduler` for leases,
:class:`~ember.runtime.node.object_store.StoreState` for capacity and spilling); this module feeds them
events from the socket and carries out the actions they return.
"""

import glob
import logging
import os
import shutil
import time

import psutil

from ember.runtime import protocol, transport
from ember.runtime.bounded import REMOVED_PLACEMENT_GROUPS, EndedCache, cap_from_env
from ember.runtime.ids import new_id
from ember.runtime.launcher import remove_store_files
from ember.runtime.node.cluster_scheduler import INFEASIBLE, LOCAL, ClusterPolicy, NodeView, fits, groups_of
from ember.runtime.node.object_store import SHM_DIR, StoreState
from ember.runtime.node.object_transfer import ObjectTransfer
from ember.runtime.node.scheduler import UNIT, LeaseRequest, LeaseScheduler, from_fixed, gpu_amount, to_fixed
from ember.runtime.node.store_io import StoreIO
from ember.runtime.node.worker_process import WorkerProcess, spawn_worker
from ember.runtime.service import Service

logger = logging.getLogger(__name__)

HEARTBEAT_PERIOD = 0.5  # seconds between heartbeats to the head (stats go sooner when they change)


class NodeManager(StoreIO, ObjectTransfer, Service):
    handlers = {
        protocol.REGISTER_CLIENT: "on_register_client",
        protocol.UNREGISTER_CLIENT: "on_unregister_client",
        protocol.REQUEST_LEASE: "on_request_lease",
        protocol.CANCEL_LEASE_REQUEST: "on_cancel_lease_request",
        protocol.RETURN_LEASE: "on_return_lease",
        protocol.WORKER_READY: "on_worker_ready",
        protocol.WORKER_BLOCKED: "on_worker_blocked",
        protocol.WORKER_UNBLOCKED: "on_worker_unblocked",
        protocol.KILL_WORKER: "on_kill_worker",
        protocol.EXIT_REFUSED: "on_exit_refused",
        protocol.STORE_CREATE: "on_store_create",
        protocol.STORE_SEALED: "on_store_sealed",
        protocol.STORE_RESTORE: "on_store_restore",
        protocol.STORE_DELETE: "on_store_delete",
        protocol.STORE_TOUCH: "on_store_touch",
        protocol.WORKER_LOGS: "on_worker_logs",
        protocol.CLUSTER_VIEW: "on_cluster_view",
        protocol.TABLE_SIZES: "on_table_sizes",
        protocol.NODE_DEAD: "on_node_dead",
        protocol.STORE_PULL: "on_store_pull",
        protocol.PULL_OBJECT: "on_pull_object",
        protocol.PREPARE_BUNDLES: "on_prepare_bundles",
        protocol.COMMIT_BUNDLES: "on_commit_bundles",
        protocol.CANCEL_BUNDLES: "on_cancel_bundles",
    }

    def __init__(
        self,
        head_address: str,
        resources: dict,
        object_store_memory: int,
        session_dir: str,
        host: str = "127.0.0.1",
        env: dict | None = None,
        prestart: int | None = None,
    ):
        super().__init__(host, 0)
        self.node_id = new_id(16)
        self.host = host
        self.head_address = head_address
        self.resources = resources
        self.session_dir = session_dir
        self.store_prefix = f"ember-{self.node_id.hex()[:12]}"
        self.spill_dir = os.path.join(session_dir, "spill", self.node_id.hex()[:12])
        self.log_dir = os.path.join(session_dir, "logs")
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        self.env = env or {}
        num_cpus = resources.get("CPU", 0)
        self.scheduler = LeaseScheduler(resources, max_idle_workers=max(1, int(num_cpus)))
        self.store = StoreState(object_store_memory)
        self.store_owner: dict[bytes, bytes] = {}  # object id -> owner client id
        self.reservations: dict[bytes, tuple] = {}  # object id -> (writer identity, size), until sealed
        self.processes: list[WorkerProcess] = []
        self.workers: dict[bytes, WorkerProcess] = {}
        self.requests: dict[bytes, LeaseRequest] = {}
        self.clients: dict[bytes, dict] = {}  # client id -> {pid, identity, kind, job}
        self.client_leases: dict[bytes, set] = {}  # requester identity -> leased worker ids
        self.head = transport.connect_dealer(head_address)
        self.logs: dict[bytes, list] = {}
        self.stats_dirty = True
        self.last_stats = 0.0
        self.last_heartbeat = 0.0
        self.last_client_check = 0.0
        self.loop = None  # set by attach(): sockets to other node managers join its poll
        self.policy = ClusterPolicy(self.node_id)
        self.view: dict[bytes, NodeView] = {
            self.node_id: NodeView(self.node_id, to_fixed(resources), to_fixed(resources), address=self.address)
        }
        self._init_transfer()
        self._init_store_io()
        # Hex ids of removed placement groups, from the cluster view's deltas; as bounded as the head's.
        self.removed_groups = EndedCache(cap_from_env(REMOVED_PLACEMENT_GROUPS))
        self.on_declared_dead = None
        self.head.send_multipart(
            protocol.encode(
                {
                    "op": protocol.REGISTER_NODE,
                    "rid": b"reg",
                    "node_id": self.node_id,
                    "address": self.address,
                    "resources": resources,
                    "host": host,
                }
            )
        )
        for _ in range(int(num_cpus) if prestart is None else prestart):
            self.start_worker()
        self.scheduler.starting = len(self.processes)

    def attach(self, loop) -> None:
        """Join ``loop``: our connection to the head and the store's copy threads report on it."""
        self.loop = loop
        loop.add_service(self)
        loop.add_socket(self.head, self.on_head_message)
        self.attach_store_io(loop)

    # --- worker pool ----------------------------------------------------------------------------
    def start_worker(self) -> None:
        env = dict(self.env)
        env.update(
            EMBER_NODE_MANAGER=self.address,
            EMBER_HEAD=self.head_address,
            EMBER_NODE_ID=self.node_id.hex(),
            EMBER_NODE_HOST=self.host,  # workers listen where owners on other machines can reach them
            EMBER_SESSION_DIR=self.session_dir,
        )
        log_path = os.path.join(self.log_dir, f"worker-{time.time_ns()}.log")
        self.processes.append(spawn_worker(env, log_path))

    def on_worker_ready(self, identity, header, frames):
        process = next((p for p in self.processes if p.pid == header["pid"]), None)
        if process is None:
            return {}
        process.worker_id = header["wid"]
        process.identity = identity
        process.address = header["addr"]
        process.client_address = header["caddr"]
        self.workers[process.worker_id] = process
        self.clients[header["wid"]] = {
            "pid": header["pid"],
            "kind": "worker",
            "identity": identity,
            "address": header["caddr"],
        }
        self.carry_out(self.scheduler.worker_started(process.worker_id))
        return {"prefix": self.store_prefix, "node_id": self.node_id}

    def check_workers(self) -> None:
        for process in list(self.processes):
            if process.poll() is None:
                continue
            self.processes.remove(process)
            if process.worker_id is None:
                self.carry_out(self.scheduler.worker_start_failed())
                continue
            self.workers.pop(process.worker_id, None)
            self.client_died(process.worker_id)
            if not process.retiring:
                self.head.send_multipart(protocol.encode({"op": protocol.WORKER_DIED, "wid": process.worker_id}))
            self.carry_out(self.scheduler.worker_died(process.worker_id))

    def on_exit_refused(self, identity, header, frames):
        process = self.workers.get(header["wid"])
        if process is not None and process.retiring:
            process.retiring = False
            self.carry_out(self.scheduler.worker_kept(process.worker_id))

    def on_kill_worker(self, identity, header, frames):
        process = self.workers.get(header["wid"])
        if process is not None:
            process.kill()

    # --- clients (drivers and workers that own objects or hold leases) -----------------------------
    def on_register_client(self, identity, header, frames):
        self.clients[header["client_id"]] = {
            "pid": header["pid"],
            "kind": header["kind"],
            "identity": identity,
            "job": header.get("job"),
            "address": header.get("addr"),
        }
        return {"prefix": self.store_prefix, "node_id": self.node_id, "resources": self.resources}

    def on_unregister_client(self, identity, header, frames):
        self.client_died(header["client_id"])
        return {}

    def check_clients(self) -> None:
        for client_id, client in list(self.clients.items()):
            if client["kind"] == "driver" and not psutil.pid_exists(client["pid"]):
                self.client_died(client_id)
                if client.get("job"):
                    self.head.send_multipart(protocol.encode({"op": protocol.JOB_FINISHED, "job_id": client["job"]}))

    def client_died(self, client_id: bytes) -> None:
        """Free what a dead owner owned and stop the work it leased (its results have no reader)."""
        client = self.clients.pop(client_id, None)
        owned = [oid for oid, owner in self.store_owner.items() if owner == client_id]
        self.delete_objects(owned)
        if client is None:
            return
        # Objects it was writing when it died: their space is free again, their files removed.
        self.delete_objects([oid for oid, (writer, _) in self.reservations.items() if writer == client["identity"]])
        self.release_client_io(client["identity"])
        if client.get("address"):
            # Whoever borrowed its objects must stop waiting for them.
            for other in self.clients.values():
                self.send(other["identity"], {"op": protocol.OWNER_DIED, "addr": client["address"]})
        for request in [r for r in self.requests.values() if r.client == client["identity"]]:
            self.withdraw(request)
        for worker_id in self.client_leases.pop(client["identity"], set()):
            self.on_kill_worker(None, {"wid": worker_id}, [])

    # --- leases ---------------------------------------------------------------------------------
    def on_request_lease(self, identity, header, frames):
        for amount in [*header["res"].values(), *header["run"].values()]:
            if amount < 0:
                raise ValueError("resource amounts must be non-negative")
        request = LeaseRequest(
            header["rid"],
            identity,
            to_fixed(header["res"]),
            to_fixed(header["run"]),
            for_actor=header.get("actor", False),
            strategy=header.get("strategy"),
            # The head picked the node of an actor already; a spilled request was sent here by a node
            # that judged this one best: both run here, so no request goes round in circles.
            spilled=header.get("spilled", False) or header.get("actor", False),
            what=header.get("what", ""),
        )
        error = self.removed_group_error(request)
        if error is not None:
            raise error
        if not request.spilled:
            where, message = self.policy.choose_node(request.resources, request.strategy, self.current_view())
            if where == "error":
                raise ValueError(message)
            if where not in (LOCAL, INFEASIBLE):
                self.spill_back(request, where)
                return
        self.requests[request.request_id] = request
        self.carry_out(self.scheduler.request(request))

    def removed_group_error(self, request: LeaseRequest) -> ValueError | None:
        """The error for a request that needs the bundles of a removed placement group, if it does."""
        removed = {group for group in groups_of(request.resources) if group in self.removed_groups}
        if not removed:
            return None
        return ValueError(
            f"The placement group {removed.pop()} was removed: the task or actor that needs its bundles "
            "cannot be scheduled."
        )

    def withdraw(self, request: LeaseRequest) -> None:
        """Take a queued request off this node (it was answered some other way)."""
        self.requests.pop(request.request_id, None)
        self.scheduler.cancel(request.request_id)

    def spill_back(self, request: LeaseRequest, node_id: bytes) -> None:
        """Tell the requester to ask ``node_id`` instead (Ray's spillback)."""
        node = self.view[node_id]
        self.policy.charge(node, request.resources)
        self.send(
            request.client,
            {"op": protocol.REPLY, "rid": request.request_id, "spillback": node_id, "address": node.address},
        )

    def current_view(self) -> dict:
        """The cluster as the head last described it, with this node's own entry exact."""
        local = self.view[self.node_id]
        local.total = self.scheduler.total
        local.available = self.scheduler.available
        return self.view

    def on_cluster_view(self, identity, header, frames):
        # The head sends the removals we have not seen, or all it remembers ("removed_full").
        if header.get("removed_full"):
            self.removed_groups = EndedCache(self.removed_groups.capacity)
        for pg_hex in header.get("removed_groups", ()):
            self.removed_groups.add(pg_hex)
        for request in list(self.scheduler.queue):
            error = self.removed_group_error(request)
            if error is not None:
                self.withdraw(request)
                self.reply_error(request.client, request.request_id, error)
        died = []
        for node_id, address, total, available, alive in header["nodes"]:
            if node_id == self.node_id:
                continue
            old = self.view.get(node_id)
            if old is not None and old.alive and not alive:
                died.append((node_id, address))
            self.view[node_id] = NodeView(node_id, to_fixed(total), to_fixed(available), alive, address)
        listed = {entry[0] for entry in header["nodes"]}
        for node_id in [n for n, view in self.view.items() if not view.alive and n not in listed]:
            del self.view[node_id]  # dead, and forgotten by the head (its cap on dead nodes)
        for node_id, address in died:
            # Owners hear of the death (and start rebuilding its objects) before the readers whose
            # pulls from it fail: a reader whose pull failed then waits for the rebuilt object.
            for client in self.clients.values():  # owners retry its tasks and rebuild its objects
                self.send(client["identity"], {"op": protocol.NODE_DEAD, "node_id": node_id, "address": address})
            self.close_peer(address)
            self.client_died(node_id)  # objects owned by processes on that node: no one can free them now
            self.remove_dead_node_files(node_id)
        self.respill()

    def on_table_sizes(self, identity, header, frames):
        """How many entries each of this node manager's tables holds (for soak tests and debugging)."""
        sizes = {
            "processes": len(self.processes),
            "workers": len(self.workers),
            "requests": len(self.requests),
            "clients": len(self.clients),
            "client_leases": len(self.client_leases),
            "store_owner": len(self.store_owner),
            "reservations": len(self.reservations),
            "removed_groups": len(self.removed_groups),
            "view": len(self.view),
            "peers": len(self.peers),
            "pulls": len(self.pulls),
            "scheduler_queue": len(self.scheduler.queue),
            "scheduler_workers": len(self.scheduler.workers),
            "bundles": len(self.scheduler.bundles),
        }
        return {"sizes": sizes}

    def respill(self) -> None:
        """Requests queued here that another node could run now go there (a node joined or freed up)."""
        view = self.current_view()
        if sum(node.alive for node in view.values()) < 2:
            return  # nowhere else to go
        for request in list(self.scheduler.queue):
            if request.for_actor or (request.spilled and self.scheduler.feasible(request.resources)):
                continue
            where, _ = self.policy.choose_node(request.resources, request.strategy, view)
            if where in (LOCAL, INFEASIBLE, "error") or not fits(request.resources, view[where].available):
                continue
            self.withdraw(request)
            self.spill_back(request, where)

    def on_node_dead(self, identity, header, frames):
        if header["node_id"] == self.node_id:
            logger.error("the head declared this node dead (it missed heartbeats): stopping")
            if self.on_declared_dead is not None:
                self.on_declared_dead()

    def remove_dead_node_files(self, node_id: bytes) -> None:
        """A node died without cleaning up: if it ran on this machine, its store files and spill
        directory are ours to remove (a reader that mapped one keeps its mapping). Off the loop."""
        prefix = f"ember-{node_id.hex()[:12]}"
        spill_dir = os.path.join(self.session_dir, "spill", node_id.hex()[:12])
        self.io_pool.submit(remove_store_files, prefix)
        self.io_pool.submit(shutil.rmtree, spill_dir, True)

    def on_cancel_lease_request(self, identity, header, frames):
        # A request already granted is not cancelled: its grant is on the way and the owner
        # returns that lease. One still queued is dropped, and the owner told so.
        if self.requests.pop(header["rid"], None) is not None:
            self.carry_out(self.scheduler.cancel(header["rid"]))
            self.send(identity, {"op": protocol.REPLY, "rid": header["rid"], "cancelled": True})

    def on_return_lease(self, identity, header, frames):
        self.client_leases.get(identity, set()).discard(header["wid"])
        if header.get("kill"):
            self.on_kill_worker(identity, header, frames)
            return
        self.carry_out(self.scheduler.lease_returned(header["wid"]))

    def on_worker_blocked(self, identity, header, frames):
        self.carry_out(self.scheduler.blocked(header["wid"]))

    def on_worker_unblocked(self, identity, header, frames):
        self.carry_out(self.scheduler.unblocked(header["wid"]))

    def carry_out(self, actions: list) -> None:
        for action in actions:
            kind = action[0]
            if kind == "grant":
                _, request, worker = action
                self.requests.pop(request.request_id, None)
                process = self.workers[worker.worker_id]
                if not request.for_actor:
                    self.client_leases.setdefault(request.client, set()).add(worker.worker_id)
                self.send(
                    request.client,
                    {
                        "op": protocol.LEASE_GRANTED,
                        "rid": request.request_id,
                        "wid": worker.worker_id,
                        "addr": process.address,
                        "caddr": process.client_address,
                        "pid": process.pid,
                        "gpus": worker.gpu_ids,
                        "res": from_fixed(worker.held),
                        "node_id": self.node_id,
                    },
                )
            elif kind == "start_worker":
                self.start_worker()
            elif kind == "stop_worker":
                # Ask, don't tell: a worker idle as a worker may still own objects or hold leases
                # as an owner (of tasks it submitted); it exits only if it has none (see worker).
                process = self.workers.get(action[1])
                if process is not None:
                    process.retiring = True
                    self.send(process.identity, {"op": protocol.EXIT_IF_IDLE})
            elif kind == "infeasible":
                request = action[1]
                self.send(
                    request.client,
                    {
                        "op": protocol.LEASE_INFEASIBLE,
                        "rid": request.request_id,
                        "res": from_fixed(request.resources),
                        "total": self.resources,
                    },
                )
            elif kind == "lease_lost":
                _, request, worker_id = action
                self.client_leases.get(request.client, set()).discard(worker_id)
                if not request.for_actor:
                    self.send(request.client, {"op": protocol.LEASED_WORKER_DIED, "wid": worker_id})
        self.stats_dirty = True

    # --- placement-group bundles ----------------------------------------------------------------
    # The head reserves a group's bundles in two phases (prepare on every chosen node, then commit);
    # the scheduler keeps the books, we only answer and stop what a cancelled bundle ran.
    def on_prepare_bundles(self, identity, header, frames):
        ok = self.scheduler.prepare_bundles(header["pg_id"], header["bundles"])
        self.stats_dirty = True
        return {"ok": ok}

    def on_commit_bundles(self, identity, header, frames):
        self.carry_out(self.scheduler.commit_bundles(header["pg_id"], header["indexes"]))
        return {}

    def on_cancel_bundles(self, identity, header, frames):
        actions = self.scheduler.cancel_bundles(header["pg_id"], header["indexes"])
        for action in actions:
            if action[0] == "stop_leased_worker":
                self.on_kill_worker(identity, {"wid": action[1]}, [])
        self.carry_out([action for action in actions if action[0] != "stop_leased_worker"])
        return {}

    # --- logs and stats -------------------------------------------------------------------------
    def on_worker_logs(self, identity, header, frames):
        for job_id, lines in header["batches"].items():
            self.logs.setdefault(job_id, []).extend(lines)

    def tick(self, now: float) -> None:
        self.check_workers()
        self.check_transfers(now)
        if now - self.last_client_check > 0.5:
            self.last_client_check = now
            self.check_clients()
        if self.logs:
            self.head.send_multipart(protocol.encode({"op": protocol.LOGS, "batches": self.logs}))
            self.logs = {}
        if self.stats_dirty and now - self.last_stats > 0.1:
            self.stats_dirty = False
            self.last_stats = self.last_heartbeat = now
            self.head.send_multipart(
                protocol.encode(
                    {
                        "op": protocol.NODE_STATS,
                        "node_id": self.node_id,
                        "available": from_fixed(self.scheduler.available),
                        "total": from_fixed(self.scheduler.total),
                        "store": self.store.stats(),
                        "demand": self.scheduler.demand(),
                        "gpus": self.gpu_table(),
                    }
                )
            )
        elif now - self.last_heartbeat > HEARTBEAT_PERIOD:
            self.last_heartbeat = now
            self.head.send_multipart(protocol.encode({"op": protocol.NODE_STATS, "node_id": self.node_id}))

    def gpu_table(self) -> list:
        """Who holds which GPU: one row per (device, worker), for ``ember status`` and the widgets."""
        rows = []
        for worker in self.scheduler.workers.values():
            amount = gpu_amount(worker.held)
            for gpu_id in worker.gpu_ids:
                process = self.workers.get(worker.worker_id)
                what = worker.lease.what if worker.lease else ""
                rows.append(
                    {
                        "gpu_id": gpu_id,
                        "holder": f"{what} (pid {process.pid if process else '?'})",
                        "share": min(amount, UNIT) / UNIT,
                        "actor": bool(worker.dedicated),
                    }
                )
        return rows

    def on_head_message(self, frames) -> None:
        """Replies and pushes the head sends on our connection to it (NODE_DEAD, mostly)."""
        header, payload = protocol.decode(frames)
        if header.get("op") == protocol.NODE_DEAD:
            self.on_node_dead(None, header, payload)

    def close(self, announce: bool = False) -> None:
        if announce:  # tell the head we are going, so it need not wait for missed heartbeats
            self.head.send_multipart(
                protocol.encode({"op": protocol.UNREGISTER_NODE, "rid": b"bye", "node_id": self.node_id})
            )
            self.head.poll(1000)
        for process in self.processes:
            process.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(0.01)
        for path in glob.glob(f"{SHM_DIR}/{self.store_prefix}-*"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.close_store_io()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        for sock in self.peers.values():
            sock.close(0)
        self.head.close(0)
        super().close()
