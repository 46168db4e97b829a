"""Multi-node benchmarks for Ember, runnable against Ray for comparison.

Every row starts its own cluster of several nodes on this machine as real processes,
connects a driver with ``init(address=...)``, measures, shuts the cluster down and checks
that no process of it is left.  The workloads use only the public API, so the very same
code runs with ``import ember as ray`` and with ``import ray``:

* Ember: a head plus node managers, each ``python -m ember.runtime.cluster`` (as
  ``tests/multinode.py`` starts them), each with its own resources and object store;
* Ray: ``ray.cluster_utils.Cluster`` (one raylet, object store and workers per node;
  ``include_dashboard=False``) with the same resources per node.

Rows (see benchmarks/README.md, "Multi-node"):

1. small tasks over 4 nodes of 1 CPU: tasks/s with ``scheduling_strategy="SPREAD"`` and with
   the default policy, and how many of the 4 nodes ran some of them;
2. placement group create/removal per second (Ray's ``ray_perf`` row, on 4 nodes);
3. cross-node transfer of a 1 GiB numpy array: node A to a task on node B, and node A to
   the driver (on the head node);
4. node failure: 3 nodes, 6 tasks of 1 s spread over them, SIGKILL one non-head node's
   manager process (Ray: its raylet); seconds from the kill until every result is in.

Usage::

    python benchmarks/multinode.py                        # ember
    /work/ray-venv/bin/python benchmarks/multinode.py --backend ray
    python benchmarks/multinode.py --compare ray          # both, one table, saved as JSON
"""

import argparse
import collections
import importlib
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from microbenchmark import run_script, timeit  # this folder is first on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "multinode.json")
MiB, GiB = 2**20, 2**30
SMALL_STORE = 512 * MiB  # per node, rows without large objects
LARGE_STORE = 2560 * MiB  # per node, the transfer row (one 1 GiB object per node at a time)
ARRAY_BYTES = GiB

ray = None  # the backend module (ember or ray); bound by bind()
BACKEND = None


# --- Workloads: plain definitions, wrapped by bind() as @ray.remote would. ---


def node_id():
    return ray.get_runtime_context().get_node_id()


def produce(nbytes):
    return np.ones(nbytes // 8, dtype=np.float64)


def consume(array):
    return array.nbytes


def sleep_task(seconds):
    start = time.time()
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id(), start


def bind(backend):
    """Import the backend and decorate the workloads with its ``remote``."""
    global ray, BACKEND, node_id, produce, consume, sleep_task
    if backend == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:  # let a source checkout of ember import without `pip install -e .`
        sys.path.append(ROOT)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), ROOT]))
    ray = importlib.import_module(backend)
    importlib.import_module(backend + ".util.scheduling_strategies")
    BACKEND = backend
    node_id = ray.remote(node_id)
    produce = ray.remote(produce)
    consume = ray.remote(consume)
    sleep_task = ray.remote(sleep_task)


# --- Clusters: a list of node specs {"CPU": n, custom...}; node 0 is the head. ---


class EmberCluster:
    """A head (with its node manager) plus node managers joined with ``--address``."""

    def __init__(self, specs, store, env=None):
        from ember.runtime.runtime_dir import runtime_dir

        self.session_dir = tempfile.mkdtemp(prefix="ember-bench-multinode-", dir=runtime_dir())
        # The cluster's secret; this process's driver (and anything it starts) holds it too.
        os.environ["EMBER_CLUSTER_TOKEN"] = secrets.token_hex(16)
        self.env = dict(os.environ, **(env or {}))
        self.store = store
        self.processes, self.infos = [], []
        self._start(None, specs[0])
        self.address = self.infos[0]["head"]
        for spec in specs[1:]:
            self._start(self.address, spec)

    def _start(self, head_address, spec):
        from ember.runtime import launcher

        resources = {"object_store_memory": float(self.store), **spec}
        info, process = launcher.start_cluster_process(
            resources,
            self.session_dir,
            head=head_address is None,
            address=head_address,
            watch_stdin=True,
            process_env=self.env,
        )
        self.processes.append(process)
        self.infos.append(info)

    def node_ids(self):
        return [info["node_id"] for info in self.infos]

    def kill(self, index, sig=signal.SIGKILL):
        """Signal node ``index``'s process (node manager and store) and its workers at once."""
        return kill_tree([self.infos[index]["pid"]], sig)

    def logs(self):
        return os.path.join(self.session_dir, "logs")

    def shutdown(self):
        for process in reversed(self.processes):
            try:
                process.stdin.close()
            except OSError:
                pass
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                print(f"WARNING: Ember node process {process.pid} did not exit; killing it")
                process.kill()
                process.wait()
        from ember.runtime import launcher

        for info in self.infos:  # a node killed with SIGKILL could not remove its store files
            launcher.remove_store_files(info["store_prefix"])


