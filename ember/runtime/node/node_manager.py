"""The node manager: one per machine; owns the worker pool, the local scheduler and the store.

Data flow::

    owners ---request_lease / return_lease---> +--------------+ ---lease_granted / spillback---> owners
    head   ---request_lease (actors), kill---> | node manager | ---register_node, node_stats, worker_died, logs--> head
    head   ---cluster_view------------------>  |  scheduler   | ---start / retire / kill---> WorkerPool ---> workers
    workers --worker_ready / blocked / logs--> |  store state | ---pwrite'd files in /dev/shm, spill files on disk
    clients --store_create / sealed / restore->+--------------+

Decisions live in state machines (:class:`~ember.runtime.node.scheduler.LeaseScheduler` for leases,
:class:`~ember.runtime.node.cluster_view.ClusterView` for which node a request goes to,
:class:`~ember.runtime.node.object_store.StoreState` for capacity and spilling,
:class:`~ember.runtime.node.clients.ClientTable` for who may hold them); this module feeds them
events from the socket and carries out the actions they return. The worker processes, the store's
requests and the transfers between nodes are objects it owns
(:class:`~ember.runtime.node.worker_pool.WorkerPool`, :class:`~ember.runtime.node.store_io.StoreIO`,
:class:`~ember.runtime.node.object_transfer.ObjectTransfer`); its op table points at the latter two's methods.

Every request is validated against the ``node_manager`` schema before a handler sees it (handlers
get the op's Struct). Leases and store reservations are only for registered clients, and are
reclaimed when the client unregisters, its process dies or its connection closes (see
:mod:`~ember.runtime.node.clients`).
"""

import logging
import os
import shutil
import struct

import psutil
import zmq

from ember.exceptions import RuntimeEnvSetupError
from ember.runtime import protocol
from ember.runtime.ids import new_id
from ember.runtime.launcher import remove_store_files
from ember.runtime.node.clients import Client, ClientTable, UnknownClientError
from ember.runtime.node.cluster_scheduler import INFEASIBLE, LOCAL
from ember.runtime.node.cluster_view import ClusterView
from ember.runtime.node.cpu_idle import IdleMeter
from ember.runtime.node.env_setups import EnvSetups
from ember.runtime.node.head_link import HeadLink
from ember.runtime.node.log_files import LogFiles
from ember.runtime.node.object_store import StoreState, store_prefix
from ember.runtime.node.object_transfer import ObjectTransfer
from ember.runtime.node.scheduler import LeaseRequest, LeaseScheduler, from_fixed, to_fixed
from ember.runtime.node.store_io import StoreIO
from ember.runtime.node.worker_pool import WorkerPool, topup_delay_setting
from ember.runtime.service import Service, unwrap

RAM_CHECK_PERIOD = 2.0  # seconds between looks at the machine's memory in use
RAM_CHANGE = 32 << 20  # bytes of change that the head and the widgets hear about

logger = logging.getLogger(__name__)


