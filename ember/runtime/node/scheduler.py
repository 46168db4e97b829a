"""The node manager's local scheduler: worker leases as a plain state machine.

Events in (a lease is requested or returned, a worker starts, blocks, unblocks or dies) and actions
out (grant this lease to that worker, start a worker, warn that a request is infeasible). Nothing
here touches a socket or a process, so the policy is tested directly.

Resources are logical, as in Ray: a request is a map from resource name to amount; ``CPU`` and
``GPU`` are ordinary names. Amounts are kept in fixed point (1/10000) so fractions add up exactly.
GPUs are also tracked per device so a task gets concrete GPU ids, packing one device before the next.
"""

from collections import deque
from dataclasses import dataclass, field

UNIT = 10_000
# A deferred pool top-up starts once most of a CPU sat idle over its last wait...
TOPUP_IDLE_CPUS = 0.75
# ...or once it has waited this long (seconds), each wait at most TOPUP_MAX_STEP.
TOPUP_MAX_WAIT = 5.0
TOPUP_MAX_STEP = 1.0


def to_fixed(resources: dict) -> dict:
    return {name: round(amount * UNIT) for name, amount in resources.items() if amount}


def from_fixed(resources: dict) -> dict:
    return {name: amount / UNIT for name, amount in resources.items()}


def gpu_amount(resources: dict) -> int:
    """The GPUs a request holds: ``GPU``, or inside a placement group the bundle's ``GPU_group_*``."""
    amount = resources.get("GPU", 0)
    if not amount:
        amount = max((v for k, v in resources.items() if k.startswith("GPU_group_")), default=0)
    return amount


@dataclass
class LeaseRequest:
    request_id: bytes
    client: bytes
    resources: dict  # fixed point, what must be free to place it
    running: dict  # fixed point, what it holds once granted (actors hold less than they need to place)
    for_actor: bool = False
    warned: bool = False
    strategy: object = None  # the cluster-level policy (see cluster_scheduler); None is the default
    spilled: bool = False  # sent here by another node: run it here, do not pass it on again
    what: str = ""  # the task's or actor's name, for the GPU table
    preload: tuple | None = None  # an actor's (class id, job id): what the worker that replaces its one loads
    env: str = ""  # the runtime env's key: only a worker started in that env takes it ("" = plain workers)


@dataclass
class Worker:
    worker_id: bytes
    idle: bool = True
    lease: LeaseRequest | None = None
    held: dict = field(default_factory=dict)
    gpu_ids: list = field(default_factory=list)
    blocked: bool = False
    dedicated: bool = False  # runs an actor for the rest of its life
    dying: bool = False  # SIGKILLed, not reaped yet: never leased again, holds nothing
    env: str = ""  # the runtime env it was started in (fixed for its life)


@dataclass
class Bundle:
    """A placement group's bundle reserved on this node (fixed point)."""

    resources: dict
    committed: bool = False