class RayCluster:
    """``ray.cluster_utils.Cluster``: one raylet (scheduler + object store) per node."""

    def __init__(self, specs, store, env=None):
        from ray.cluster_utils import Cluster

        def args(spec):
            custom = {k: v for k, v in spec.items() if k != "CPU"}
            return {"num_cpus": spec.get("CPU", 1), "resources": custom, "object_store_memory": store}

        self.cluster = Cluster(initialize_head=True, head_node_args=dict(args(specs[0]), include_dashboard=False))
        self.nodes = [self.cluster.head_node]
        for spec in specs[1:]:
            self.nodes.append(self.cluster.add_node(**args(spec)))
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def node_ids(self):
        return [node.node_id for node in self.nodes]

    def kill(self, index, sig=signal.SIGKILL):
        """Signal node ``index``'s processes (raylet with its object store, agents) and its
        workers at once."""
        infos = [i for infos in self.nodes[index].all_processes.values() for i in infos]
        return kill_tree([i.process.pid for i in infos], sig)

    def logs(self):
        return None

    def shutdown(self):
        self.cluster.shutdown()


def kill_tree(pids, sig=signal.SIGKILL):
    """Signal these processes and all their descendants in one go, as a machine that dies
    (SIGKILL) or stops answering (SIGSTOP); returns the processes signalled."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc] + proc.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return procs


CLUSTERS = {"ember": EmberCluster, "ray": RayCluster}


class Session:
    """One row's cluster and driver: started on enter, torn down and checked on exit."""

    def __init__(self, specs, store=SMALL_STORE, env=None):
        self.specs, self.store, self.env = specs, store, env
        self.seen = {}  # pid -> psutil.Process: every descendant seen during the row
        self.cluster = None
        self.leftovers = []

    def track(self):
        for p in psutil.Process().children(recursive=True):
            self.seen.setdefault(p.pid, p)

    def __enter__(self):
        self.cluster = CLUSTERS[BACKEND](self.specs, self.store, self.env)
        self.track()
        ray.init(address=self.cluster.address)
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) != len(self.specs):
            raise RuntimeError(f"{len(alive)} live nodes, expected {len(self.specs)}")
        self.driver_node = ray.get_runtime_context().get_node_id()
        return self

    def __exit__(self, *exc):
        self.track()
        try:
            ray.shutdown()
        except Exception as e:
            print(f"WARNING: shutdown() failed: {type(e).__name__}: {e}")
        if self.cluster is not None:
            self.cluster.shutdown()
        self.track()
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=10)
        if alive:
            self.leftovers = [f"{p.pid} {p.name()}" for p in alive]
            print(f"WARNING: {len(alive)} process(es) left after the row: {self.leftovers}; killing them")
            for p in alive:
                p.kill()
            psutil.wait_procs(alive, timeout=5)
        return False


# --- Row groups: each starts one cluster and records one or more rows. ---

GROUPS = []


def group(*rows):
    """Register a group; ``rows`` are (name, unit) it records, in order."""

    def register(fn):
        GROUPS.append((fn.__name__, list(rows), fn))
        return fn

    return register


def strategy(name):
    return {} if name == "DEFAULT" else {"scheduling_strategy": name}