class NodeManager(Service):
    """One machine's node manager (Ray's raylet): its workers, leases, store and transfers."""

    schema = "node_manager"
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
        protocol.WORKER_LOGS: "on_worker_logs",
        protocol.CLUSTER_VIEW: "on_cluster_view",
        protocol.TABLE_SIZES: "on_table_sizes",
        protocol.NODE_DEAD: "on_node_dead",
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
        self.store_prefix = store_prefix(self.node_id)
        self.spill_dir = _spill_dir(session_dir, self.node_id)
        self.log_dir = os.path.join(session_dir, "logs")
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        node_env = dict(
            EMBER_NODE_MANAGER=self.address,
            EMBER_HEAD=head_address,
            EMBER_NODE_ID=self.node_id.hex(),
            EMBER_NODE_HOST=host,  # workers listen where owners on other machines can reach them
            EMBER_SESSION_DIR=session_dir,
        )
        self.log_files = LogFiles(self.log_dir, self)  # this node's logs, for list_logs/get_log and the dashboard
        envs = EnvSetups(head_address, self.log_dir)
        self.pool = WorkerPool(env or {}, node_env, envs, self.log_dir, on_spawn=self.log_files.add_worker)
        num_cpus = resources.get("CPU", 0)
        prestart = int(num_cpus) if prestart is None else prestart
        max_idle = max(1, int(num_cpus))
        # The pool is kept as full as it started (within the idle cap), so an actor, which takes a
        # worker for good, finds the next one already started.
        self.scheduler = LeaseScheduler(
            resources,
            max_idle_workers=max_idle,
            min_idle_workers=min(prestart, max_idle),
            topup_delay=topup_delay_setting(),
        )
        self.idle_meter = IdleMeter()  # how busy the CPUs were while a pool top-up waited
        self.store = StoreState(object_store_memory)
        self.requests: dict[bytes, LeaseRequest] = {}
        self.clients = ClientTable()
        self.client_leases: dict[bytes, set] = {}  # requester identity -> leased worker ids
        self.last_client_check = 0.0
        self.ram = _ram_in_use()  # [used, total] bytes of the machine's memory, for the widgets
        self.last_ram_check = 0.0
        self.loop = None
        self.cluster = ClusterView(self.node_id, self.address, resources, self.scheduler)
        self.store_io = StoreIO(
            self.store, self.store_prefix, self.spill_dir, self.reply, self.mark_dirty, self.owner_key
        )
        self.transfer = ObjectTransfer(self.store_io, self.cluster.nodes, self.send, self.reply, self.mark_dirty)
        registered_only = self.registered_only
        self.table.update(
            {
                protocol.REQUEST_LEASE: registered_only(self.on_request_lease),
                protocol.STORE_CREATE: registered_only(self.store_io.on_store_create),
                protocol.STORE_SEALED: self.store_io.on_store_sealed,
                protocol.STORE_RESTORE: registered_only(self.store_io.on_store_restore),
                protocol.STORE_DELETE: self.store_io.on_store_delete,
                protocol.STORE_TOUCH: registered_only(self.store_io.on_store_touch),
                protocol.STORE_PULL: registered_only(self.transfer.on_store_pull),
                protocol.PULL_OBJECT: self.transfer.on_pull_object,
                protocol.LOG_FILES: self.log_files.on_log_files,
                protocol.LOG_READ: self.log_files.on_log_read,
            }
        )
        # Connections that close: their clients' leases and reservations are reclaimed (see clients.py).
        self.router_monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.source_fd = -1  # the descriptor of the connection the message being handled came on
        self.on_declared_dead = None
        self.head = HeadLink(head_address, self.node_id, self.address, resources, host)
        self.head.on_node_dead = lambda msg: self.on_node_dead(None, msg, [])
        for _ in range(prestart):
            self.pool.start()
        self.scheduler.starting = len(self.pool.processes)

    def attach(self, loop) -> None:
        """Join ``loop``: our socket (raw frames: a registration needs its connection's descriptor),
        its monitor, our connection to the head and the store's copy threads report on it."""
        self.loop = loop
        loop.services.append(self)
        loop.add_socket(self.router, self.on_router_frames, raw=True)
        loop.add_socket(self.router_monitor, self.on_router_events)
        self.head.attach(loop)
        self.pool.attach(loop)
        self.store_io.attach(loop)
        self.transfer.attach(loop)

    def on_router_frames(self, frames) -> None:
        self.source_fd = frames[1].get(zmq.SRCFD) if len(frames) > 1 else -1
        self.handle_frames(unwrap(frames))

    def mark_dirty(self) -> None:
        self.head.dirty = True

    # --- worker pool ----------------------------------------------------------------------------
    def on_worker_ready(self, identity, msg, frames):
        """A worker we started is up: it is a client of this node, and its worker may be leased."""
        process = self.pool.starting(msg.pid)
        self.register(Client(msg.wid, identity, "worker", msg.pid, address=msg.caddr))
        self.pool.ready(process, msg.wid, identity, msg.addr, msg.caddr)
        self.carry_out(self.scheduler.worker_started(process.worker_id, process.env))
        return {"prefix": self.store_prefix, "node_id": self.node_id, "preload": self.pool.recent_classes}

    def check_workers(self) -> None:
        for process in self.pool.reap():
            if process.worker_id is None:
                self.carry_out(self.scheduler.worker_start_failed(process.env))
                continue
            self.client_died(process.worker_id)
            if not process.retiring:
                self.head.send({"op": protocol.WORKER_DIED, "wid": process.worker_id})
            self.carry_out(self.scheduler.worker_died(process.worker_id))

    def check_env_setups(self) -> None:
        for key, error, starts in self.pool.poll_setups():
            self.carry_out(self.scheduler.env_failed(key, error, starts))

    def on_exit_refused(self, identity, msg, frames):
        process = self.pool.keep(identity, msg.wid)
        if process is not None:
            self.carry_out(self.scheduler.worker_kept(process.worker_id, process.env))

    def on_kill_worker(self, identity, msg, frames):
        self.kill_worker(msg.wid)

    def kill_worker(self, worker_id: bytes) -> None:
        if self.pool.kill(worker_id):
            # Its resources are free from now on (see LeaseScheduler.worker_killed).
            self.carry_out(self.scheduler.worker_killed(worker_id))

    # --- clients (drivers and workers that own objects or hold leases; peers that lease here) ------
    def registered_only(self, handler):
        """``handler`` for registered clients only: anything else is refused with an error reply."""

        def guarded(identity, msg, frames):
            if self.clients.of(identity) is None:
                op = type(msg).__struct_config__.tag
                raise UnknownClientError(f"{op} from a connection that is not a registered client")
            return handler(identity, msg, frames)

        return guarded

    def register(self, client: Client) -> None:
        self.poll_disconnects()  # reports of closed connections come before this one is bound
        client.fd = self.source_fd
        replaced = self.clients.register(client)
        if replaced is not None:
            self.release_identity(replaced)

    def on_register_client(self, identity, msg, frames):
        self.register(Client(msg.client_id, identity, msg.kind, msg.pid, job=msg.job, address=msg.addr))
        return {"prefix": self.store_prefix, "node_id": self.node_id, "resources": self.resources}

    def on_unregister_client(self, identity, msg, frames):
        client = self.clients.get(msg.client_id)
        if client is not None and client.identity != identity:
            raise UnknownClientError("a client unregisters itself only")
        self.client_died(msg.client_id)
        return {}

    def on_router_events(self, frames) -> None:
        self.connection_closed(_monitor_value(frames))

    def poll_disconnects(self) -> None:
        while True:
            try:
                frames = self.router_monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.connection_closed(_monitor_value(frames))

    def connection_closed(self, fd: int) -> None:
        for client_id in self.clients.closed(fd):
            self.client_died(client_id)

    def check_clients(self) -> None:
        for client in self.clients.values():
            if client.kind == "driver" and not psutil.pid_exists(client.pid):
                self.client_died(client.client_id)

    def owner_key(self, owner: bytes | None, owner_node: bytes | None) -> tuple:
        """(alive, who frees it) for an object just sealed: a local owner's client id, or the node of
        a remote one (its objects are freed with its node, see on_cluster_view)."""
        if owner_node is None or owner_node == self.node_id:
            return owner is None or owner in self.clients, owner
        return self.cluster.node_alive(owner_node), owner_node

    def client_died(self, client_id: bytes) -> None:
        """Free what a dead owner owned and stop the work it leased (its results have no reader)."""
        client = self.clients.remove(client_id)
        self.store_io.release_client(None, client_id)
        if client is None:
            return
        if client.kind == "driver" and client.job:
            # However the driver went (it unregistered, its connection closed, its pid is gone), its job
            # ended: the head ends the job's actors. A driver killed by a signal sends no JOB_FINISHED itself.
            self.head.send({"op": protocol.JOB_FINISHED, "job_id": client.job})
        if client.address and client.kind != "peer":
            # Whoever borrowed its objects must stop waiting for them.
            for other in self.clients.values():
                if other.kind != "peer":
                    self.send(other.identity, {"op": protocol.OWNER_DIED, "addr": client.address})
        self.release_identity(client.identity)

    def release_identity(self, identity: bytes) -> None:
        """What a connection held goes: its reservations, pins, queued requests and leased workers."""
        self.store_io.release_client(identity, None)
        for request in [r for r in self.requests.values() if r.client == identity]:
            self.withdraw(request)
        for worker_id in self.client_leases.pop(identity, set()):
            self.kill_worker(worker_id)
        self.head.dirty = True

    # --- leases ---------------------------------------------------------------------------------
    def on_request_lease(self, identity, msg, frames):
        request = LeaseRequest(
            msg.rid,
            identity,
            to_fixed(msg.res),
            to_fixed(msg.run),
            for_actor=msg.actor,
            strategy=msg.strategy,
            # The head picked the node of an actor already; a spilled request was sent here by a node
            # that judged this one best: both run here, so no request goes round in circles.
            spilled=msg.spilled or msg.actor,
            what=msg.what,
            preload=(msg.cid, msg.job) if msg.actor and msg.cid is not None else None,
            env=self.pool.envs.learn(msg.renv),
        )
        failed = self.pool.envs.error_of(request.env)
        if failed is not None:  # set up here before and failed: fail at once, no second pip run
            raise RuntimeEnvSetupError(failed)
        if request.request_id in self.requests:
            raise ValueError("a lease request with this id is queued already")
        error = self.cluster.removed_group_error(request)
        if error is not None:
            raise error
        if not request.spilled:
            where, message = self.cluster.choose(request)
            if where == "error":
                raise ValueError(message)
            if where not in (LOCAL, INFEASIBLE):
                self.spill_back(request, where)
                return
        self.requests[request.request_id] = request
        self.carry_out(self.scheduler.request(request))

    def withdraw(self, request: LeaseRequest) -> None:
        """Take a queued request off this node (it was answered some other way)."""
        self.requests.pop(request.request_id, None)
        self.scheduler.cancel(request.request_id)

    def spill_back(self, request: LeaseRequest, node_id: bytes) -> None:
        """Tell the requester to ask ``node_id`` instead (Ray's spillback)."""
        self.send_spillback(request, node_id, self.cluster.charge(request, node_id))

    def send_spillback(self, request: LeaseRequest, node_id: bytes, address: str) -> None:
        self.send(
            request.client,
            {"op": protocol.REPLY, "rid": request.request_id, "spillback": node_id, "address": address},
        )

    def on_cluster_view(self, identity, msg, frames):
        died = self.cluster.update(msg)
        for request in list(self.scheduler.queue):
            error = self.cluster.removed_group_error(request)
            if error is not None:
                self.withdraw(request)
                self.reply_error(request.client, request.request_id, error)
        for node_id, address in died:
            # Owners hear of the death (and start rebuilding its objects) before the readers whose
            # pulls from it fail: a reader whose pull failed then waits for the rebuilt object.
            for client in self.clients.values():  # owners retry its tasks and rebuild its objects
                if client.kind != "peer":
                    self.send(client.identity, {"op": protocol.NODE_DEAD, "node_id": node_id, "address": address})
            self.transfer.close_peer(address)
            self.client_died(node_id)  # objects owned by processes on that node: no one can free them now
            self.remove_dead_node_files(node_id)
        self.respill()

    def on_table_sizes(self, identity, msg, frames):
        """How many entries each of this node manager's tables holds (for soak tests and debugging)."""
        sizes = {
            "processes": len(self.pool.processes),
            "workers": len(self.pool.workers),
            "requests": len(self.requests),
            "clients": len(self.clients),
            # Drivers and peers: workers come and go with the pool, and register before they are ready.
            "non_worker_clients": sum(1 for client in self.clients.values() if client.kind != "worker"),
            "client_leases": len(self.client_leases),
            "store_owner": len(self.store_io.store_owner),
            "reservations": len(self.store_io.reservations),
            "handed_out": len(self.store_io.handed_out),  # recycled files given to writers not yet sealed
            "pins": sum(len(pins) for pins in self.store_io.client_pins.values()),
            "room_waiters": len(self.store_io.room_waiters),
            "removed_groups": len(self.cluster.removed_groups),
            "view": len(self.cluster.nodes),
            "peers": len(self.transfer.peers),
            "pulls": len(self.transfer.pulls),
            "sealing": len(self.transfer.sealing),
            "scheduler_queue": len(self.scheduler.queue),
            "scheduler_workers": len(self.scheduler.workers),
            "bundles": len(self.scheduler.bundles),
        }
        return {"sizes": sizes}

    def respill(self) -> None:
        """Requests queued here that another node could run now go there (a node joined or freed up)."""
        for request, where, address in self.cluster.to_respill():
            self.withdraw(request)
            self.send_spillback(request, where, address)

    def on_node_dead(self, identity, msg, frames):
        if msg.node_id == self.node_id:
            logger.error("the head declared this node dead (it missed heartbeats): stopping")
            if self.on_declared_dead is not None:
                self.on_declared_dead()

    def remove_dead_node_files(self, node_id: bytes) -> None:
        """A node died without cleaning up: if it ran on this machine, its store files and spill
        directory are ours to remove (a reader that mapped one keeps its mapping). Off the loop."""
        self.store_io.io_pool.submit(remove_store_files, store_prefix(node_id))
        self.store_io.io_pool.submit(shutil.rmtree, _spill_dir(self.session_dir, node_id), True)

    def on_cancel_lease_request(self, identity, msg, frames):
        # A request already granted is not cancelled: its grant is on the way and the owner
        # returns that lease. One still queued is dropped, and the owner told so. Only its own.
        request = self.requests.get(msg.rid)
        if request is not None and request.client == identity:
            del self.requests[msg.rid]
            self.carry_out(self.scheduler.cancel(msg.rid))
            self.send(identity, {"op": protocol.REPLY, "rid": msg.rid, "cancelled": True})

    def on_return_lease(self, identity, msg, frames):
        leased = self.client_leases.get(identity, set())
        if msg.wid not in leased:
            return  # not leased to this connection (returned already, or reclaimed when it went)
        leased.discard(msg.wid)
        if not leased:
            del self.client_leases[identity]
        if msg.kill:
            self.kill_worker(msg.wid)
            return
        self.carry_out(self.scheduler.lease_returned(msg.wid))

    def on_worker_blocked(self, identity, msg, frames):
        if self.pool.own(identity, msg.wid) is not None:  # only a worker lends out its own CPUs
            self.carry_out(self.scheduler.blocked(msg.wid))

    def on_worker_unblocked(self, identity, msg, frames):
        if self.pool.own(identity, msg.wid) is not None:
            self.carry_out(self.scheduler.unblocked(msg.wid))

    def carry_out(self, actions: list) -> None:
        # Called after every scheduler event (a grant, a returned lease, a blocked worker): each can
        # change what is available, which the head's view and the widgets' CPU bars would otherwise
        # show late, when something else changed. Heartbeats carry it at most every STATS_PERIOD.
        self.head.dirty = True
        for action in actions:
            kind = action[0]
            if kind == "grant":
                _, request, worker = action
                self.requests.pop(request.request_id, None)
                if request.preload is not None:
                    # Before the grant's start_worker action runs: the replacement started for it loads this class.
                    self.pool.remember_class(request.preload)
                process = self.pool.workers[worker.worker_id]
                # An actor's worker too: the head that leased it holds it (and kills it when done with it).
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
                self.pool.start(action[1] if len(action) > 1 else "")
            elif kind == "lease_failed":
                _, request, error = action
                self.requests.pop(request.request_id, None)
                self.send(
                    request.client,
                    {"op": protocol.ERROR, "rid": request.request_id, "error": error, "etype": "RuntimeEnvSetupError"},
                )
            elif kind == "topup_after":
                if self.loop is None:
                    self.carry_out(self.scheduler.topup_due())
                else:
                    self.loop.call_later(action[1], self._topup_due, self.idle_meter.read())
            elif kind == "stop_worker":
                # Ask, don't tell: a worker idle as a worker may still own objects or hold leases
                # as an owner (of tasks it submitted); it exits only if it has none (see worker).
                identity = self.pool.retire(action[1])
                if identity is not None:
                    self.send(identity, {"op": protocol.EXIT_IF_IDLE})
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
                leased = self.client_leases.get(request.client)
                if leased is not None:
                    leased.discard(worker_id)
                    if not leased:
                        del self.client_leases[request.client]  # so the table shrinks as leases end
                if not request.for_actor:
                    self.send(request.client, {"op": protocol.LEASED_WORKER_DIED, "wid": worker_id})
        self.head.dirty = True

    # --- placement-group bundles ----------------------------------------------------------------
    # The head reserves a group's bundles in two phases (prepare on every chosen node, then commit);
    # the scheduler keeps the books, we only answer and stop what a cancelled bundle ran.
    def on_prepare_bundles(self, identity, msg, frames):
        ok = self.scheduler.prepare_bundles(msg.pg_id, [(bundle.index, bundle.resources) for bundle in msg.bundles])
        self.head.dirty = True
        return {"ok": ok}

    def on_commit_bundles(self, identity, msg, frames):
        self.carry_out(self.scheduler.commit_bundles(msg.pg_id, msg.indexes))
        return {}

    def on_cancel_bundles(self, identity, msg, frames):
        actions = self.scheduler.cancel_bundles(msg.pg_id, msg.indexes)
        for action in actions:
            if action[0] == "stop_leased_worker":
                self.kill_worker(action[1])
        self.carry_out([action for action in actions if action[0] != "stop_leased_worker"])
        return {}

    # --- logs and stats -------------------------------------------------------------------------
    def on_worker_logs(self, identity, msg, frames):
        self.head.add_logs(msg.batches)

    def tick(self, now: float) -> None:
        self.check_workers()
        self.check_env_setups()
        self.transfer.check(now)
        self.store_io.tick(now)
        if now - self.last_client_check > 0.5:
            self.last_client_check = now
            self.check_clients()
        if now - self.last_ram_check > RAM_CHECK_PERIOD:
            self.last_ram_check = now
            ram = _ram_in_use()
            if abs(ram[0] - self.ram[0]) >= RAM_CHANGE:  # not every heartbeat: only a real change
                self.ram = ram
                self.mark_dirty()
        self.head.tick(now, self.stats)

    def stats(self) -> dict:
        """This node's state, as its heartbeats carry it when it changed."""
        return {
            "available": from_fixed(self.scheduler.available),
            "total": from_fixed(self.scheduler.total),
            "store": self.store.stats(),
            "demand": self.scheduler.demand(),
            "gpus": self.scheduler.gpu_table(self.pool.pid_of),
            "ram": self.ram,
            "workers": self.scheduler.worker_states(),
        }

    def _topup_due(self, since) -> None:
        self.carry_out(self.scheduler.topup_due(self.idle_meter.idle_cpus(since)))

    def close(self, announce: bool = False) -> None:
        self.head.close(announce)  # announced: the head need not wait for missed heartbeats
        self.pool.close()
        self.idle_meter.close()
        remove_store_files(self.store_prefix)
        self.store_io.close()
        self.log_files.close()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        self.transfer.close()
        self.router.disable_monitor()
        self.router_monitor.close(0)
        super().close()


def _spill_dir(session_dir: str, node_id: bytes) -> str:
    return os.path.join(session_dir, "spill", node_id.hex()[:12])


def _ram_in_use() -> list:
    memory = psutil.virtual_memory()
    return [memory.total - memory.available, memory.total]


def _monitor_value(frames) -> int:
    """The value of a socket monitor event (the closed connection's descriptor), read as libzmq
    packs it: event number (u16), value (i32). zmq.utils.monitor would import asyncio (20 ms of
    every cluster's start) for these six bytes."""
    first = frames[0]
    return struct.unpack("=hi", bytes(first.buffer if hasattr(first, "buffer") else first)[:6])[1]
