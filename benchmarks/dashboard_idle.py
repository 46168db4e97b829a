"""The dashboard's idle cost: CPU of the head's process and the dashboard's process over a quiet
window, and the memory the dashboard process adds (RSS and USS).

    PYTHONPATH=. python benchmarks/dashboard_idle.py [--seconds 30]
"""

import argparse
import time

import psutil

import ember
from ember import api


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    context = ember.init(num_cpus=2, dashboard_port=0)
    head = psutil.Process(api._cluster_process.pid)
    board = next(p for p in head.children() if "ember.dashboard.server" in " ".join(p.cmdline()))
    time.sleep(3)  # past start-up
    before = {p.pid: sum(p.cpu_times()[:2]) for p in (head, board)}
    time.sleep(args.seconds)
    for name, process in (("head+node manager", head), ("dashboard", board)):
        cpu = (sum(process.cpu_times()[:2]) - before[process.pid]) / args.seconds * 100
        memory = process.memory_full_info()
        print(
            f"{name:<18} idle CPU {cpu:.2f}% of a core   RSS {memory.rss / 2**20:.1f} MiB   USS {memory.uss / 2**20:.1f} MiB"
        )
    print(f"dashboard at {context.dashboard_url}")
    ember.shutdown()


if __name__ == "__main__":
    main()