@group(
    ("tasks over 4 nodes, SPREAD", "tasks/s"),
    ("tasks over 4 nodes, SPREAD: nodes used", "nodes"),
    ("tasks over 4 nodes, default policy", "tasks/s"),
    ("tasks over 4 nodes, default policy: nodes used", "nodes"),
)
def spread_tasks(args, record):
    batch = 1000
    with Session([{"CPU": 1}] * 4) as s:
        for label, name in (("SPREAD", "SPREAD"), ("default policy", "DEFAULT")):
            counts = collections.Counter()
            fn = node_id.options(**strategy(name))

            def run_batch(fn=fn, counts=counts):
                counts.update(ray.get([fn.remote() for _ in range(batch)]))

            rate = timeit(run_batch, args.duration, batch)
            record(f"tasks over 4 nodes, {label}", rate)
            per_node = [counts.get(n, 0) for n in s.cluster.node_ids()]
            record(
                f"tasks over 4 nodes, {label}: nodes used",
                sum(1 for c in per_node if c),
                note=f"tasks per node (head first): {per_node}",
            )


@group(("placement group create/removal", "PGs/s"))
def placement_groups(args, record):
    num_pgs = 100  # as Ray's ray_perf: 100 groups of one {"custom": 0.001} bundle, wait, remove

    def create_remove():
        pgs = [ray.util.placement_group(bundles=[{"custom": 0.001}]) for _ in range(num_pgs)]
        if not all(pg.wait(timeout_seconds=30) for pg in pgs):
            raise RuntimeError("a placement group was not ready within 30 s")
        for pg in pgs:
            ray.util.remove_placement_group(pg)

    with Session([{"CPU": 1, "custom": 100}] * 4):
        rate = timeit(create_remove, args.duration, num_pgs)
        time.sleep(0.5)
        table = ray.util.placement_group_table()
        live = [k for k, v in table.items() if v.get("state") != "REMOVED"]
        record(
            "placement group create/removal",
            rate,
            note=f"{len(table)} groups in placement_group_table(), {len(live)} not REMOVED",
        )


@group(
    ("1 GiB array, node A -> task on node B", "GB/s"),
    ("1 GiB array, node A -> driver on head node", "GB/s"),
)
def transfer(args, record):
    specs = [{"CPU": 1}, {"CPU": 1, "node_a": 1}, {"CPU": 1, "node_b": 1}]
    on_a, on_b = {"resources": {"node_a": 1}}, {"resources": {"node_b": 1}}
    with Session(specs, store=LARGE_STORE) as s:
        if s.driver_node != s.cluster.node_ids()[0]:
            raise RuntimeError("the driver is not attached to the head node")

        def produced(nbytes):
            ref = produce.options(**on_a).remote(nbytes)
            ray.wait([ref], fetch_local=False)
            return ref

        def consumer_time(nbytes):
            ref = produced(nbytes)
            start = time.perf_counter()
            result = ray.get(consume.options(**on_b).remote(ref))
            elapsed = time.perf_counter() - start
            assert result == nbytes, result
            del ref
            return elapsed

        consumer_time(8)  # start the workers on A and B
        baseline = statistics.median(consumer_time(8) for _ in range(5))
        times = []
        for _ in range(args.repeats):
            times.append(consumer_time(ARRAY_BYTES))
            time.sleep(1)  # let the freed copies go
        transfer_s = statistics.median(times) - baseline
        record(
            "1 GiB array, node A -> task on node B",
            ARRAY_BYTES / 1e9 / transfer_s,
            note=f"median {statistics.median(times):.3f} s end to end minus {baseline * 1e3:.1f} ms baseline "
            f"(same tasks, 8-byte array); runs {[f'{t:.3f}' for t in times]}",
        )

        times = []
        for _ in range(args.repeats):
            ref = produced(ARRAY_BYTES)
            start = time.perf_counter()
            value = ray.get(ref)
            times.append(time.perf_counter() - start)
            assert value.nbytes == ARRAY_BYTES and value[-1] == 1.0
            del value, ref
            time.sleep(1)
        record(
            "1 GiB array, node A -> driver on head node",
            ARRAY_BYTES / 1e9 / statistics.median(times),
            note=f"median get() {statistics.median(times):.3f} s; runs {[f'{t:.3f}' for t in times]}",
        )


