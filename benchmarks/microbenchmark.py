"""Ray-style microbenchmarks for Ember, runnable against Ray for comparison.

The throughput rows mirror the rows of ``ray microbenchmark`` (Ray's
``python/ray/_private/ray_perf.py``) under the same names, written against the
public core API only (init, shutdown, remote, get, put, wait, kill, options), so
the very same code runs with ``import ember as ray`` and with ``import ray``.
Batch sizes of the multi-client rows are smaller than Ray's so that one batch
takes well under a second on a 2-core machine.  Three extra rows are measured:

* ``init to first result (s)``: ``init()`` until the first ``get`` of a trivial
  task returns, in a fresh subprocess (interpreter start and import excluded);
* ``get of a 1 GiB numpy array (s)``: put once, median of three ``get`` calls;
* ``idle cluster memory (MB)``: summed RSS (MB = 2**20 bytes) of the driver and
  every process of the cluster, 2 s after init plus one warm-up task; PSS is
  reported alongside (RSS counts shared pages once per process, PSS splits them).

Usage (see benchmarks/README.md)::

    python benchmarks/microbenchmark.py                      # ember
    /work/ray-venv/bin/python benchmarks/microbenchmark.py --backend ray
    python benchmarks/microbenchmark.py --compare ray --json results/cmp.json

Every backend run calls ``shutdown()`` and then reaps any descendant process
that is still alive (and says so).  A row that raises, or runs past
``--row-timeout``, is reported as an error; the remaining rows still run.
"""

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

NUM_CPUS = 2
# Extra init() arguments per backend.  Everything else is identical.
INIT_KWARGS = {"ray": {"include_dashboard": False}}
PROBE_MARK = "@@probe@@ "

ray = None  # the backend module (ember or ray); bound by bind()


# --- Workloads: plain definitions, wrapped by bind() as @ray.remote would. ---
# (They live at module level in __main__, so they are shipped by value.)

def small_value():
    return b"ok"


def do_put_small():
    for _ in range(100):
        ray.put(0)


def create_object_containing_ref():
    return [ray.put(1) for _ in range(10000)]


def work(actors, n):
    ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])


class Actor:
    def small_value(self):
        return b"ok"

    def small_value_batch(self, n):
        ray.get([small_value.remote() for _ in range(n)])


class AsyncActor:
    async def small_value(self):
        return b"ok"

    async def small_value_with_arg(self, x):
        return b"ok"


class Client:
    def __init__(self, servers):
        self.servers = servers if isinstance(servers, list) else [servers]

    def small_value_batch(self, n):
        ray.get([s.small_value.remote() for s in self.servers for _ in range(n)])


def bind(backend):
    """Import the backend and decorate the workloads with its ``remote``."""
    global ray, small_value, do_put_small, create_object_containing_ref, work
    global Actor, AsyncActor, Client
    if backend == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:  # let a source checkout of ember import without `pip install -e .`
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sys.path.append(root)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [os.environ.get("PYTHONPATH"), root]))
    ray = importlib.import_module(backend)
    small_value = ray.remote(small_value)
    do_put_small = ray.remote(do_put_small)
    create_object_containing_ref = ray.remote(create_object_containing_ref)
    work = ray.remote(work)
    Actor = ray.remote(num_cpus=0)(Actor)
    Client = ray.remote(num_cpus=0)(Client)
    AsyncActor = ray.remote(AsyncActor)


# --- Measurement helpers. ---

def timeit(fn, duration, multiplier=1):
    """Call fn for `duration` seconds after a short warm-up; return calls/s."""
    fn()
    warm_until = time.perf_counter() + max(0.2, duration / 4)
    while time.perf_counter() < warm_until:
        fn()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= duration:
            return multiplier * count / elapsed


_actors = []  # actors created by the current row; killed after it


def spawn(cls, *args, **options):
    handle = (cls.options(**options) if options else cls).remote(*args)
    _actors.append(handle)
    return handle


def kill_row_actors():
    while _actors:
        try:
            ray.kill(_actors.pop())
        except Exception:
            pass


# --- Rows: (name, unit, function(duration) -> value), in Ray's order. ---

ROWS = []


def row(name, unit="ops/s"):
    def register(fn):
        ROWS.append((name, unit, fn))
        return fn
    return register


@row("single client get calls (Plasma Store)")
def _(d):
    value = ray.put(0)
    return timeit(lambda: ray.get(value), d)


@row("single client put calls (Plasma Store)")
def _(d):
    return timeit(lambda: ray.put(0), d)


@row("multi client put calls (Plasma Store)")
def _(d):
    return timeit(lambda: ray.get([do_put_small.remote() for _ in range(10)]), d, 1000)


