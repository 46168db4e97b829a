"""Dataset.join side by side: ember.data, Ray Data 2.60 (its own venv, with polars) and one pandas
merge (the one-core reference). Both sides are generated in the store first (not timed); the time is
that of the join and a count of its rows, after a small join has warmed the workers. Each system runs in its
own process, one after another.

    PYTHONPATH=$PWD python benchmarks/data_join.py [--rows 4000000] [--partitions 8] \
        [--ray-python /work/ray-venv/bin/python] [--systems ember,ray,pandas]
"""

import argparse
import json
import os
import subprocess
import sys
import time

JOIN_TYPES = ("inner", "left_outer")


def _frames(rows: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    # Keys repeat about twice on the left and once on the right; a quarter of each side finds no match.
    left = pd.DataFrame({"id": rng.integers(0, rows // 2, rows), "a": rng.normal(size=rows)})
    right = pd.DataFrame({"id": np.arange(rows // 8, rows // 2 + rows // 8), "b": rng.normal(size=rows // 2)})
    return left, right


def run_one(system: str, rows: int, partitions: int) -> dict:
    left, right = _frames(rows)
    out = {}
    if system == "pandas":
        for join_type in JOIN_TYPES:
            start = time.perf_counter()
            joined = left.merge(right, on="id", how="inner" if join_type == "inner" else "left")
            out[join_type] = (time.perf_counter() - start, len(joined))
        return out
    if system == "ember":
        import ember as runtime
    else:
        import ray as runtime
    runtime.init(num_cpus=2, **({"include_dashboard": False} if system == "ray" else {}))
    data = runtime.data
    data.DataContext.get_current().enable_progress_bars = False
    chunks = 8
    ds_left = data.from_pandas([left.iloc[i::chunks] for i in range(chunks)]).materialize()
    ds_right = data.from_pandas([right.iloc[i::chunks] for i in range(chunks)]).materialize()
    # A small join first: workers import the join's modules and the functions are shipped once.
    small = data.from_pandas(left.iloc[:1000])
    small.join(small, "inner", partitions, on=("id",), left_suffix="_l").count()
    for join_type in JOIN_TYPES:
        start = time.perf_counter()
        count = ds_left.join(ds_right, join_type, partitions, on=("id",)).count()
        out[join_type] = (time.perf_counter() - start, count)
    runtime.shutdown()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--ray-python", default="/work/ray-venv/bin/python")
    parser.add_argument("--systems", default="ember,ray,pandas")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.worker, args.rows, args.partitions)))
        return
    results = {}
    for system in args.systems.split(","):
        python = args.ray_python if system == "ray" else sys.executable
        command = [python, os.path.abspath(__file__), "--worker", system, "--rows", str(args.rows)]
        command += ["--partitions", str(args.partitions)]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if done.returncode:
            print(f"{system} failed:\n{done.stderr[-2000:]}")
            continue
        results[system] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.rows:,} x {args.rows // 2:,} rows, {args.partitions} partitions, 2 CPUs (seconds, rows out)")
    print(f"| join | {' | '.join(results)} | " + " | ".join(f"ember/{s}" for s in results if s != "ember") + " |")
    print("|---|" + "---:|" * (2 * len(results) - 1))
    for join_type in JOIN_TYPES:
        cells = [f"{results[s][join_type][0]:.2f} ({results[s][join_type][1]:,})" for s in results]
        ratios = []
        if "ember" in results:
            mine = results["ember"][join_type][0]
            ratios = [f"{results[s][join_type][0] / mine:.2f}x" for s in results if s != "ember"]
        print(f"| {join_type} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