def node_kill(args, record, name, env=None, sig=signal.SIGKILL):
    tasks, seconds = 6, 1.0
    spread = sleep_task.options(scheduling_strategy="SPREAD")
    with Session([{"CPU": 2}] * 3, env=env) as s:
        victim = 2  # a node that is neither the head nor the driver's
        if s.cluster.node_ids()[victim] == s.driver_node:
            raise RuntimeError("the driver is attached to the node to be killed")
        for _ in range(2):  # start two workers on every node
            ray.get([spread.remote(0.2) for _ in range(tasks)])
        refs = [spread.remote(seconds) for _ in range(tasks)]
        time.sleep(0.5)  # all six are running by now: 2 per node
        s.track()
        kill_wall = time.time()
        start = time.perf_counter()
        victims = s.cluster.kill(victim, sig)
        victim_id, dead_after = s.cluster.node_ids()[victim], None
        deadline = start + args.kill_timeout
        try:
            pending = refs
            while pending and time.perf_counter() < deadline:  # poll: results, and the node's state
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.25)
                if dead_after is None and not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == victim_id):
                    dead_after = time.perf_counter() - start
            if pending:
                dead = "not marked dead" if dead_after is None else f"marked dead after {dead_after:.1f} s"
                raise ResultsMissing(f"> {args.kill_timeout} s: {len(pending)} of {tasks} results not in (node {dead})")
            elapsed = time.perf_counter() - start
            results = ray.get(refs)
        finally:
            if sig != signal.SIGKILL:  # a frozen node is then killed for good
                for proc in victims:
                    try:
                        proc.kill()
                    except psutil.NoSuchProcess:
                        pass
        retried = sorted(t - kill_wall for _, t in results if t > kill_wall)
        per_node = collections.Counter(n for n, _ in results)
        if per_node.get(victim_id):
            raise RuntimeError("a result came from the killed node")
        record(
            name,
            elapsed,
            note=f"{len(victims)} processes signalled; node marked dead in nodes() after "
            f"{'?' if dead_after is None else f'{dead_after:.2f}'} s; {len(retried)} of {tasks} tasks rerun "
            f"elsewhere, starting {[f'{t:.2f}' for t in retried]} s after the signal; "
            f"results per node {[per_node.get(n, 0) for n in s.cluster.node_ids()]}",
        )
        if len(retried) == 0:
            raise RuntimeError("no task was rerun: did the kill land after the tasks finished?")


KILL_ROW = "node SIGKILL to all results in"
KILL_ROW_2S = "node SIGKILL to all results in (EMBER_NODE_TIMEOUT_S=2)"
STOP_ROW = "node SIGSTOP (frozen) to all results in"


@group((KILL_ROW, "s"))
def node_failure(args, record):
    node_kill(args, record, KILL_ROW)


@group((KILL_ROW_2S, "s"))
def node_failure_2s(args, record):
    if BACKEND != "ember":
        record(KILL_ROW_2S, None, note="n/a: an Ember setting; Ray runs only with its defaults")
        return
    node_kill(args, record, KILL_ROW_2S, env={"EMBER_NODE_TIMEOUT_S": "2"})


@group((STOP_ROW, "s"))
def node_frozen(args, record):
    node_kill(args, record, STOP_ROW, sig=signal.SIGSTOP)


# --- Driver. ---


class RowTimeout(Exception):
    pass


class ResultsMissing(Exception):
    """A node row waited --kill-timeout seconds without every result: reported as is."""


def _alarm(signum, frame):
    raise RowTimeout("timed out")


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def run_backend(args):
    bind(args.backend)
    results, leftovers = {}, {}

    def recorder(group_rows):
        units = dict(group_rows)

        def record(name, value, error=None, note=None):
            results[name] = {"value": value, "unit": units[name], "error": error, "note": note}
            shown = error or ("n/a" if value is None else format_value(value, units[name]) + " " + units[name])
            print(f"{name:<50} {shown}" + (f"  ({note})" if note else ""), flush=True)

        return record

    signal.signal(signal.SIGALRM, _alarm)
    for gname, rows, fn in GROUPS:
        if not any(args.rows.lower() in name.lower() for name, _ in rows):
            continue
        record = recorder(rows)
        signal.alarm(args.row_timeout)
        try:
            fn(args, record)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            error = str(e) if isinstance(e, ResultsMissing) else f"{type(e).__name__}: {e}"
            for name, _ in rows:
                if name not in results:
                    record(name, None, error=error)
                elif not results[name]["error"]:
                    results[name]["error"] = error
        finally:
            signal.alarm(0)
        leftover = [p for p in psutil.Process().children(recursive=True)]
        if leftover:
            leftovers[gname] = [f"{p.pid} {p.name()}" for p in leftover]
            print(f"WARNING: processes left after {gname}: {leftovers[gname]}")
    try:
        version = importlib.import_module(args.backend).__version__
    except Exception:
        version = "?"
    meta = {
        "backend": args.backend,
        "version": version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GiB, 1),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "leftover_processes": leftovers,
    }
    return {"meta": meta, "rows": results}