@row("single client put gigabytes", "GB/s")
def _(d):
    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)  # 0.84 GB, as in Ray
    return timeit(lambda: ray.put(arr), d, arr.nbytes / 1e9)


@row("single client tasks and get batch")
def _(d):
    return timeit(lambda: ray.get([small_value.remote() for _ in range(1000)]), d)


@row("single client get object containing 10k refs")
def _(d):
    ref = create_object_containing_ref.remote()
    return timeit(lambda: ray.get(ref), d)


@row("single client wait 1k refs")
def _(d):
    def wait_1k():
        not_ready = [small_value.remote() for _ in range(1000)]
        fetch_local = True  # as Ray: only the first wait needs to fetch
        for _ in range(1000):
            _, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            fetch_local = False
    return timeit(wait_1k, d)


@row("single client tasks sync")
def _(d):
    return timeit(lambda: ray.get(small_value.remote()), d)


@row("single client tasks async")
def _(d):
    return timeit(lambda: ray.get([small_value.remote() for _ in range(1000)]), d, 1000)


@row("multi client tasks async")
def _(d):
    n, actors = 2000, [spawn(Actor) for _ in range(4)]
    return timeit(lambda: ray.get([a.small_value_batch.remote(n) for a in actors]),
                  d, n * len(actors))


@row("1:1 actor calls sync")
def _(d):
    a = spawn(Actor)
    return timeit(lambda: ray.get(a.small_value.remote()), d)


@row("1:1 actor calls async")
def _(d):
    a = spawn(Actor)
    return timeit(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), d, 1000)


@row("1:1 actor calls concurrent")
def _(d):
    a = spawn(Actor, max_concurrency=16)
    return timeit(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), d, 1000)


