"""ember.data against Ray Data, Dask dataframe and a one-process pyarrow loop, in one run.

Generates about 2 GB of Parquet once (``--scale`` shrinks it; cached under ``--data-dir``), then
runs four rows on each system, every system in its own subprocess:

- etl: read -> map_batches (numpy arithmetic) -> filter -> write Parquet
- groupby: read -> groupby(key) -> mean of two columns
- iter_batches: read -> iter_batches(batch_size=16384) into a consumer that sums a column
- actor_pool: read -> map_batches(callable class) on a pool of 2 actors -> consumer

Throughput is input rows per second of wall time (cluster start-up excluded). Peak memory is the
largest sum of the RSS of every process of that system (the driver and all its descendants: for
Ray the GCS, raylet, dashboard agents and workers; for Ember the head, node manager and workers),
sampled every 50 ms by this parent process. The pyarrow loop is the one-core reference: one
process on one core, with Arrow's CPU and I/O thread pools at one thread (``pa.set_cpu_count(1)``,
``pa.set_io_thread_count(1)``) and numpy's BLAS at one thread (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to 1 in its environment, read when numpy
loads): otherwise the matrix product of the actor_pool row runs on every core. Each row's line on
stderr shows its CPU seconds over wall seconds, which stays near 1 for this loop, and how long the
system's processes (their main threads) waited, runnable, for a CPU during the row, with the load
average as the row started: on a shared machine a row whose processes waited a large part of its wall
time measured the machine's other work, not the system.

One run's ratio moves by 10-15% on a shared 2-CPU machine (both sides vary with the same work):
``--repeat N`` runs every system N times in turn and ends with Ember's ratios per round and their
median.

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/data.py                 # everything, 2 GB
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/data.py --scale 0.05 --systems ember,pyarrow
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/data.py --systems ember,pyarrow --repeat 5
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = ("etl", "groupby", "iter_batches", "actor_pool")
SYSTEMS = ("ember", "ray", "dask", "pyarrow")
FULL_ROWS = 40_000_000  # x 52 bytes a row: about 2.1 GB of (incompressible) Parquet
FILES = 32
BATCH = 16384
CPUS = 2


# ---- data -----------------------------------------------------------------------------------------


def ensure_data(data_dir: str, scale: float) -> dict:
    """Write the Parquet files once per scale; later runs reuse them (a marker says they are complete)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(data_dir, f"scale-{scale:g}")
    marker = os.path.join(path, "_COMPLETE.json")
    if os.path.exists(marker):
        with open(marker) as f:
            return json.load(f)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    rows = max(FILES * 1000, int(FULL_ROWS * scale))
    rng = np.random.default_rng(0)
    start = 0
    print(f"generating {rows:,} rows of Parquet under {path} ...", file=sys.stderr, flush=True)
    for i in range(FILES):
        n = rows * (i + 1) // FILES - rows * i // FILES
        table = pa.table(
            {
                "id": np.arange(start, start + n, dtype=np.int64),
                "key": rng.integers(0, 1000, n, dtype=np.int64),
                "x": rng.standard_normal(n),
                "y": rng.random(n),
                "z": rng.standard_normal(n) * 10,
                "w": rng.random(n, dtype=np.float32),
                "n": rng.integers(0, 2**40, n, dtype=np.int64),
            }
        )
        pq.write_table(table, os.path.join(path, f"part-{i:04d}.parquet"), row_group_size=256 * 1024)
        start += n
    info = {
        "path": path,
        "rows": rows,
        "bytes": sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".parquet")),
    }
    with open(marker, "w") as f:
        json.dump(info, f)
    return info


# ---- the workloads (the same arithmetic on every system) ------------------------------------------


def arith(batch):
    """Numpy arithmetic on a dict of arrays (or a DataFrame): two derived columns."""
    import numpy as np

    x, y, z = batch["x"], batch["y"], batch["z"]
    out = dict(batch) if isinstance(batch, dict) else batch.assign()
    out["score"] = np.sqrt(x * x + y * y) + np.log1p(np.abs(z)) * 0.25
    out["ratio"] = (y + 1.0) / (np.abs(x) + 1.0)
    return out


FILTER = "score > 1.0"