class LeaseScheduler:
    """Grants worker leases on one node within its resources.

    The pool: at most ``max_idle_workers`` idle workers are kept (a returned lease past that retires
    its worker). At least ``min_idle_workers`` workers are kept that are not an actor's (idle, leased
    to tasks, or starting): an actor takes a worker for good, so its grant starts a replacement in the
    background, and the next actor is a lease on a worker already started, as Ray's prestarted pool.

    Workers are pooled per runtime env (``env``, a key; "" is the plain pool): a lease is granted only a
    worker started in its env, since a worker's environment is fixed when it starts. A request with no
    idle worker of its env starts one (``("start_worker", env)``); when that brings idle and starting
    workers past ``max_idle_workers``, idle workers of envs no queued request wants are retired, so
    the pool keeps its size as it changes envs.

    With ``topup_delay`` (seconds) that replacement is not started at the grant but that long after
    (the ``("topup_after", delay)`` action asks the caller to call ``topup_due`` then): a worker's
    fork and start (its class preload included) cost about 35 ms of CPU, which competed with the new
    actor's own start for the cores (a Tune trial's turnover). It then waits on while the machine's
    CPUs are busy (``topup_due`` is told how many sat idle): with the preload of a class whose module
    imports pyarrow, a worker's start costs it about 0.13 CPU-s, taken from the work running now for
    an actor that may never come (a Data actor pool's two replacements slowed its row by a tenth). A
    lease that finds no idle worker does not wait: it starts the deferred top-ups at once, as it
    would start a worker.
    """

    def __init__(self, total: dict, max_idle_workers: int, min_idle_workers: int = 0, topup_delay: float = 0.0):
        if min_idle_workers < 0 or min_idle_workers > max_idle_workers:
            raise ValueError(
                f"min_idle_workers must be between 0 and max_idle_workers ({max_idle_workers}), got {min_idle_workers}"
            )
        if not topup_delay >= 0:
            raise ValueError(f"topup_delay must be a number of seconds >= 0, got {topup_delay!r}")
        self.topup_delay = topup_delay
        self.deferred = 0  # pool top-ups decided but not started yet (see topup_delay)
        self.deferred_for = 0.0  # seconds the deferred top-ups have waited so far...
        self.topup_step = topup_delay  # ...and the length of the wait in progress
        self.topup_pending = False  # a topup_after is out: its topup_due call is to come
        self.total = to_fixed(total)
        self.available = dict(self.total)
        gpus = int(total.get("GPU", 0))
        self.gpu_free = [UNIT] * gpus  # per device, fixed point share left
        self.queue: deque[LeaseRequest] = deque()
        self.workers: dict[bytes, Worker] = {}
        self.starting = 0  # all envs
        self.starting_envs: dict[str, int] = {}  # of those, per env other than the plain one
        self.max_idle_workers = max_idle_workers
        self.min_idle_workers = min_idle_workers
        # Workers that failed to start since the last one that started: the pool is not topped up
        # meanwhile, so a broken environment does not fork failing workers in a loop.
        self.start_failures = 0
        self.bundles: dict[tuple, Bundle] = {}  # (placement group id, index) -> Bundle, see its section

    # --- events -------------------------------------------------------------------------------
    def request(self, request: LeaseRequest) -> list:
        self.queue.append(request)
        return self.schedule()

    def cancel(self, request_id: bytes) -> list:
        self.queue = deque(r for r in self.queue if r.request_id != request_id)
        return []

    def worker_started(self, worker_id: bytes, env: str = "") -> list:
        self._started(env)
        self.start_failures = 0
        self.workers[worker_id] = Worker(worker_id, env=env)
        return self.schedule()

    def _started(self, env: str, count: int = 1) -> None:
        self.starting = max(0, self.starting - count)
        if env:
            left = self.starting_envs.get(env, 0) - count
            if left > 0:
                self.starting_envs[env] = left
            else:
                self.starting_envs.pop(env, None)

    def worker_kept(self, worker_id: bytes, env: str = "") -> list:
        """A surplus worker asked to exit refused (it still owns something): it is idle in the pool again."""
        self.workers[worker_id] = Worker(worker_id, env=env)
        return self.schedule()

    def worker_start_failed(self, env: str = "") -> list:
        self._started(env)
        self.start_failures += 1
        return self.schedule()

    def env_failed(self, env: str, error: str, starts: int) -> list:
        """Setting up ``env`` failed (a pip spec that does not resolve, say): the ``starts`` workers
        asked for it will not come, and every request queued for it fails with ``error``, once."""
        self._started(env, starts)
        failed = [r for r in self.queue if r.env == env]
        self.queue = deque(r for r in self.queue if r.env != env)
        return [("lease_failed", request, error) for request in failed] + self.schedule()

    def lease_returned(self, worker_id: bytes) -> list:
        worker = self.workers.get(worker_id)
        if worker is None or worker.lease is None or worker.dedicated or worker.dying:
            return self.schedule()
        self._release(worker)
        worker.lease = None
        worker.idle = True
        actions = []
        idle = [w for w in self.workers.values() if w.idle]
        if len(idle) > self.max_idle_workers:
            actions.append(("stop_worker", worker_id))
            del self.workers[worker_id]
        return actions + self.schedule()

    def worker_died(self, worker_id: bytes) -> list:
        worker = self.workers.pop(worker_id, None)
        actions = []
        if worker is not None and worker.lease is not None:
            self._release(worker)
            actions.append(("lease_lost", worker.lease, worker_id))
        return actions + self.schedule()

    def worker_killed(self, worker_id: bytes) -> list:
        """The node decided to SIGKILL this worker (an actor killed, a lease reclaimed): what it holds
        is free now, not once the process is reaped, so the next lease does not wait for the reaping.
        It is never leased again; its death (``worker_died``) still reports the lease as lost.
        GPUs stay held until the process is gone: their memory is freed only when it exits."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.dying:
            return []
        worker.dying = True
        worker.idle = False
        if worker.gpu_ids:
            return []
        self._release(worker)
        return self.schedule()

    def blocked(self, worker_id: bytes) -> list:
        """A leased worker waits in ``get``: lend its CPUs to other work so nested tasks can run."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.lease is None or worker.blocked:
            return []
        worker.blocked = True
        self._lend(worker, +1)
        return self.schedule()

    def _lend(self, worker: Worker, sign: int) -> None:
        # Inside a placement group a task holds its bundle's CPUs (CPU_group_*), not plain CPU.
        for name, amount in worker.held.items():
            if name == "CPU" or name.startswith("CPU_group_"):
                self.available[name] = self.available.get(name, 0) + sign * amount

    def unblocked(self, worker_id: bytes) -> list:
        worker = self.workers.get(worker_id)
        if worker is None or not worker.blocked:
            return []
        worker.blocked = False
        # Take the CPUs back even if that oversubscribes for a moment, as Ray does.
        self._lend(worker, -1)
        return []

    # --- policy -------------------------------------------------------------------------------
    def feasible(self, resources: dict) -> bool:
        if any(self.total.get(name, 0) < amount for name, amount in resources.items()):
            return False
        return self._gpu_fit(gpu_amount(resources), self.total_gpus()) is not None

    def total_gpus(self) -> list:
        return [UNIT] * len(self.gpu_free)

    @staticmethod
    def _gpu_fit(amount: int, free: list) -> list | None:
        """Device ids for ``amount`` GPUs: whole devices, or the fullest device a fraction fits on."""
        if amount <= 0:
            return []
        if amount >= UNIT:
            whole = [i for i, share in enumerate(free) if share == UNIT]
            count = -(-amount // UNIT)
            return whole[:count] if len(whole) >= count else None
        fitting = [i for i, share in enumerate(free) if share >= amount]
        if not fitting:
            return None
        return [min(fitting, key=lambda i: (free[i], i))]

    def schedule(self) -> list:
        actions = []
        idle: dict[str, list] = {}
        for w in self.workers.values():
            if w.idle:
                idle.setdefault(w.env, []).append(w)
        # Requests that fit but wait for a worker to start are counted against a copy of the
        # available resources, so we start no more workers than the resources can keep busy.
        unclaimed = dict(self.available)
        waiting: dict[str, int] = {}
        for request in list(self.queue):
            if not self.feasible(request.resources):
                if not request.warned:
                    request.warned = True
                    actions.append(("infeasible", request))
                continue
            if not all(unclaimed.get(name, 0) >= amount for name, amount in request.resources.items()):
                continue
            gpu_ids = self._gpu_fit(gpu_amount(request.running), self.gpu_free)
            if gpu_ids is None:
                continue
            candidates = idle.get(request.env)
            if not candidates:
                waiting[request.env] = waiting.get(request.env, 0) + 1
                for name, amount in request.running.items():
                    unclaimed[name] = unclaimed.get(name, 0) - amount
                continue
            worker = candidates.pop(0)
            self.queue.remove(request)
            self._grant(worker, request, gpu_ids)
            for name, amount in request.running.items():
                unclaimed[name] = unclaimed.get(name, 0) - amount
            actions.append(("grant", request, worker))
        plain_needed = waiting.get("", 0) > self._starting_in("")
        for env, count in waiting.items():
            for _ in range(count - self._starting_in(env)):
                self._start(env, actions)
        actions += self._retire_other_envs(idle, waiting)
        shortfall = self._pool_shortfall()  # net of the deferred ones and of the workers just started
        if plain_needed or not self.topup_delay:
            # A lease waits for a plain worker: the deferred top-ups start now (those the workers just
            # started for it do not already make up).
            count, self.deferred, self.deferred_for = max(0, shortfall + self.deferred), 0, 0.0
            for _ in range(count):
                self._start("", actions)
        elif shortfall > 0:
            if not self.topup_pending:
                self.topup_pending, self.topup_step = True, self.topup_delay
                actions.append(("topup_after", self.topup_delay))
            self.deferred += shortfall
        return actions

    def topup_due(self, idle_cpus: float | None = None) -> list:
        """The ``topup_after`` delay passed: start the deferred pool top-ups still missing, unless
        ``idle_cpus`` (the machine's CPUs idle on average over that delay; None: unknown) is under
        ``TOPUP_IDLE_CPUS`` and they have waited less than ``TOPUP_MAX_WAIT``: then they wait twice as
        long again (up to ``TOPUP_MAX_STEP``), so a steadily busy node still tops up its pool."""
        self.topup_pending = False
        self.deferred_for += self.topup_step  # the wait that just ended
        if self.deferred and idle_cpus is not None and idle_cpus < TOPUP_IDLE_CPUS:
            if self.deferred_for < TOPUP_MAX_WAIT:
                self.topup_pending = True
                self.topup_step = min(2 * self.topup_step, TOPUP_MAX_STEP, TOPUP_MAX_WAIT - self.deferred_for)
                return [("topup_after", self.topup_step)]
        self.deferred, self.deferred_for = 0, 0.0
        actions: list = []
        for _ in range(max(0, self._pool_shortfall())):
            self._start("", actions)
        return actions

    def _starting_in(self, env: str) -> int:
        if env:
            return self.starting_envs.get(env, 0)
        return self.starting - sum(self.starting_envs.values())

    def _start(self, env: str, actions: list) -> None:
        self.starting += 1
        if env:
            self.starting_envs[env] = self.starting_envs.get(env, 0) + 1
        actions.append(("start_worker", env))

    def _retire_other_envs(self, idle: dict, waiting: dict) -> list:
        """Stop idle workers of envs no queued request waits for while idle and starting workers are
        over the idle cap: workers being started for another env take their place."""
        if {env for env, workers in idle.items() if workers} | set(waiting) | set(self.starting_envs) <= {""}:
            return []  # plain workers only: the pool's own rules (lease_returned) apply
        spare = [w for env, workers in idle.items() if env not in waiting for w in workers]
        excess = sum(len(workers) for workers in idle.values()) + self.starting - self.max_idle_workers
        actions = []
        for worker in spare[: max(0, excess)]:
            del self.workers[worker.worker_id]
            actions.append(("stop_worker", worker.worker_id))
        return actions

    def _pool_shortfall(self) -> int:
        """Workers to start so that ``min_idle_workers`` are not an actor's (see the class)."""
        if self.start_failures:
            return 0
        pool = sum(1 for w in self.workers.values() if not w.dedicated and not w.dying)
        return self.min_idle_workers - pool - self.starting - self.deferred

    def _grant(self, worker: Worker, request: LeaseRequest, gpu_ids: list) -> None:
        worker.idle = False
        worker.lease = request
        worker.dedicated = request.for_actor
        worker.held = dict(request.running)
        for name, amount in worker.held.items():
            self.available[name] = self.available.get(name, 0) - amount
        gpu = gpu_amount(worker.held)
        worker.gpu_ids = gpu_ids
        share = min(gpu, UNIT) if gpu_ids else 0
        for i in gpu_ids:
            self.gpu_free[i] -= share if gpu < UNIT else UNIT

    def _release(self, worker: Worker) -> None:
        for name, amount in worker.held.items():
            self.available[name] = self.available.get(name, 0) + amount
        if worker.blocked:
            self._lend(worker, -1)
            worker.blocked = False
        gpu = gpu_amount(worker.held)
        for i in worker.gpu_ids:
            self.gpu_free[i] += gpu if gpu < UNIT else UNIT
        worker.held = {}
        worker.gpu_ids = []

    def demand(self) -> list:
        return [from_fixed(r.resources) for r in self.queue]

    def worker_states(self) -> dict:
        """How many of this node's workers are idle, run leased tasks, host actors, or wait in a get."""
        states = {"idle": 0, "busy": 0, "actor": 0, "blocked": 0}
        for worker in self.workers.values():
            if worker.dying:
                continue  # killed, being reaped: it holds nothing and runs nothing
            if worker.dedicated:
                states["actor"] += 1
            elif worker.idle:
                states["idle"] += 1
            else:
                states["blocked" if worker.blocked else "busy"] += 1
        return states

    def gpu_table(self, pid_of) -> list:
        """Who holds which GPU: one row per (device, worker), for ``ember status`` and the widgets;
        ``pid_of(worker id)`` is the worker's process id (None: not known)."""
        rows = []
        for worker in self.workers.values():
            amount = gpu_amount(worker.held)
            for gpu_id in worker.gpu_ids:
                pid = pid_of(worker.worker_id)
                what = worker.lease.what if worker.lease else ""
                rows.append(
                    {
                        "gpu_id": gpu_id,
                        "holder": f"{what} (pid {pid if pid is not None else '?'})",
                        "share": min(amount, UNIT) / UNIT,
                        "actor": bool(worker.dedicated),
                    }
                )
        return rows

    # --- placement-group bundles ----------------------------------------------------------------
    # A prepared bundle holds its resources out of ``available``; a committed one also adds Ray's
    # group resources (``CPU_group_0_<pg>``, ``CPU_group_<pg>``, ``bundle_group_0_<pg>``, ...), which
    # tasks and actors of the group request instead of ``CPU``. GPUs of a bundle come off the
    # ``GPU`` count only: devices are picked when a task of the group is granted.
    def prepare_bundles(self, pg_id: bytes, bundles: list) -> bool:
        """Phase 1: reserve ``[[index, resources], ...]`` if all fit now, else nothing."""
        fresh = [(index, to_fixed(res)) for index, res in bundles if (pg_id, index) not in self.bundles]
        need: dict = {}
        for _, res in fresh:
            for name, amount in res.items():
                need[name] = need.get(name, 0) + amount
        if not all(self.available.get(name, 0) >= amount for name, amount in need.items()):
            return False
        for index, res in fresh:
            self.bundles[(pg_id, index)] = Bundle(res)
            for name, amount in res.items():
                self.available[name] -= amount
        return True

    def commit_bundles(self, pg_id: bytes, indexes: list) -> list:
        """Phase 2: the bundles' group resources appear; queued work of the group may run."""
        for index in indexes:
            bundle = self.bundles.get((pg_id, index))
            if bundle is not None:
                bundle.committed = True
        self._rebuild_group(pg_id)
        return self.schedule()

    def cancel_bundles(self, pg_id: bytes, indexes: list) -> list:
        """Give bundles back (prepared or committed). Workers leased with their resources are
        stopped, as Ray kills a removed group's tasks and actors: ``("stop_leased_worker", id)``."""
        group = pg_id.hex()
        gone = [index for index in indexes if (pg_id, index) in self.bundles]
        for index in gone:
            for name, amount in self.bundles.pop((pg_id, index)).resources.items():
                self.available[name] = self.available.get(name, 0) + amount
        suffixes = tuple(f"_group_{index}_{group}" for index in gone)
        if not any(p == pg_id and b.committed for (p, _), b in self.bundles.items()):
            suffixes += (f"_group_{group}",)  # the group's wildcard resources go with its last bundle here
        actions = []
        for worker in self.workers.values():
            uses = [*worker.held, *(worker.lease.resources if worker.lease else ())]
            if any(name.endswith(suffixes) for name in uses):
                # Its resources are released now (they no longer exist); its death releases nothing twice.
                self._release(worker)
                worker.dedicated = True  # never lent again, even if its lease is returned before it dies
                actions.append(("stop_leased_worker", worker.worker_id))
        self._rebuild_group(pg_id)
        return actions + self.schedule()

    def _rebuild_group(self, pg_id: bytes) -> None:
        """Recompute a group's resources on this node from its committed bundles and what leased
        workers hold of them."""
        group = pg_id.hex()
        for name in [n for n in self.total if n.endswith(f"_{group}") and "_group_" in n]:
            del self.total[name]
            self.available.pop(name, None)
        for (p, index), bundle in self.bundles.items():
            if p != pg_id or not bundle.committed:
                continue
            amounts = dict(bundle.resources, bundle=1000 * UNIT)
            for resource, amount in amounts.items():
                for name in (f"{resource}_group_{index}_{group}", f"{resource}_group_{group}"):
                    self.total[name] = self.total.get(name, 0) + amount
                    self.available[name] = self.available.get(name, 0) + amount
        for worker in self.workers.values():
            for name, amount in worker.held.items():
                if name in self.total and name.endswith(f"_{group}"):
                    self.available[name] -= amount
