"""Shared fixtures: one embedded cluster for most tests, and a leak check after every test.

Tests that need a cluster of their own (a tiny object store, a driver that gets SIGKILLed, a
second driver) run a driver script in a subprocess via ``run_driver``, so the shared cluster is
never disturbed. After each test, no Ember process and no shared-memory file may remain other
than the shared cluster's own.
"""

import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

import ember
from ember import api

SHARED_RESOURCES = {"custom": 4}

# Every process this test run starts inherits this tag, so the leak check ignores Ember processes
# that belong to anything else running on the machine (another checkout's tests, say).
RUN_TAG = f"{os.getpid()}-{time.time_ns()}"
os.environ["EMBER_TEST_RUN"] = RUN_TAG
# And its own runtime directory (cluster files, session dirs): address="auto" finds this run's
# clusters only, not those of another checkout's tests or of a notebook running beside them.
_RUNTIME_BASE = tempfile.mkdtemp(prefix="ember-test-run-")
os.environ["XDG_RUNTIME_DIR"] = _RUNTIME_BASE
atexit.register(shutil.rmtree, _RUNTIME_BASE, True)


def ember_processes() -> list:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if ("ember.runtime." not in cmdline and "ember.dashboard." not in cmdline) or process.pid == os.getpid():
            continue
        try:
            if process.environ().get("EMBER_TEST_RUN") == RUN_TAG:
                found.append(process)
        except psutil.Error:
            pass
    return found


# Clusters that a module-scoped fixture keeps up across tests (tests/multinode.py) register their
# processes and store prefixes here while they run, so the leak check does not count them.
SHARED_ROOTS: set = set()
SHARED_PREFIXES: set = set()