@row("1:n actor calls async")
def _(d):
    n, servers = 1000, [spawn(Actor) for _ in range(max(1, NUM_CPUS // 2))]
    client = spawn(Client, servers)
    return timeit(lambda: ray.get(client.small_value_batch.remote(n)), d, n * len(servers))


@row("n:n actor calls async")
def _(d):
    n, m, servers = 1000, 4, [spawn(Actor) for _ in range(max(1, NUM_CPUS // 2))]
    return timeit(lambda: ray.get([work.remote(servers, n) for _ in range(m)]), d, n * m)


@row("1:1 async-actor calls sync")
def _(d):
    a = spawn(AsyncActor)
    return timeit(lambda: ray.get(a.small_value.remote()), d)


@row("1:1 async-actor calls async")
def _(d):
    a = spawn(AsyncActor)
    return timeit(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), d, 1000)


@row("1:1 async-actor calls with args async")
def _(d):
    a = spawn(AsyncActor)
    return timeit(
        lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(1000)]), d, 1000)


@row("get of a 1 GiB numpy array (s)", "s")
def _(d):
    arr = np.ones(2**30 // 8, dtype=np.float64)
    ref = ray.put(arr)
    del arr
    times = []
    for _ in range(3):
        start = time.perf_counter()
        value = ray.get(ref)
        times.append(time.perf_counter() - start)
        del value
    return statistics.median(times)


@row("actors created, called once and killed (1 CPU each)")
def _(d):
    # Ember's own row (Ray's microbenchmark has no actor creation): what Tune's default,
    # a new actor per trial, costs. Each actor holds a CPU, so the next one needs the last one's back.
    def one():
        a = Actor.options(num_cpus=1).remote()
        ray.get(a.small_value.remote())
        ray.kill(a)
    return timeit(one, d)


# Rows measured in fresh subprocesses by probe(), several times; median kept.
PROBE_ROWS = [
    ("init to first result (s)", "s", "init_s"),
    ("idle cluster memory (MB)", "MB", "rss_mb"),
    ("idle cluster memory PSS (MB)", "MB", "pss_mb"),
    ("idle cluster processes", "procs", "procs"),
]


def cluster_processes():
    """The driver and every process of its cluster."""
    me = psutil.Process()
    procs = {p.pid: p for p in [me] + me.children(recursive=True)}
    if ray.__name__ == "ray":  # Ray's daemons are children today; be safe anyway
        try:
            session = ray._private.worker._global_node.get_session_dir_path()
            for p in psutil.process_iter(["cmdline"]):
                if session in " ".join(p.info["cmdline"] or []):
                    procs.setdefault(p.pid, p)
        except Exception:
            pass
    return list(procs.values())


def probe(backend):
    """In a fresh process: time init + first result, then measure idle memory."""
    bind(backend)

    def one():
        return 1

    remote_one = ray.remote(one)
    start = time.perf_counter()
    ray.init(num_cpus=NUM_CPUS, **INIT_KWARGS.get(backend, {}))
    try:
        ray.get(remote_one.remote())
        init_s = time.perf_counter() - start
        time.sleep(2)
        rss = pss = 0
        procs = cluster_processes()
        for p in procs:
            try:
                rss += p.memory_info().rss
                pss += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    finally:
        ray.shutdown()
        reap_leftovers()
    print(PROBE_MARK + json.dumps({"init_s": init_s, "rss_mb": rss / 2**20,
                                   "pss_mb": pss / 2**20, "procs": len(procs)}))


def run_probes(backend, repeats, timeout):
    samples = []
    for _ in range(repeats):
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--probe"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the probe's own process group
            proc.communicate()
            raise
        lines = [l for l in out.splitlines() if l.startswith(PROBE_MARK)]
        if not lines:
            last = (err or out).strip().splitlines() or ["no output"]
            raise RuntimeError("probe exited %s: %s" % (proc.returncode, last[-1]))
        samples.append(json.loads(lines[-1][len(PROBE_MARK):]))
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


class RowTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise RowTimeout("row timed out")


def reap_leftovers(grace=5.0):
    """Wait for processes the backend left behind; terminate stragglers."""
    procs = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    if alive:
        print("WARNING: %d process(es) still alive %.0fs after shutdown(): %s; "
              "terminating" % (len(alive), grace,
                               ", ".join("%d %s" % (p.pid, p.name()) for p in alive)))
        for p in alive:
            p.terminate()
        _, alive = psutil.wait_procs(alive, timeout=3)
        for p in alive:
            p.kill()


def start_cluster(args):
    """init() plus one warm-up task, under the row alarm."""
    signal.alarm(args.row_timeout)
    try:
        ray.init(num_cpus=NUM_CPUS, **INIT_KWARGS.get(args.backend, {}))
        ray.get(small_value.remote())
    finally:
        signal.alarm(0)


def run_rows(args, rows, record):
    """Run the in-process rows on one cluster; errors become results.

    After a row times out the cluster may be wedged, so it is restarted."""
    try:
        bind(args.backend)
        start_cluster(args)
    except Exception as e:
        for name, unit, _ in rows:
            record(name, unit, error="init failed: %s: %s" % (type(e).__name__, e))
        return
    for i, (name, unit, fn) in enumerate(rows):
        signal.alarm(args.row_timeout)
        try:
            record(name, unit, fn(args.duration))
        except RowTimeout:
            record(name, unit, error="timed out after %ss" % args.row_timeout)
            _actors.clear()
            try:
                ray.shutdown()
                reap_leftovers()
                start_cluster(args)
            except Exception as e:
                for name, unit, _ in rows[i + 1:]:
                    record(name, unit, error="skipped: cluster restart failed: "
                                             "%s: %s" % (type(e).__name__, e))
                return
        except Exception as e:
            record(name, unit, error="%s: %s" % (type(e).__name__, e))
        finally:
            signal.alarm(0)
            kill_row_actors()


def run_backend(args):
    """Run the selected rows against one backend; return the results dict."""
    wanted = lambda name: args.rows.lower() in name.lower()
    results = {}

    def record(name, unit, value=None, error=None):
        results[name] = {"value": value, "unit": unit, "error": error}
        shown = error if error else format_value(value, unit) + " " + unit
        print("%-45s %s" % (name, shown), flush=True)

    probe_rows = [r for r in PROBE_ROWS if wanted(r[0])]
    if probe_rows:
        try:
            medians = run_probes(args.backend, args.init_repeats, args.row_timeout)
            for name, unit, key in probe_rows:
                record(name, unit, medians[key])
        except Exception as e:
            for name, unit, _ in probe_rows:
                record(name, unit, error="%s: %s" % (type(e).__name__, e))

    rows = [r for r in ROWS if wanted(r[0])]
    if rows:
        signal.signal(signal.SIGALRM, _alarm)
        try:
            run_rows(args, rows, record)
        finally:
            signal.alarm(0)
            try:
                ray.shutdown()
            except Exception as e:
                print("WARNING: shutdown() failed: %s: %s" % (type(e).__name__, e))
            reap_leftovers()
    try:
        version = importlib.import_module(args.backend).__version__
    except Exception:
        version = "?"
    meta = {"backend": args.backend, "version": version,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "duration_s": args.duration}
    return {"meta": meta, "rows": results}


# --- Reporting. ---

def format_value(value, unit):
    if value is None:
        return "-"
    if unit in ("ops/s", "MB") and value >= 100:
        return "{:,.0f}".format(value)
    if unit == "procs":
        return "%d" % value
    return "%.3g" % value


def goal(name, unit):
    """(comparison, threshold) on ember/ray for rows with a target, else None."""
    if name in ("init to first result (s)", "idle cluster memory (MB)"):
        return ("<=", 1 / 3)
    if name == "single client put gigabytes":
        return (">=", 0.5)
    if unit == "ops/s" and ("task" in name or "actor" in name):
        return (">=", 1.0)
    return None


def print_comparison(a, b):
    na, nb = a["meta"]["backend"], b["meta"]["backend"]
    print("\n%s %s vs %s %s (%s cpus, %ss per row)" % (
        na, a["meta"]["version"], nb, b["meta"]["version"],
        a["meta"]["cpus"], a["meta"]["duration_s"]))
    header = ("row", na, nb, "%s/%s" % (na, nb), "goal", "status")
    lines = []
    missing = {"value": None, "unit": "", "error": "not measured"}
    for name in list(a["rows"]) + [n for n in b["rows"] if n not in a["rows"]]:
        ra, rb = a["rows"].get(name, missing), b["rows"].get(name, missing)
        unit, va, vb = ra["unit"] or rb["unit"], ra["value"], rb["value"]
        g = goal(name, unit)
        better = "lower" if unit in ("s", "MB", "procs") else "higher"
        if va is None or vb is None or vb == 0:
            ratio, status = "-", "ERROR" if (ra["error"] or rb["error"]) else ""
        else:
            ratio = "%.2f" % (va / vb)
            ok = g and (va / vb <= g[1] if g[0] == "<=" else va / vb >= g[1])
            status = "" if not g else ("ok" if ok else "MISS")
        goal_txt = "%s %.2f" % g if g else "(%s better)" % better
        lines.append((name + " [%s]" % unit,
                      ra["error"] and "error" or format_value(va, unit),
                      rb["error"] and "error" or format_value(vb, unit),
                      ratio, goal_txt, status))
    widths = [max(len(str(l[i])) for l in lines + [header]) for i in range(6)]
    for i, l in enumerate([header] + lines):
        print(" | ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w)
                         for j, (c, w) in enumerate(zip(l, widths))))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    for label, res in ((na, a), (nb, b)):
        errors = {}
        for name, r in res["rows"].items():
            if r["error"]:
                errors.setdefault(r["error"], []).append(name)
        for error, names in errors.items():
            print("%s error in %s: %s" % (
                label, repr(names[0]) if len(names) == 1 else "%d rows" % len(names),
                error))


def run_child(python, backend, args, json_path):
    cmd = [python, os.path.abspath(__file__), "--backend", backend, "--json", json_path,
           "--duration", str(args.duration), "--rows", args.rows,
           "--init-repeats", str(args.init_repeats), "--row-timeout", str(args.row_timeout)]
    failed = {"meta": {"backend": backend, "version": "?", "cpus": os.cpu_count(), "duration_s": args.duration},
              "rows": {}}
    return run_script(cmd, json_path, failed, grace=30)


def run_script(cmd, json_path, failed, grace):
    """Run one backend's side in its own process; its results as it saved them in ``json_path``,
    or ``failed`` when it saved none. Interrupted, the child gets ``grace`` seconds to stop its
    clusters before it is killed."""
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    try:
        with open(json_path) as f:
            return json.load(f)
    except OSError:
        print("%s run failed (exit status %s)" % (failed["meta"]["backend"], rc))
        return failed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="ember", help="module to benchmark (ember, ray)")
    p.add_argument("--compare", metavar="BACKEND",
                   help="also run BACKEND (with --ray-python) and print both side by side")
    p.add_argument("--ray-python", default=os.environ.get("RAY_PYTHON",
                                                          "/work/ray-venv/bin/python"),
                   help="interpreter for the --compare backend (env RAY_PYTHON)")
    p.add_argument("--ray-json", help="with --compare: reuse these saved results "
                                      "instead of running the other backend")
    p.add_argument("--json", help="write results to this path")
    p.add_argument("--rows", default="", help="only rows whose name contains this")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per row")
    p.add_argument("--init-repeats", type=int, default=3,
                   help="fresh-process probes for init time and idle memory")
    p.add_argument("--row-timeout", type=int, default=60, help="seconds before a row "
                                                               "is abandoned")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _terminated)  # so that shutdown() still runs

    if args.probe:
        return probe(args.backend)
    if args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            mine = run_child(sys.executable, args.backend, args,
                             os.path.join(tmp, "a.json"))
            if args.ray_json:
                with open(args.ray_json) as f:
                    other = json.load(f)
                other = other.get(args.compare, other)  # a saved --compare result
            else:
                other = run_child(args.ray_python, args.compare, args,
                                  os.path.join(tmp, "b.json"))
        result = {args.backend: mine, args.compare: other}
        print_comparison(mine, other)
    else:
        result = run_backend(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