class Model:
    """A stand-in for a model: weights built once per actor, applied to every batch."""

    def __init__(self):
        import numpy as np

        self.weights = np.linspace(0.5, 1.5, 4)

    def __call__(self, batch):
        import numpy as np

        features = np.stack([batch["x"], batch["y"], batch["z"], batch["w"].astype(np.float64)], axis=1)
        return {"id": batch["id"], "pred": np.tanh(features @ self.weights)}


def consume(batch, column) -> float:
    return float(batch[column].sum())


# ---- one system, in its own process ----------------------------------------------------------------


def run_ray_like(rd, data: str, out: str, row: str, min_rows_per_file: int | None = None):
    """Ray Data and ember.data take the same code."""
    if row == "etl":
        written = rd.read_parquet(data).map_batches(arith).filter(expr=FILTER)
        if min_rows_per_file:
            written.write_parquet(out, min_rows_per_file=min_rows_per_file)
        else:
            written.write_parquet(out)
    elif row == "groupby":
        result = rd.read_parquet(data).select_columns(["key", "x", "y"]).groupby("key").mean(["x", "y"]).take_all()
        assert len(result) == 1000, len(result)
    elif row == "iter_batches":
        total = 0.0
        for batch in rd.read_parquet(data).iter_batches(batch_size=BATCH, batch_format="numpy"):
            total += consume(batch, "x")
    elif row == "actor_pool":
        ds = rd.read_parquet(data).map_batches(Model, compute=rd.ActorPoolStrategy(size=2), num_cpus=0.5)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            consume(batch, "pred")


def run_dask(data: str, out: str, row: str):
    import dask
    import dask.dataframe as dd

    dask.config.set(scheduler="threads", num_workers=CPUS)
    if row == "etl":
        ddf = dd.read_parquet(data).map_partitions(arith)
        ddf[ddf.score > 1.0].to_parquet(out)
    elif row == "groupby":
        result = dd.read_parquet(data, columns=["key", "x", "y"]).groupby("key")[["x", "y"]].mean().compute()
        assert len(result) == 1000, len(result)
    elif row == "iter_batches":
        # Dask has no streaming iterator: partitions are computed one after another.
        total = 0.0
        for part in dd.read_parquet(data).to_delayed():
            df = part.compute()
            for start in range(0, len(df), BATCH):
                total += float(df["x"].values[start : start + BATCH].sum())
    elif row == "actor_pool":
        # No actors in Dask: one instance, shared by the threads of the scheduler.
        model = Model()
        ddf = dd.read_parquet(data).map_partitions(lambda df: __import__("pandas").DataFrame(model(df)))
        for part in ddf.to_delayed():
            part.compute()["pred"].sum()


def run_pyarrow(data: str, out: str, row: str):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    files = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".parquet"))
    if row == "etl":
        os.makedirs(out, exist_ok=True)
        for i, path in enumerate(files):
            with pq.ParquetWriter(os.path.join(out, f"{i:04d}.parquet"), None or _etl_schema()) as writer:
                source = pq.ParquetFile(path)
                for g in range(source.num_row_groups):
                    table = source.read_row_group(g, use_threads=False)
                    batch = {n: table.column(n).to_numpy() for n in table.column_names}
                    result = pa.table(arith(batch))
                    writer.write_table(result.filter(pc.field("score") > 1.0))
    elif row == "groupby":
        partials = []
        for path in files:
            table = pq.read_table(path, columns=["key", "x", "y"], use_threads=False)
            partials.append(table.group_by("key").aggregate([("x", "sum"), ("y", "sum"), ("x", "count")]))
        merged = (
            pa.concat_tables(partials)
            .group_by("key")
            .aggregate([("x_sum", "sum"), ("y_sum", "sum"), ("x_count", "sum")])
        )
        means = pc.divide(merged["x_sum_sum"], merged["x_count_sum"])
        assert len(means) == 1000
    elif row == "iter_batches":
        total = 0.0
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, use_threads=False):
                total += consume({n: batch.column(n).to_numpy() for n in batch.schema.names}, "x")
    elif row == "actor_pool":
        model = Model()
        for path in files:
            source = pq.ParquetFile(path)
            for g in range(source.num_row_groups):
                table = source.read_row_group(g, use_threads=False)
                consume(model({n: table.column(n).to_numpy() for n in table.column_names}), "pred")
    _ = np


