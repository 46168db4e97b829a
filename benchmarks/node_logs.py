"""What reading a node's logs costs: list_logs, get_log of a file's last lines and of a whole file of
a few MiB (read in the node's 1 MiB answers), and the dashboard's /api/logs, which asks every node.

    PYTHONPATH=. python benchmarks/node_logs.py [--mib 4] [--rounds 20]
"""

import argparse
import os
import statistics
import time

import httpx

import ember
from ember.util.state import get_log, list_logs


@ember.remote
def talk(mib: int) -> int:
    line = "x" * 1023
    for _ in range(mib * 1024):
        print(line)
    return os.getpid()


def timed(fn, rounds: int) -> float:
    """Median milliseconds of ``fn()`` over ``rounds`` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    context = ember.init(num_cpus=2, dashboard_port=0, log_to_driver=False)
    node = ember.get_runtime_context().get_node_id()
    pid = ember.get(talk.remote(args.mib))
    files = sum(len(names) for names in list_logs(node_id=node).values())
    print(f"{files} log files on the node; the worker's holds {args.mib} MiB")
    print(f"list_logs                     {timed(lambda: list_logs(node_id=node), args.rounds):8.2f} ms")
    tail = timed(lambda: "".join(get_log(node_id=node, pid=pid, tail=100)), args.rounds)
    print(f"get_log(tail=100)             {tail:8.2f} ms")
    whole = timed(lambda: "".join(get_log(node_id=node, pid=pid)), args.rounds)
    print(f"get_log(whole, {args.mib} MiB)         {whole:8.2f} ms  ({args.mib / whole * 1000:.0f} MiB/s)")
    url = context.dashboard_url
    api = timed(lambda: httpx.get(f"{url}/api/logs", timeout=30).raise_for_status(), args.rounds)
    print(f"dashboard /api/logs           {api:8.2f} ms")
    ember.shutdown()


if __name__ == "__main__":
    main()