def format_value(value, unit):
    if value is None:
        return "-"
    if unit == "nodes":
        return f"{value:d}/4"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown_table(a, b):
    na, nb = a["meta"]["backend"], b["meta"]["backend"]
    lines = [
        "| row | {} {} | {} {} | {}/{} |".format(
            na.capitalize(),
            a["meta"]["version"],
            nb.capitalize(),
            b["meta"]["version"],
            na.capitalize(),
            nb.capitalize(),
        ),
        "|---|---:|---:|---:|",
    ]
    missing = {"value": None, "unit": "", "error": "not measured", "note": None}
    for name in list(a["rows"]) + [n for n in b["rows"] if n not in a["rows"]]:
        ra, rb = a["rows"].get(name, missing), b["rows"].get(name, missing)
        unit = ra["unit"] or rb["unit"]

        def cell(r, unit=unit):
            if r["error"] and r["error"].startswith(">"):  # a node row that gave up waiting
                return r["error"]
            if r["error"]:
                return "error: " + r["error"].replace("|", "/")[:80]
            if r["value"] is None:
                return "n/a"
            return format_value(r["value"], unit) + ("" if unit == "nodes" else " " + unit)

        va, vb = ra["value"], rb["value"]
        ratio = "%.2f" % (va / vb) if (va is not None and vb and not ra["error"] and not rb["error"]) else "-"
        if unit == "nodes":
            ratio = "-"
        elif va is not None and not ra["error"] and (rb["error"] or "").startswith("> "):
            ratio = f"< {va / float(rb['error'].split()[1]):.2f}"  # Ray waited longer than that
        lines.append(f"| {name} | {cell(ra)} | {cell(rb)} | {ratio} |")
    return "\n".join(lines)


def run_child(python, backend, args, json_path):
    cmd = [python, os.path.abspath(__file__), "--backend", backend, "--json", json_path]
    cmd += ["--duration", str(args.duration), "--repeats", str(args.repeats), "--rows", args.rows]
    cmd += ["--row-timeout", str(args.row_timeout), "--kill-timeout", str(args.kill_timeout)]
    return run_script(cmd, json_path, {"meta": {"backend": backend, "version": "?"}, "rows": {}}, grace=60)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="ember", help="module to benchmark (ember, ray)")
    p.add_argument("--compare", metavar="BACKEND", help="also run BACKEND (with --ray-python); one table")
    p.add_argument(
        "--ray-python",
        default=os.environ.get("RAY_PYTHON", "/work/ray-venv/bin/python"),
        help="interpreter for the --compare backend (env RAY_PYTHON)",
    )
    p.add_argument("--ray-json", help="with --compare: reuse these saved results instead of running it")
    p.add_argument("--json", help=f"write results here (with --compare, default {DEFAULT_JSON})")
    p.add_argument("--rows", default="", help="only row groups with a row whose name contains this")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per throughput row")
    p.add_argument("--repeats", type=int, default=5, help="1 GiB transfers per transfer row (median)")
    p.add_argument("--row-timeout", type=int, default=240, help="seconds before a row group is abandoned")
    p.add_argument("--kill-timeout", type=int, default=120, help="node rows: seconds to wait for all results")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _terminated)  # so that the clusters are still shut down

    if args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            mine = run_child(sys.executable, args.backend, args, os.path.join(tmp, "a.json"))
            if args.ray_json:
                with open(args.ray_json) as f:
                    other = json.load(f)
                other = other.get(args.compare, other)
            else:
                other = run_child(args.ray_python, args.compare, args, os.path.join(tmp, "b.json"))
        result = {args.backend: mine, args.compare: other}
        table = markdown_table(mine, other)
        result["table"] = table
        print("\n" + table)
        for label, res in ((args.backend, mine), (args.compare, other)):
            for name, r in res["rows"].items():
                if r.get("note"):
                    print("{}, {}: {}".format(label, name, r["note"]))
        json_path = args.json or DEFAULT_JSON
    else:
        result = run_backend(args)
        json_path = args.json
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
