"""The node manager's worker pool: the worker processes it started, from the fork to the reaping.

Data flow::

    scheduler --start_worker(env)--> node manager --start--> WorkerPool --env set up?--> EnvSetups
                                                                 |   <--poll_setups: ready / failed--+
                                                                 +--fork (spawn_worker, VenvForks)--> worker process
    worker process --worker_ready--> node manager --starting / ready--> WorkerPool (known by worker id)
    every tick: node manager --reap--> WorkerPool --exited processes--> node manager --> scheduler, head
    scheduler --stop_worker--> node manager --retire--> WorkerPool --identity--> EXIT_IF_IDLE to the worker
    kill_worker, a gone lessee --kill--> WorkerPool --SIGKILL--> worker process

The pool decides nothing: which workers to start, keep, stop or kill is the
:class:`~ember.runtime.node.scheduler.LeaseScheduler`'s, and what the node tells others about them is
the node manager's. The pool holds the processes, their environments and the classes new workers
load ahead, and answers the node manager's calls; it sends no message itself.
"""

import os
import time
from collections.abc import Callable, Iterator

from ember.runtime.node.clients import UnknownClientError
from ember.runtime.node.env_setups import EnvSetups
from ember.runtime.node.venv_fork import VenvForks
from ember.runtime.node.worker_process import WorkerProcess, spawn_worker
from ember.runtime.settings import number_from_env

# How many of the latest actors' classes a new worker loads ahead (see WorkerPool.recent_classes).
# 0 turns it off: a class whose module imports a large library (torch) makes each idle worker that much bigger.
PRELOAD_CLASSES = "EMBER_WORKER_PRELOAD_CLASSES"
# Seconds between an actor's grant and the start of the pool worker that replaces its one, unless a
# lease finds no idle worker first (see LeaseScheduler): the new actor starts without a fork and a
# worker's start competing with it for the CPUs. 0: the replacement starts with the grant.
TOPUP_DELAY = "EMBER_WORKER_TOPUP_DELAY_S"
KILL_WAIT = 5.0  # seconds close() waits for killed workers to be reaped


