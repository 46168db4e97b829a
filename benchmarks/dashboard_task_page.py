"""Does a browser on the dashboard's tasks page slow the cluster? Task throughput with and without.

One local cluster (``ember.init``, its dashboard on a free port). The driver runs batches of 1,000
no-op tasks, then ``get``s them, for ``--seconds`` per measurement, alternating:

- off: no browser open (the dashboard process takes the head's summaries only);
- on:  headless Chromium (Playwright) on ``/tasks``, measured from two seconds after its first view:
  the page fetches its view every second; the dashboard process asks the head for its activity
  answer (the task stream's time slots, the workers, the recent tasks) and renders the stream, the
  per-function table and the task graph.

The order alternates (off, on, off, on, ...) so drift on a shared machine hits both sides; the
medians are compared. Target (issue 15): on/off >= 0.95. Also printed: the dashboard process's CPU
share in each mode, Chromium's with the page open, and the machine's load average before and after
(other people's work counts).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/dashboard_task_page.py [--seconds 4] [--rounds 5] [--json PATH]
"""

import argparse
import json
import os
import statistics
import time

import psutil

import ember

CHROMIUM = os.environ.get("EMBER_CHROMIUM", "/usr/bin/chromium")
SETTLE_S = 2.0  # seconds between the page's first view and the measurement (two refreshes)


@ember.remote
def noop():
    return 0


def rate(seconds: float) -> float:
    ember.get([noop.remote() for _ in range(1000)])  # warm leases
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ember.get([noop.remote() for _ in range(1000)])
        count += 1000
    return count / (time.perf_counter() - start)


def dashboard_process() -> psutil.Process:
    for process in psutil.Process().children(recursive=True):
        try:
            if "ember.dashboard.server" in " ".join(process.cmdline()):
                return process
        except psutil.Error:
            continue
    raise RuntimeError("no dashboard process among this driver's children")


def browser_processes() -> list:
    """Chromium's processes (the browser, its renderers and GPU process), among this driver's children."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "chrom" in process.name().lower():
                found.append(process)
        except psutil.Error:
            continue
    return found


def cpu_seconds(processes: list) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def measure(seconds: float, dashboard: psutil.Process) -> tuple[float, float, float]:
    """Tasks/s, and the dashboard's and Chromium's CPU over the run (shares of a core)."""
    browser = browser_processes()
    before, before_browser = cpu_seconds([dashboard]), cpu_seconds(browser)
    wall = time.perf_counter()
    tasks_per_s = rate(seconds)
    wall = time.perf_counter() - wall
    return tasks_per_s, (cpu_seconds([dashboard]) - before) / wall, (cpu_seconds(browser) - before_browser) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")

    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()
    context = ember.init(num_cpus=args.num_cpus, dashboard_port=0)
    url = context.dashboard_url
    dashboard = dashboard_process()
    results = {"off": [], "on": [], "dashboard_cpu_off": [], "dashboard_cpu_on": [], "browser_cpu_on": []}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                rate(1.0)  # warm the workers
                for round_ in range(args.rounds):
                    for mode in ("off", "on"):
                        page = None
                        if mode == "on":
                            page = browser.new_page()
                            page.goto(f"{url}/tasks")
                            page.wait_for_selector(".ember-tasks", timeout=30_000)
                            # A page being open is what is measured, not its opening: a new tab starts a
                            # renderer process and compiles the page (a few hundred ms of CPU at once).
                            time.sleep(SETTLE_S)
                        tasks_per_s, share, browser_share = measure(args.seconds, dashboard)
                        if page is not None:
                            page.close()
                            time.sleep(1)  # the closed page's last fetch and Chromium's clean-up
                            results["browser_cpu_on"].append(browser_share)
                        results[mode].append(tasks_per_s)
                        results[f"dashboard_cpu_{mode}"].append(share)
                        print(
                            f"round {round_ + 1} {mode:>3}: {tasks_per_s:8.0f} tasks/s, dashboard {share:.1%} of a core"
                            + (f", Chromium {browser_share:.1%}" if page is not None else "")
                        )
            finally:
                browser.close()
    finally:
        ember.shutdown()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    summary = {
        "off_tasks_per_s": off,
        "on_tasks_per_s": on,
        "ratio": on / off,
        "dashboard_cpu_off": statistics.median(results["dashboard_cpu_off"]),
        "dashboard_cpu_on": statistics.median(results["dashboard_cpu_on"]),
        "browser_cpu_on": statistics.median(results["browser_cpu_on"]),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "rounds": results,
    }
    print(
        f"median off {off:.0f} tasks/s, on {on:.0f} tasks/s: on/off = {on / off:.3f} (target >= 0.95); "
        f"dashboard CPU off {summary['dashboard_cpu_off']:.1%}, on {summary['dashboard_cpu_on']:.1%} of a core; "
        f"Chromium on {summary['browser_cpu_on']:.1%}; "
        f"load average {load_before[0]:.2f} before, {summary['load_after'][0]:.2f} after, {os.cpu_count()} CPUs"
    )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)


if __name__ == "__main__":
    main()
