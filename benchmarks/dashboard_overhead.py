"""Does showing the dashboard slow the cluster? Task throughput in a real kernel, dashboard on vs off.

A Jupyter kernel (ipykernel, started with jupyter_client) loads the extension and runs the
microbenchmark's "single client tasks async" row (batches of 1,000 no-op tasks, then ``get``)
for ``--seconds`` per measurement, alternating:

- off: no widget alive and the event feed stopped (what a kernel without widgets pays);
- on:  ``%ember dashboard`` displayed: the feed thread applies every event and the five views
  re-render and send their models over IOPub up to ten times a second.

The order alternates (off, on, off, on, ...) so drift on a busy machine hits both sides; the
medians are compared. Target (notebook widgets v2): within 5%, on/off >= 0.95.

    .venv/bin/python benchmarks/dashboard_overhead.py [--seconds 3] [--rounds 5] [--json PATH]
"""

import argparse
import json
import os
import statistics
import sys
import time

from jupyter_client.manager import KernelManager

SETUP = """
%load_ext ember
import time, ember
from ember.widgets import events, Dashboard
from IPython.display import display

@ember.remote
def noop():
    return 0

def rate(seconds):
    ember.get([noop.remote() for _ in range(1000)])  # warm leases
    feed = events._feed
    busy = feed.cpu if feed else 0.0
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ember.get([noop.remote() for _ in range(1000)])
        count += 1000
    elapsed = time.perf_counter() - start
    share = ((feed.cpu - busy) / elapsed) if feed else 0.0  # the widgets' thread's CPU share
    return f"{count / elapsed} {share}"

dashboard = None

def set_dashboard(on):
    global dashboard
    if dashboard is not None:
        dashboard.close()
        dashboard = None
    events.stop_feed()
    if on:
        dashboard = Dashboard()
        display(dashboard)
"""


def run(client, code: str, timeout: float = 600) -> str:
    """Execute ``code``; return what it printed (stdout)."""
    out = []
    reply = client.execute_interactive(
        code,
        timeout=timeout,
        output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
    )
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="off/on pairs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    manager = KernelManager(kernel_name="python3")
    manager.kernel_spec.argv[0] = sys.executable
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    manager.start_kernel(env=env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        run(client, SETUP)
        results, shares = {"off": [], "on": []}, []
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                run(client, f"set_dashboard({mode == 'on'})")
                value, share = map(float, run(client, f"print(rate({args.seconds}))").split())
                results[mode].append(value)
                if mode == "on":
                    shares.append(share)
                print(f"  dashboard {mode:>3}: {value:,.0f} tasks/s, widget thread CPU {share:.1%}", flush=True)
        run(client, "set_dashboard(False)\n%unload_ext ember")
    finally:
        client.shutdown()
        deadline = time.monotonic() + 30
        while manager.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    ratio = on / off
    print(f"median without dashboard: {off:,.0f} tasks/s")
    print(f"median with dashboard:    {on:,.0f} tasks/s")
    print(f"ratio with/without: {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"widget thread CPU while the dashboard is shown: median {statistics.median(shares):.1%} of a core")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"off": results["off"], "on": results["on"], "ratio": ratio, "seconds": args.seconds}, f, indent=1
            )


if __name__ == "__main__":
    main()