class WorkerPool:
    """One node's worker processes (Ray's worker pool).

    ``base_env`` is the environment every worker starts with (the node's own ``env``), a runtime
    env's ``env_vars`` go over it, and ``node_env`` (the node's addresses and ids) over both.
    ``on_spawn(log path, process)`` hears of each worker started (the node's table of its log files).
    """

    def __init__(self, base_env: dict, node_env: dict, envs: EnvSetups, log_dir: str, on_spawn: Callable | None = None):
        self.base_env = base_env
        self.on_spawn = on_spawn
        self.node_env = node_env
        self.envs = envs  # the runtime envs: a worker of one that needs a setup starts once it is done
        self.log_dir = log_dir
        self.venv_forks = VenvForks()  # whether a pip env's workers can fork from this process
        self.processes: list[WorkerProcess] = []  # every worker started and not reaped yet
        self.workers: dict[bytes, WorkerProcess] = {}  # the ones that said they are ready, by worker id
        # (class id, job id) of the latest actors granted here, newest last: a worker started from now
        # on loads them while idle, so the next such actor (a Tune trial's, say) finds its class loaded.
        self.recent_classes: list = []
        self.preload_classes = preload_setting()
        self.code_loaded = False  # see _load_worker_code
        self.call_soon: Callable | None = None  # the poll loop's, once attached

    def attach(self, loop) -> None:
        self.call_soon = loop.call_soon

    def start(self, env_key: str = "") -> None:
        """Start a worker for runtime env ``env_key`` now, or once the env is set up."""
        if self.envs.want_worker(env_key):
            self.spawn(env_key)

    def spawn(self, env_key: str) -> None:
        variables, cwd, python = self.envs.worker_environment(env_key)
        env = dict(self.base_env)
        env.update(variables)
        env.update(self.node_env)
        log_path = os.path.join(self.log_dir, f"worker-{time.time_ns()}.log")
        process = spawn_worker(env, log_path, cwd, python, self.venv_forks.plan(python) if python else None)
        process.env = env_key
        if self.on_spawn is not None:
            self.on_spawn(log_path, process)
        self.processes.append(process)

    def poll_setups(self) -> list:
        """Start the workers of the envs whose setup ended well; ``[(env key, error, starts)]`` for
        those whose setup failed, with the number of workers that waited for each."""
        failed = []
        for key, starts, error in self.envs.poll():
            if error is None:
                for _ in range(starts):
                    self.spawn(key)
            else:
                failed.append((key, error, starts))
        return failed

    def starting(self, pid: int) -> WorkerProcess:
        """The process ``pid`` this pool started and that has not said it is ready yet."""
        process = next((p for p in self.processes if p.pid == pid and p.worker_id is None), None)
        if process is None:
            raise UnknownClientError(f"no worker process {pid} of this node is starting")
        return process

    def ready(
        self, process: WorkerProcess, worker_id: bytes, identity: bytes, address: str, client_address: str
    ) -> None:
        """``process`` is up as worker ``worker_id``, on connection ``identity``."""
        process.worker_id = worker_id
        process.identity = identity
        process.address = address
        process.client_address = client_address
        self.workers[worker_id] = process
        if not self.code_loaded and self.call_soon is not None:
            self.code_loaded = True
            self.call_soon(_load_worker_code)

    def reap(self) -> Iterator[WorkerProcess]:
        """The processes that exited, each dropped from the pool just before it is yielded: what the
        caller does about one (kill the workers its lessee held, say) still sees the others."""
        for process in list(self.processes):
            if process.poll() is None:
                continue
            self.processes.remove(process)
            if process.worker_id is not None:
                self.workers.pop(process.worker_id, None)
            yield process

    def own(self, identity: bytes, worker_id: bytes) -> WorkerProcess | None:
        """The worker ``worker_id`` if the message about it came from that worker itself."""
        process = self.workers.get(worker_id)
        return process if process is not None and process.identity == identity else None

    def retire(self, worker_id: bytes) -> bytes | None:
        """Mark ``worker_id`` as asked to exit if idle; its connection's identity (None: not ours)."""
        process = self.workers.get(worker_id)
        if process is None:
            return None
        process.retiring = True
        return process.identity

    def keep(self, identity: bytes, worker_id: bytes) -> WorkerProcess | None:
        """The worker refused to exit (it still owns objects or holds leases): it stays, and is
        returned, if it was retiring and the refusal came from it."""
        process = self.own(identity, worker_id)
        if process is None or not process.retiring:
            return None
        process.retiring = False
        return process

    def kill(self, worker_id: bytes) -> bool:
        """SIGKILL worker ``worker_id``; False if it is not one of ours (it is reaped later, as any exit)."""
        process = self.workers.get(worker_id)
        if process is None:
            return False
        process.kill()
        return True

    def pid_of(self, worker_id: bytes) -> int | None:
        process = self.workers.get(worker_id)
        return None if process is None else process.pid

    def remember_class(self, entry: tuple) -> None:
        """An actor of class ``entry`` (class id, job id) was granted: workers started next load it."""
        if entry in self.recent_classes:
            self.recent_classes.remove(entry)
        self.recent_classes.append(entry)
        del self.recent_classes[: max(0, len(self.recent_classes) - self.preload_classes)]

    def close(self) -> None:
        """Stop the env setups and kill every worker, waiting a while for them to be reaped."""
        self.envs.close()
        for process in self.processes:
            process.kill()
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(0.01)


def preload_setting() -> int:
    """How many recent actor classes a new worker loads ahead (``EMBER_WORKER_PRELOAD_CLASSES``, default 4)."""
    return number_from_env(PRELOAD_CLASSES, int, 4, 0, 2**31, "a whole number")


def topup_delay_setting() -> float:
    """Seconds a pool top-up waits after an actor's grant (``EMBER_WORKER_TOPUP_DELAY_S``, default 0.05)."""
    return number_from_env(TOPUP_DELAY, float, 0.05, 0, 60, "a number of seconds")


def _load_worker_code() -> None:
    """Import the worker's modules here, once, after the first worker is up (not before: the cluster's
    start would wait for it). Workers forked from then on have them already, which takes about a third
    off a worker's start (tens of milliseconds: what an actor creation waits for when no idle worker is left)."""
    import ember.runtime.worker.worker  # noqa: F401
