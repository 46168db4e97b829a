"""Starting and stopping ``python -m ember.runtime.cluster`` processes.

``ember start`` (detached, recorded so ``ember stop`` finds it) and the autoscaler's monitor (a
child watched through its stdin) both start cluster processes; ``ember.init()`` could share this too.

Data flow::

    caller --argv--> python -m ember.runtime.cluster --stdout: one JSON line--> caller
                                 stderr --> <session>/logs/cluster-startup.log (why it failed to start)
"""

import glob
import json
import os
import select
import signal
import subprocess
import sys
import time

import psutil

from ember.runtime.node.object_store import SHM_DIR
from ember.runtime.runtime_dir import open_private, private_subdir


def started_dir() -> str:
    """Where `ember start` records its processes, one JSON file per pid (`ember stop` stops exactly
    these): ``started/`` in the user's runtime directory. EMBER_STARTED_DIR moves it (so a test
    run's `ember stop` cannot stop clusters that another run, or a user, started on the same machine)."""
    return os.environ.get("EMBER_STARTED_DIR") or private_subdir("started")


def default_store_memory() -> int:
    """Ray's default object store size: 30% of memory, bounded by the free space in /dev/shm."""
    total = psutil.virtual_memory().total
    try:
        shm = os.statvfs("/dev/shm")
        shm_free = shm.f_bavail * shm.f_frsize
    except OSError:
        shm_free = total
    return int(max(75 * 2**20, min(0.3 * total, 0.9 * shm_free)))


def node_resources(
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict | None = None,
    object_store_memory: int | None = None,
) -> dict:
    """A node's resource map as a node manager takes it: CPU, GPU, custom resources, memory and
    object_store_memory (Ray's logical resources). Raises ValueError for invalid amounts."""
    if object_store_memory is not None and (
        isinstance(object_store_memory, bool) or not isinstance(object_store_memory, int) or object_store_memory <= 0
    ):
        raise ValueError(f"object_store_memory must be a positive number of bytes, got {object_store_memory!r}.")
    cpus = float(os.cpu_count() if num_cpus is None else num_cpus)
    if cpus < 0 or (num_gpus or 0) < 0:
        raise ValueError("num_cpus and num_gpus must be non-negative.")
    result = {"CPU": cpus}
    if num_gpus:
        result["GPU"] = float(num_gpus)
    for name, amount in (resources or {}).items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"Use num_cpus/num_gpus instead of resources={{'{name}': ...}}.")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"Resource {name!r} must be a non-negative number, got {amount!r}.")
        result[name] = float(amount)
    result["memory"] = float(int(psutil.virtual_memory().available * 0.7))
    result["object_store_memory"] = float(object_store_memory or default_store_memory())
    return result


def new_session_dir(tag: str = "") -> str:
    """A fresh session directory in the user's runtime directory (see runtime_dir), with its logs/
    subdirectory; both 0700."""
    name = f"session_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}_{time.time_ns() % 10**6}{tag}"
    return os.path.dirname(private_subdir(name, "logs"))


def start_cluster_process(
    resources: dict,
    session_dir: str,
    *,
    head: bool = False,
    address: str | None = None,
    host: str | None = None,
    port: int = 0,
    env_vars: dict | None = None,
    watch_stdin: bool = False,
    detach: bool = False,
    timeout: float = 30.0,
    process_env: dict | None = None,
    dashboard_port: int | None = None,
) -> tuple[dict, subprocess.Popen]:
    """Start ``python -m ember.runtime.cluster`` and wait for its JSON line.

    ``head`` runs a head (and a node manager); otherwise ``address`` names the head to join.
    ``watch_stdin`` keeps a pipe to the process's stdin: closing it (or this process dying) stops it.
    ``detach`` puts it in its own session, so it outlives the terminal that started it.
    ``dashboard_port`` (a head's): None for EMBER_DASHBOARD_PORT or 8265, 0 any free port, -1 none.
    Returns (info, process): info has head, node_manager, node_id, store_prefix, pid, dashboard_url.
    Raises RuntimeError with the end of the process's startup log when it fails to start.
    """
    if not head and not address:
        raise ValueError("A node that is not a head needs the address of the head to join.")
    argv = [sys.executable, "-m", "ember.runtime.cluster"]
    argv += ["--head"] if head else ["--address", address]
    if host:
        argv += ["--host", host]
    if port:
        argv += ["--port", str(int(port))]
    argv += [
        "--resources",
        json.dumps(resources),
        "--object-store-memory",
        str(int(resources.get("object_store_memory") or default_store_memory())),
        "--session-dir",
        session_dir,
        "--env",
        json.dumps(env_vars or {}),
    ]
    if watch_stdin:
        argv.append("--watch-stdin")
    if head and dashboard_port is not None:
        argv += ["--dashboard-port", str(int(dashboard_port))]
    info, process = start_process(
        argv,
        os.path.join(session_dir, "logs", "cluster-startup.log"),
        watch_stdin=watch_stdin,
        detach=detach,
        timeout=timeout,
        env=process_env,
    )
    info["session_dir"] = session_dir
    process.session_dir = session_dir
    process.store_prefix = info["store_prefix"]
    return info, process


