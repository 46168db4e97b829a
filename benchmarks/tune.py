"""ember.tune against Ray Tune 2.60, side by side in one run, each system in its own subprocess.

Three rows, the same trainable code on both sides (only the import differs: ``import ember as ray``):

- overhead: 200 trials that each sleep 0.5 s and report once, 2 at a time (2 CPUs, 1 CPU a trial):
  the floor is 200 * 0.5 / 2 = 50 s; the row is the wall time of ``fit()`` over that floor.
  Scaled down from Ray's "bookkeeping overhead" release test to a 2-core machine.
- results: 20 trials each reporting 1,000 times in a tight loop: results per second.
- trials: 1,000 trials that report once: trials per second.

Both sides run with their libraries' defaults: ``reuse_actors=False`` (the default of Ember's and
of Ray 2.60's ``TuneConfig``; ``--reuse-actors`` turns reuse on for both), ``verbose=1`` (the
child's stdout goes to a log file), storage under a fresh temporary directory. Timing covers
``Tuner.fit()`` only, not the cluster's start. On this 2-core machine under load Ray needs about
3 s a trial, so the full size takes Ray near an hour; --scale 0.1 takes about 8 minutes in all.

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/tune.py               # full size
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/tune.py --scale 0.1   # a quick run
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/tune.py --systems ember --reuse-actors
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = ("overhead", "results", "trials")
PYTHONS = {"ember": "/work/venv/bin/python", "ray": "/work/ray-venv/bin/python"}
CPUS = 2
SLEEP_S = 0.5
TARGETS = {
    "overhead": "<= 1/3 of Ray's and <= 5% of the floor",
    "results": ">= 3x Ray's",
    "trials": ">= 3x Ray's",
}


def sizes(scale: float) -> dict:
    """Trial counts for each row at ``scale`` (1.0 is the issue's size)."""
    if not scale > 0:
        raise ValueError(f"--scale must be positive, got {scale!r}")
    return {
        "overhead": max(4, round(200 * scale)),
        "results": (max(2, round(20 * scale)), max(10, round(1000 * scale))),
        "trials": max(10, round(1000 * scale)),
    }


# ---- child: one system, one row -------------------------------------------------------------------


def child(system: str, row: str, scale: float, out_path: str, reuse_actors: bool = False) -> None:
    if system == "ember":
        import ember as ray
        from ember import tune
    else:
        import ray
        from ray import tune
    n = sizes(scale)

    def sleeper(config):
        time.sleep(SLEEP_S)
        tune.report({"score": config["i"]})

    def chatty(config):
        for step in range(config["reports"]):
            tune.report({"score": step})

    def once(config):
        tune.report({"score": config["i"]})

    if row == "overhead":
        trainable, space, expected = sleeper, {"i": tune.grid_search(list(range(n["overhead"])))}, n["overhead"]
    elif row == "results":
        trials, reports = n["results"]
        trainable = chatty
        space = {"i": tune.grid_search(list(range(trials))), "reports": reports}
        expected = trials * reports
    else:
        trainable, space, expected = once, {"i": tune.grid_search(list(range(n["trials"])))}, n["trials"]

    ray.init(num_cpus=CPUS)
    storage = tempfile.mkdtemp(prefix=f"tune-bench-{system}-")
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=row, storage_path=storage),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    if row == "results":
        done = sum(r.metrics["training_iteration"] for r in grid)
    else:
        done = len(grid)
    if grid.num_errors or done != expected:
        raise SystemExit(f"{system} {row}: {grid.num_errors} errors, {done} of {expected} done")
    ray.shutdown()
    with open(out_path, "w") as f:
        json.dump({"wall_s": wall, "count": done}, f)


# ---- parent ---------------------------------------------------------------------------------------


def run_child(system: str, row: str, scale: float, log_dir: str, reuse_actors: bool = False) -> dict:
    out = os.path.join(log_dir, f"{system}-{row}.json")
    log = os.path.join(log_dir, f"{system}-{row}.log")
    env = dict(os.environ)
    if system == "ember":
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)
        env["RAY_DEDUP_LOGS"] = "0"
    cmd = [PYTHONS[system], os.path.abspath(__file__), "--child", system, "--row", row, "--scale", str(scale)]
    cmd += ["--out", out]
    if reuse_actors:
        cmd.append("--reuse-actors")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=log_dir)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{system} {row} failed (rc {proc.returncode}); log {log}:\n{tail}")
    with open(out) as f:
        return json.load(f)


def figure(row: str, result: dict, scale: float) -> float:
    n = sizes(scale)
    if row == "overhead":
        return result["wall_s"] - n["overhead"] * SLEEP_S / CPUS
    return result["count"] / result["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every row's trial counts (default 1.0)")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--systems", default="ember,ray")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--reuse-actors", action="store_true", help="TuneConfig(reuse_actors=True) on both sides")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.row, args.scale, args.out, args.reuse_actors)
        return
    rows = [r for r in args.rows.split(",") if r]
    systems = [s for s in args.systems.split(",") if s]
    for value, known, what in ((rows, ROWS, "row"), (systems, PYTHONS, "system")):
        unknown = set(value) - set(known)
        if unknown:
            raise SystemExit(f"unknown {what}(s): {sorted(unknown)}; choose from {sorted(known)}")
    n = sizes(args.scale)
    log_dir = tempfile.mkdtemp(prefix="tune-bench-")
    load = os.getloadavg()[0]
    print(f"scale {args.scale:g}: {n}; reuse_actors={args.reuse_actors}; load average {load:.1f}; logs under {log_dir}")
    figures: dict = {}
    for row in rows:
        # Alternate which system goes first per row so drift in the machine's load hits both.
        order = systems if rows.index(row) % 2 == 0 else list(reversed(systems))
        for system in order:
            result = run_child(system, row, args.scale, log_dir, args.reuse_actors)
            figures.setdefault(row, {})[system] = {**result, "figure": figure(row, result, args.scale)}
            wall, value = result["wall_s"], figures[row][system]["figure"]
            print(f"  {row:9s} {system:6s} wall {wall:7.2f} s  figure {value:9.1f}", flush=True)
    floor = n["overhead"] * SLEEP_S / CPUS
    units = {"overhead": f"s over the {floor:g} s floor", "results": "results/s", "trials": "trials/s"}
    print("\n| row | ember | ray | ember/ray | target |\n|---|---|---|---|---|")
    for row in rows:
        ember_fig = figures[row].get("ember", {}).get("figure")
        ray_fig = figures[row].get("ray", {}).get("figure")
        ratio = f"{ember_fig / ray_fig:.2f}x" if ember_fig is not None and ray_fig else "-"
        extra = f" ({100 * ember_fig / floor:.1f}% of floor)" if row == "overhead" and ember_fig is not None else ""
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"| {row} ({units[row]}) | {fmt(ember_fig)}{extra} | {fmt(ray_fig)} | {ratio} | {TARGETS[row]} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scale": args.scale, "reuse_actors": args.reuse_actors, "figures": figures}, f, indent=1)


if __name__ == "__main__":
    main()