def shared_cluster_pids() -> set:
    roots = set(SHARED_ROOTS)
    if api._cluster_process is not None:
        roots.add(api._cluster_process.pid)
    pids = set()
    for pid in roots:
        try:
            root = psutil.Process(pid)
            pids |= {root.pid} | {child.pid for child in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return pids


def wait_for(condition, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def shm_files(since: float = 0.0) -> list:
    """Ember's shared-memory files, other than the shared cluster's, created after ``since``."""
    prefix = getattr(api._cluster_process, "store_prefix", None)
    found = []
    for path in glob.glob("/dev/shm/ember-*"):
        try:
            name = os.path.basename(path)
            shared = (prefix and name.startswith(prefix)) or any(name.startswith(p) for p in SHARED_PREFIXES)
            if os.stat(path).st_mtime >= since and not shared:
                found.append(path)
        except FileNotFoundError:
            pass
    return found


def held_by_other_runs(paths: list) -> set:
    """The shared-memory files among ``paths`` that a live process of another test run (another
    checkout's tests, a colleague's notebook) has mapped: that run's live store, not our leak."""
    wanted = set(paths)
    held = set()
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/maps") as maps:
                mapped = {line.split(None, 5)[-1].strip() for line in maps if "/dev/shm/ember-" in line}
        except OSError:
            continue
        mapped &= wanted
        if not mapped:
            continue
        try:
            if psutil.Process(pid).environ().get("EMBER_TEST_RUN") == RUN_TAG:
                continue
        except psutil.Error:
            continue
        held |= mapped
    return held


def other_runs_store_prefixes() -> tuple:
    """The store prefixes of the live clusters of other test runs: a cluster process (and each worker
    forked from it) names its session directory on its command line, and each node there keeps a spill
    directory named as its store files are (``ember-<12 hex>``). An object another run's live cluster
    stores is not mapped by anyone until read, so ``held_by_other_runs`` misses it."""
    prefixes = set()
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if "--session-dir" not in argv[:-1]:
            continue
        try:
            if process.environ().get("EMBER_TEST_RUN") == RUN_TAG:
                continue
        except psutil.Error:
            continue
        spill = os.path.join(argv[argv.index("--session-dir") + 1], "spill", "*")
        prefixes.update(f"ember-{os.path.basename(path)}-" for path in glob.glob(spill))
    return tuple(prefixes)


def leaks(since: float) -> list:
    ours = shared_cluster_pids()
    processes = [p for p in ember_processes() if p.pid not in ours]
    files = shm_files(since)
    if files:
        files = [path for path in files if path not in held_by_other_runs(files)]
    if files:
        theirs = other_runs_store_prefixes()
        files = [path for path in files if not os.path.basename(path).startswith(theirs)]
    return [f"process {p.pid}: {' '.join(p.cmdline())[:100]}" for p in processes if p.is_running()] + files


@pytest.fixture(autouse=True)
def no_leaks():
    started = time.time() - 1
    yield
    remaining = []

    def clean():
        remaining[:] = leaks(started)
        return not remaining

    try:
        wait_for(clean, timeout=15, message="Ember processes and shared memory to go away")
    except AssertionError:
        for item in ember_processes():
            if item.pid not in shared_cluster_pids():
                item.kill()
        pytest.fail(f"leaked after the test: {remaining}")


@pytest.fixture(scope="session")
def cluster():
    """The shared embedded cluster: 4 logical CPUs, 2 declared GPUs, a custom resource."""
    context = ember.init(
        num_cpus=4, num_gpus=2, resources=SHARED_RESOURCES, object_store_memory=2 * 2**30, log_to_driver=True
    )
    yield context
    prefix = api._cluster_process.store_prefix
    ember.shutdown()
    wait_for(
        lambda: not ember_processes() and not glob.glob(f"/dev/shm/{prefix}-*"),
        timeout=15,
        message="the shared cluster to leave nothing behind",
    )


@pytest.fixture(scope="module")
def serve_address(cluster):
    """Serve on the shared cluster for one test module: its HTTP proxy's address (a free port).
    At the module's end Serve shuts down, and none of its actors may be left alive."""
    pytest.importorskip("starlette")
    from ember import serve
    from ember.util.state import list_actors

    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    yield serve.api._http_address()
    serve.shutdown()
    serve_classes = {"ServeController", "ServeReplica", "ProxyActor"}
    wait_for(
        lambda: not [a for a in list_actors() if a.class_name in serve_classes and a.state != "DEAD"],
        message="Serve's actors to be gone after serve.shutdown()",
    )


@pytest.fixture
def serve_instance(serve_address):
    """Serve's HTTP address; every application a test deployed is deleted after it."""
    from ember import serve

    yield serve_address
    for name in list(serve.status().applications):
        serve.delete(name)


@ember.remote
def _hold(path: str) -> int:
    import pathlib

    while not pathlib.Path(path).exists():
        time.sleep(0.01)
    return os.getpid()


def hold_a_leased_worker(release) -> tuple:
    """Run a task that waits until the file ``release`` exists, so its worker stays leased to this
    driver (and alive); returns (the task's ref, which gives the worker's pid, and the lease)."""
    from ember.runtime.client.core_client import current_client

    client = current_client()
    ref = _hold.remote(str(release))
    leases = client.submitter.leases
    wait_for(lambda: any(lease.inflight for lease in leases.values()), message="the lease")
    return ref, next(lease for lease in leases.values() if lease.inflight)


def run_driver(
    code: str, timeout: float = 60, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``code`` as a separate driver process; returns the completed process (stdout, stderr)."""
    full_env = dict(os.environ)
    full_env.pop("EMBER_ADDRESS", None)
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"driver failed ({result.returncode}):\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@pytest.fixture
def feed(cluster):
    """A widgets' event feed of its own on the shared cluster, live (a probe task's events seen)
    and with its task history cleared."""
    pytest.importorskip("ipywidgets")
    from ember.runtime.client import core_client
    from ember.widgets.events import EventFeed

    @ember.remote
    def probe():
        return 4

    feed = EventFeed(core_client.current_client().publisher_address).start()
    probes = []
    wait_for(
        lambda: probes.append(ember.get(probe.remote(), timeout=20)) or feed.state.summary()["finished"], timeout=20
    )
    # Cleared once every probe is counted and the counts have settled: the head's summaries say what
    # ended, not when, so a task still on its way would count after the clear.
    wait_for(lambda: feed.state.summary()["finished"] >= len(probes), timeout=20, message="every probe counted")
    wait_for(settled(lambda: feed.state.summary()), timeout=20, message="the task counts to settle")
    with feed.lock:
        feed.state.clear_tasks()
    yield feed
    feed.stop()


def settled(read, quiet: float = 0.3):
    """A condition for ``wait_for``: true once ``read()`` has given the same value for ``quiet`` seconds."""
    last = {"value": object(), "since": 0.0}

    def condition():
        value, now = read(), time.monotonic()
        if value != last["value"]:
            last["value"], last["since"] = value, now
            return False
        return now - last["since"] >= quiet

    return condition


def assert_cluster_works() -> None:
    """From this process's driver: a task with a stored argument, a 10 MB value through the store,
    an actor's calls in order, and the node alive (after a test sent a service garbage, say)."""
    import numpy as np

    @ember.remote
    def add(a, b):
        return a + b

    @ember.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    big = ember.put(np.arange(200_000))
    assert ember.get(add.remote(ember.put(1), 2), timeout=60) == 3
    assert int(ember.get(add.remote(big, 1), timeout=60)[-1]) == 200_000
    data = os.urandom(10 << 20)
    assert ember.get(ember.put(data), timeout=60) == data
    counter = Counter.remote()
    assert ember.get([counter.inc.remote(), counter.inc.remote()], timeout=60) == [1, 2]
    assert ember.nodes()[0]["Alive"]