def start_process(
    argv: list,
    startup_log_path: str,
    *,
    watch_stdin: bool = False,
    detach: bool = False,
    timeout: float = 30.0,
    env: dict | None = None,
) -> tuple[dict, subprocess.Popen]:
    """Start a process that prints one JSON line on stdout when it is ready; return (that line
    parsed, the process). Its stderr goes to ``startup_log_path``, whose end is in the RuntimeError
    raised when the process exits or stays silent for ``timeout`` s. ``env``: its environment
    (default: ours)."""
    os.makedirs(os.path.dirname(startup_log_path), mode=0o700, exist_ok=True)
    with open(open_private(startup_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as startup_log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if watch_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=startup_log,
            close_fds=True,
            start_new_session=detach,
            env=env,
        )
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    process.stdout.close()
    try:
        info = json.loads(line) if line else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        process.kill()
        process.wait()
        with open(startup_log_path, "rb") as f:
            detail = f.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[1:3])} failed to start.\n{line.decode(errors='replace')}{detail}")
    return info, process


def remove_store_files(prefix: str) -> None:
    """Remove a node's leftover shared-memory files (a backstop for a node that could not clean up)."""
    if not prefix:
        return
    for path in glob.glob(f"{SHM_DIR}/{prefix}-*"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def terminate(pid: int, create_time: float | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM a process, wait up to ``timeout`` s, then SIGKILL it. ``create_time`` guards against
    a recycled pid: a different process with the same pid is left alone. Returns whether it was ours."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 0.01:
            return False
        process.send_signal(signal.SIGTERM)
    except psutil.Error:
        return False
    if not _wait_exit(process, timeout):
        try:
            process.kill()
        except psutil.Error:
            pass
        _wait_exit(process, 5.0)
    return True


def _wait_exit(process: psutil.Process, timeout: float) -> bool:
    # A detached process is not our child, so it stays a zombie until init reaps it (which can take
    # seconds in a container): a zombie has exited, and that is all we wait for.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# --- the record of what `ember start` started ---------------------------------------------------------
def record_started(pid: int, kind: str, **fields) -> None:
    """Remember a process `ember start` started (kind: head, node or autoscaler) for `ember stop`."""
    directory = started_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = None
    entry = {"pid": pid, "kind": kind, "create_time": create_time, **fields}
    tmp = os.path.join(directory, f".{pid}.tmp")
    with open(open_private(tmp), "w") as f:
        json.dump(entry, f)
    os.replace(tmp, os.path.join(directory, str(pid)))


def forget_started(pid: int) -> None:
    try:
        os.unlink(os.path.join(started_dir(), str(pid)))
    except OSError:
        pass


def list_started() -> list:
    """The recorded processes, each a dict (pid, kind, create_time, alive, ...)."""
    entries = []
    directory = started_dir()
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name)
        try:
            # /tmp is shared: another user's clusters are theirs to stop.
            if not name.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            with open(path) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            continue
        entry["alive"] = is_same_process(entry["pid"], entry.get("create_time"))
        entries.append(entry)
    return entries


def is_same_process(pid: int, create_time: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(process.create_time() - create_time) <= 0.01
    except psutil.Error:
        return False
