"""Starting worker processes, and watching them, for the node manager.

A worker is forked from the node manager's process, which has already imported everything a
worker needs, so a new worker is ready in milliseconds instead of the ~100 ms a fresh interpreter
takes to import Ember; forked workers also share those pages copy-on-write. The child closes every
inherited descriptor, never touches the parent's ZeroMQ context and makes its own. Setting
``EMBER_WORKER_EXEC=1`` makes the child exec a fresh ``python -m ember.runtime.worker.worker`` instead.

Each worker's stdin is the read end of a pipe whose write end only the node manager holds: EOF
tells the worker that its node manager is gone (even if it was SIGKILLed). An idle worker is retired
by a message instead (EXIT_IF_IDLE, see :mod:`~ember.runtime.node.worker_pool`): it may still own objects.

Thread counts: like Ray, a worker runs with ``OMP_NUM_THREADS`` set unless the user set it (in
the environment the cluster started from, or in ``ember.init(runtime_env={"env_vars": ...})``), so
two workers doing BLAS or OpenMP work on two cores do not each start a thread per core. Ray sets it
to the task's ``num_cpus`` as each task starts; a worker's environment is fixed when it starts here,
before any task is known, so Ember uses 1 (Ray's value for the default ``num_cpus=1``). A forked
worker inherits numpy's BLAS already loaded with the node manager's thread count, which no longer
reads the environment, so the child also sets the count of each thread pool already loaded
(through threadpoolctl): ``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``/``BLIS_NUM_THREADS`` for that
library when the user set it, else ``OMP_NUM_THREADS``. A task's or actor's own ``runtime_env``
``env_vars`` are in ``os.environ`` while it runs (libraries that start then, such as pyarrow's
thread pool or torch, read them), but cannot resize a BLAS the worker loaded before.
"""

import ctypes
import os
import signal
import sys

_PR_SET_NAME = 15
# The variable a thread pool library reads before OMP_NUM_THREADS (threadpoolctl's internal_api names).
_OWN_VARIABLE = {"openblas": "OPENBLAS_NUM_THREADS", "mkl": "MKL_NUM_THREADS", "blis": "BLIS_NUM_THREADS"}
_UNSET = object()
_thread_pools = _UNSET  # threadpoolctl's view of the libraries loaded in this (the parent's) process


class WorkerProcess:
    """A worker child process: its pid, its life pipe, and its exit status once reaped."""

    def __init__(self, pid: int, life_fd: int):
        self.pid = pid
        self.life_fd = life_fd
        self.returncode: int | None = None
        self.worker_id: bytes | None = None
        self.identity: bytes | None = None
        self.address: str | None = None
        self.client_address: str | None = None
        self.retiring = False  # asked to exit because the pool has too many idle workers
        self.env = ""  # the key of the runtime env it was started in

    def poll(self) -> int | None:
        """The exit code if the process has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.close_life_pipe()
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close_life_pipe(self) -> None:
        if self.life_fd >= 0:
            os.close(self.life_fd)
            self.life_fd = -1


def spawn_worker(
    env: dict, log_path: str, cwd: str | None = None, python: str | None = None, venv_site: list | None = None
) -> WorkerProcess:
    """Fork a worker with ``env`` added to its environment and its output going to ``log_path``;
    ``cwd`` is its working directory, ``python`` (a runtime env's venv) an interpreter to exec instead,
    unless ``venv_site`` (the venv's site-packages, see venv_fork) says the fork can enter the venv."""
    pools = _loaded_thread_pools()
    read_fd, write_fd = os.pipe()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    pid = os.fork()
    if pid == 0:  # the child: never return from here
        code = 1
        try:
            os.dup2(read_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os.environ.update(env)
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            _limit_thread_pools(pools)
            if cwd:
                os.chdir(cwd)
            if python and venv_site:
                from ember.runtime.node import venv_fork

                venv_fork.enter(os.path.dirname(os.path.dirname(python)), venv_site)
            elif python or os.environ.get("EMBER_WORKER_EXEC") == "1":
                python = python or sys.executable
                os.execv(python, [python, "-m", "ember.runtime.worker.worker"])
            _become_worker()
            code = 0
        except BaseException:  # noqa: B036 - report anything, then leave without running the parent's cleanup
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(read_fd)
    os.close(log_fd)
    return WorkerProcess(pid, write_fd)


def _loaded_thread_pools():
    """threadpoolctl's controller of the thread pools (BLAS, OpenMP) loaded in this process, made
    once (it scans the loaded libraries); None without threadpoolctl. Forked children share its
    handles, so each one can resize its copy of those pools with a plain call."""
    global _thread_pools
    if _thread_pools is _UNSET:
        try:
            from threadpoolctl import ThreadpoolController

            _thread_pools = ThreadpoolController()
        except Exception:  # not installed, or a library it cannot read: the environment still applies
            _thread_pools = None
    return _thread_pools


def _limit_thread_pools(pools) -> None:
    """In a forked child: give each thread pool loaded before the fork the count its environment asks."""
    if pools is None:
        return
    for lib in pools.lib_controllers:
        own = _OWN_VARIABLE.get(lib.internal_api)
        value = (os.environ.get(own) if own else None) or os.environ.get("OMP_NUM_THREADS")
        try:
            count = int(value)
        except (TypeError, ValueError):
            continue
        if count >= 1 and count != lib.num_threads:
            lib.set_num_threads(count)


def _become_worker() -> None:
    from ember.runtime import transport
    from ember.runtime.worker import worker

    # The parent's ZeroMQ context is unusable here (its I/O threads were not forked). Keep a
    # reference so it is never garbage-collected (terminating it could hang), and start afresh.
    transport.forget_context()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, b"ember-worker", 0, 0, 0)  # what ps/top show
    except (OSError, AttributeError):
        pass
    worker.main()
