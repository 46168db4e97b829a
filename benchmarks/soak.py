"""Soak: does a long-running cluster stay the same size?

Runs, on a cluster of its own: a batch of tasks (some with ``max_calls=1``, each of which retires its
worker), many actors created and killed, many placement groups created and removed, then the same
batch of tasks again. After each phase it prints the resident memory and open file descriptors of
the cluster process (head and node manager) and of this driver, and the sizes of their tables.

    python benchmarks/soak.py                          # 100k tasks, 2k actors, 2k placement groups
    python benchmarks/soak.py --tasks 20000 --actors 300 --groups 300 --json

A warm-up runs a little of everything first and, unless ``--short-warm-up``, churns as many actors
and placement groups as the head remembers ended ones (its caps, ember/runtime/bounded.py): a
table filling up to its cap is the cluster reaching its steady size, not growth (past the cap it
stays that size). Figures after the last batch are compared with
those after the first batch (``growth``), and so are the two batches' rates (``rate_ratio``). ``--json`` prints one JSON
object at the end (tests/test_soak.py reads it).
"""

import argparse
import gc
import json
import os
import sys
import time

import psutil

import ember as ray
from ember import api
from ember.runtime import protocol
from ember.runtime.bounded import DESTROYED_ACTORS, REMOVED_PLACEMENT_GROUPS, cap_from_env
from ember.runtime.client.core_client import current_client
from ember.util.placement_group import placement_group, remove_placement_group

CHUNK = 2000  # tasks in flight at once
WAVE = 25  # actors (or placement groups) alive at once


@ray.remote
def noop(i):
    return i


@ray.remote(max_calls=1)
def once(i):
    return i


@ray.remote(num_cpus=0)
class Holder:
    def __init__(self, payload):
        self.size = len(payload)

    def size_of(self):
        return self.size


def process_figures(pid: int) -> dict:
    process = psutil.Process(pid)
    return {"rss_mb": round(process.memory_info().rss / 2**20, 1), "fds": process.num_fds()}


def table_sizes() -> dict:
    client = current_client()
    head = client.request("head", {"op": protocol.TABLE_SIZES})[0].sizes
    node = client.request("node_manager", {"op": protocol.TABLE_SIZES})[0].sizes
    submitter = client.submitter
    driver = {
        "waiting": len(client._waiting),
        "peers": len(client.peers.sockets),
        "objects": len(client.objects.entries),
        "shapes": len(submitter.shapes),
        "leases": len(submitter.leases),
        "specs": len(submitter.specs),
        "actors": len(submitter.actors),
        "lineage": len(submitter.lineage),
        "dep_waiters": len(submitter.dep_waiters),
    }
    return {
        "head": head,
        "node_manager": node,
        "driver": driver,
    }


def run_tasks(count: int, retiring: int) -> float:
    """``count`` small tasks in chunks, plus ``retiring`` max_calls=1 tasks; returns the plain tasks' rate."""
    start = time.perf_counter()
    done = 0
    while done < count:
        n = min(CHUNK, count - done)
        assert ray.get([noop.remote(i) for i in range(n)]) == list(range(n))
        done += n
    elapsed = time.perf_counter() - start
    for first in range(0, retiring, WAVE):
        ids = range(first, min(retiring, first + WAVE))
        assert ray.get([once.remote(i) for i in ids]) == list(ids)
    return count / elapsed


def churn_actors(count: int) -> None:
    payload = b"x" * 10_000  # constructor arguments the head must not keep once the actor is dead
    for first in range(0, count, WAVE):
        wave = range(first, min(count, first + WAVE))
        handles = [
            Holder.options(name=f"soak-{i}").remote(payload) if i % 2 else Holder.remote(payload) for i in wave
        ]
        assert ray.get([h.size_of.remote() for h in handles]) == [len(payload)] * len(handles)
        for handle in handles:
            ray.kill(handle)
        del handles


def churn_groups(count: int) -> None:
    for first in range(0, count, WAVE):
        groups = [placement_group([{"CPU": 0.01}]) for _ in range(first, min(count, first + WAVE))]
        ray.get([group.ready() for group in groups])
        # One task per wave runs inside a group: a resource shape of its own at the owner.
        ray.get(noop.options(placement_group=groups[0], num_cpus=0.01).remote(0))
        for group in groups:
            remove_placement_group(group)


def warm_up(tasks: int, retiring: int, fill_caps: bool) -> None:
    """A little of everything, so that code paths met for the first time do not count as growth; with
    ``fill_caps``, enough actors and groups that the head's tables of ended ones are full."""
    run_tasks(tasks, retiring)
    churn_actors(cap_from_env(DESTROYED_ACTORS) if fill_caps else WAVE)
    churn_groups(cap_from_env(REMOVED_PLACEMENT_GROUPS) if fill_caps else WAVE)


def snapshot(phase: str, seconds: float, rate: float | None = None) -> dict:
    gc.collect()
    figures = {
        "phase": phase,
        "seconds": round(seconds, 1),
        "cluster": process_figures(api._cluster_process.pid),
        "driver": process_figures(os.getpid()),
        "tables": table_sizes(),
    }
    if rate is not None:
        figures["rate"] = round(rate)
    return figures


def growth(before: dict, after: dict) -> dict:
    return {
        who: {key: round(after[who][key] / before[who][key] - 1, 3) for key in ("rss_mb", "fds")}
        for who in ("cluster", "driver")
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--actors", type=int, default=2000)
    parser.add_argument("--groups", type=int, default=2000)
    parser.add_argument("--retiring", type=int, default=None, help="max_calls=1 tasks per batch (tasks/1000)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument(
        "--short-warm-up", action="store_true", help="warm up without filling the head's caps of ended actors/groups"
    )
    args = parser.parse_args(argv)
    retiring = max(20, args.tasks // 1000) if args.retiring is None else args.retiring

    ray.init(num_cpus=args.num_cpus)
    phases = []

    def phase(name, fn, *fn_args):
        start = time.perf_counter()
        rate = fn(*fn_args)
        phases.append(snapshot(name, time.perf_counter() - start, rate))
        if not args.json:
            p = phases[-1]
            print(
                f"{name:>10}: {p['seconds']:7.1f} s  cluster {p['cluster']['rss_mb']:7.1f} MB "
                f"{p['cluster']['fds']:4d} fds  driver {p['driver']['rss_mb']:7.1f} MB {p['driver']['fds']:4d} fds"
                + (f"  {p['rate']} tasks/s" if "rate" in p else ""),
                flush=True,
            )
            print(f"{'':>12}tables: {json.dumps(p['tables'], sort_keys=True)}", flush=True)

    try:
        phases.append(snapshot("start", 0.0))
        phase("warm-up", warm_up, args.tasks // 10, retiring, not args.short_warm_up)
        phase("batch1", run_tasks, args.tasks, retiring)
        phase("actors", churn_actors, args.actors)
        phase("groups", churn_groups, args.groups)
        phase("batch2", run_tasks, args.tasks, retiring)
    finally:
        ray.shutdown()
    first, last = phases[2], phases[-1]
    result = {
        "tasks": args.tasks,
        "actors": args.actors,
        "groups": args.groups,
        "retiring": retiring,
        "caps_filled_in_warm_up": not args.short_warm_up,
        "phases": phases,
        "growth": growth(first, last),
        "rate_ratio": round(last["rate"] / first["rate"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"growth after warm-up (batch1 -> batch2): {json.dumps(result['growth'])}")
        print(f"batch2 rate / batch1 rate: {result['rate_ratio']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