def _etl_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("key", pa.int64()),
            ("x", pa.float64()),
            ("y", pa.float64()),
            ("z", pa.float64()),
            ("w", pa.float32()),
            ("n", pa.int64()),
            ("score", pa.float64()),
            ("ratio", pa.float64()),
        ]
    )


def worker(system: str, data: str, out_root: str, rows: list, min_rows_per_file: int | None = None) -> None:
    """Runs in the system's subprocess: start the cluster, then each row, announcing each on stdout."""
    rd = None
    if system == "ember":
        import ember
        import ember.data as rd

        ember.init(num_cpus=CPUS)
        rd.DataContext.get_current().enable_progress_bars = False
    elif system == "ray":
        import ray
        import ray.data as rd

        ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
        ctx = rd.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    if rd is not None:
        # Start the workers before the clock does (both systems start them lazily, at the first task).
        rd.range(1000, override_num_blocks=CPUS).map_batches(lambda b: b).take_all()
    for row in rows:
        out = os.path.join(out_root, f"{system}-{row}")
        shutil.rmtree(out, ignore_errors=True)
        print(f"@@start {row}", flush=True)
        started = time.perf_counter()
        if rd is not None:
            run_ray_like(rd, data, out, row, min_rows_per_file)
        elif system == "dask":
            run_dask(data, out, row)
        else:
            run_pyarrow(data, out, row)
        seconds = time.perf_counter() - started
        print(f"@@end {row} {seconds:.6f}", flush=True)
        shutil.rmtree(out, ignore_errors=True)


# ---- the parent: spawn, sample memory, tabulate --------------------------------------------------------


def runqueue_wait(pid: int) -> float | None:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU (Linux schedstat):
    what a busy machine takes from a row, as against what the system itself leaves idle."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def tree_sample(proc, cpu_seen: dict, wait_seen: dict | None = None) -> int:
    """The summed RSS of ``proc`` and its descendants; records each one's CPU seconds in ``cpu_seen``
    (kept after a process exits, so a row's CPU time counts the workers that ended during it) and
    its main thread's run-queue wait in ``wait_seen``."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                times = p.cpu_times()
                cpu_seen[p.pid] = times.user + times.system
            waited = runqueue_wait(p.pid) if wait_seen is not None else None
            if waited is not None:
                wait_seen[p.pid] = waited
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_system(system: str, python: str, args, data: dict, rows: list) -> dict:
    env = dict(os.environ)
    if system == "ember":
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    elif system == "pyarrow":
        # The one-core reference: numpy's BLAS reads these when it loads (see the module docstring).
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    else:
        # Ray's venv must not see this checkout (it would import nothing of it, but keep it clean).
        env.pop("PYTHONPATH", None)
    cmd = [python, os.path.abspath(__file__), "--worker", system, "--data-path", data["path"]]
    cmd += ["--out-dir", args.out_dir, "--rows", ",".join(rows)]
    if args.min_rows_per_file:
        cmd += ["--min-rows-per-file", str(args.min_rows_per_file)]
    import psutil  # only here: the Ray venv's child processes need none of it

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    current, results, peaks, cpu_seen, cpu_at_start = [None], {}, {}, {}, {}
    wait_seen, wait_at_start, load_at_start = {}, {}, [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss = tree_sample(ps, cpu_seen, wait_seen)
            row = current[0]
            if row is not None:
                peaks[row] = max(peaks.get(row, 0), rss)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for line in proc.stdout:
            if line.startswith("@@start "):
                tree_sample(ps, cpu_seen, wait_seen)
                cpu_at_start, wait_at_start = dict(cpu_seen), dict(wait_seen)
                load_at_start[0] = os.getloadavg()[0]
                current[0] = line.split()[1]
            elif line.startswith("@@end "):
                _, row, seconds = line.split()
                peaks[row] = max(peaks.get(row, 0), tree_sample(ps, cpu_seen, wait_seen))
                current[0] = None
                cpu = sum(t - cpu_at_start.get(pid, 0.0) for pid, t in cpu_seen.items())
                seconds = float(seconds)
                waited = sum(t - wait_at_start.get(pid, 0.0) for pid, t in wait_seen.items())
                results[row] = {
                    "seconds": seconds,
                    "rows_per_s": data["rows"] / seconds,
                    "cpu_s": cpu,
                    "runqueue_wait_s": waited,
                    "load_1m": load_at_start[0],
                }
                print(
                    f"  {system:8s} {row:13s} {seconds:8.2f} s  cpu {cpu:7.2f} s ({cpu / seconds:.2f} x wall)  "
                    f"peak {peaks[row] / 2**20:6.0f} MiB  waited for a CPU {waited:5.2f} s  "
                    f"load {load_at_start[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                sys.stderr.write(line)
        proc.wait(timeout=120)
    finally:
        stop.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for row, peak in peaks.items():
        results.setdefault(row, {"error": f"{system} did not finish the row (exit {proc.returncode})"})
        results[row]["peak_rss"] = peak
    return results


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def table(results: dict, rows: list, data: dict) -> str:
    systems = [s for s in SYSTEMS if s in results]
    head = ["row"] + [f"{s} Mrows/s" for s in systems] + ["ember/ray", "ember/pyarrow"]
    head += [f"{s} peak MiB" for s in systems] + ["mem ember/ray"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        get = {s: results[s].get(row, {}) for s in systems}
        speed = {s: get[s].get("rows_per_s") for s in systems}
        peak = {s: get[s].get("peak_rss") for s in systems}
        cells = [row] + [f"{speed[s] / 1e6:.2f}" if speed[s] else "failed" for s in systems]
        cells += [ratio(speed.get("ember"), speed.get("ray")), ratio(speed.get("ember"), speed.get("pyarrow"))]
        cells += [f"{peak[s] / 2**20:.0f}" if peak[s] else "-" for s in systems]
        cells += [ratio(peak.get("ember"), peak.get("ray"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n{data['rows']:,} rows, {data['bytes'] / 1e9:.2f} GB of Parquet in {FILES} files; {CPUS} CPUs.")
    return "\n".join(lines)


def spread(rounds: list, rows: list) -> str:
    """Ember's ratios in each round and their median: how much one run's ratio can be trusted."""
    lines = ["\n| row | ember/ray per round | median | ember/pyarrow per round | median |", "|---|---|---:|---|---:|"]
    for row in rows:
        cells = [row]
        for peer in ("ray", "pyarrow"):
            values = []
            for results in rounds:
                ours = results.get("ember", {}).get(row, {}).get("rows_per_s")
                theirs = results.get(peer, {}).get(row, {}).get("rows_per_s")
                if ours and theirs:
                    values.append(ours / theirs)
            cells.append(", ".join(f"{v:.2f}" for v in values) or "-")
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/tmp/ember-data-bench", help="where the generated Parquet is cached")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the ~2 GB dataset (0.05 for a quick run)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    p.add_argument("--ember-python", default=sys.executable, help="interpreter for Ember and the pyarrow loop")
    p.add_argument(
        "--ray-python",
        default=os.environ.get("RAY_PYTHON", "/work/ray-venv/bin/python"),
        help="interpreter with Ray 2.60 and Dask (env RAY_PYTHON)",
    )
    p.add_argument("--out-dir", default=None, help="where the etl row writes (default: <data-dir>/out)")
    p.add_argument("--json", help="write the results to this path")
    p.add_argument("--repeat", type=int, default=1, help="run every system this many times, in turn")
    p.add_argument(
        "--min-rows-per-file",
        type=int,
        help="Ray's and Ember's etl row write files of at least this many rows (one row group each)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if args.worker:
        worker(args.worker, args.data_path, args.out_dir, rows, args.min_rows_per_file)
        return
    for r in rows:
        if r not in ROWS:
            p.error(f"unknown row {r!r}")
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    args.out_dir = args.out_dir or os.path.join(args.data_dir, "out")
    data = ensure_data(args.data_dir, args.scale)
    rounds = []
    for _ in range(args.repeat):
        results = {}
        for system in systems:
            python = args.ray_python if system in ("ray", "dask") else args.ember_python
            print(f"{system} ({python})", file=sys.stderr, flush=True)
            results[system] = run_system(system, python, args, data, rows)
        print(table(results, rows, data))
        rounds.append(results)
    if len(rounds) > 1:
        print(spread(rounds, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": data, "results": rounds[0], "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
