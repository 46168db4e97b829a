"""Where a Tune trial's turnover goes: timestamps along each trial's life in the overhead row's setup.

The overhead row of ``benchmarks/tune.py`` (trials that sleep 0.5 s and report once, 2 at a time,
``reuse_actors=False``) measures the total only. This runs the same experiment with the driver's
controller steps wrapped and the trainable noting its start, end and pid, then prints, per trial
slot turnover (one trial's result in the driver to the next trial's trainable running in the freed
slot), the median and 90th percentile of each step:

- to result: the trainable's report to the driver handling it; result: that handling,
- to end: from there to the driver handling the function's end (the state saved, the ``next``
  call that lets the function return); end: that handling (the actor's kill included),
- to launch: from there to the next trial's ``_launch``,
- launch: ``_launch`` itself (the actor's creation is sent, its start call submitted),
- to running: from ``_launch``'s end to the next trainable running in its actor,
- and the gap: the finished trainable's report to the next trainable running (what the row pays).

It also counts the pool workers forked while a new trial's actor was starting (the node's top-up:
a worker's log file is named after the time of its fork).

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/tune_turnover.py --trials 40
"""

import argparse
import glob
import os
import statistics
import tempfile
import time

SLEEP_S = 0.5
CPUS = 2


def _quantiles(values: list) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"median {1000 * statistics.median(values):6.1f} ms, p90 {1000 * p90:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    if args.trials < 4:
        raise SystemExit("--trials must be at least 4")

    import ember
    from ember import tune
    from ember.tune import tuner as tuner_module

    marks: dict = {}  # trial id -> {step: time}

    def note(trial_id, step):
        steps = marks.setdefault(trial_id, {})
        steps.setdefault(step, time.time())  # the first: a trial's result, then its function's end
        steps[f"last {step}"] = time.time()

    run = tuner_module._Run
    original_launch, original_handle = run._launch, run._handle

    def launch(self, trial):
        note(trial.trial_id, "launch")
        original_launch(self, trial)
        note(trial.trial_id, "launched")

    def handle(self, ref):
        trial_id = self.pending.get(ref)
        note(trial_id, "handle")
        original_handle(self, ref)
        note(trial_id, "handled")

    run._launch, run._handle = launch, handle

    def sleeper(config):
        began = time.time()
        time.sleep(SLEEP_S)
        log = os.readlink("/proc/self/fd/1")  # the worker's log, in the session's log directory
        tune.report({"began": began, "ended": time.time(), "pid": os.getpid(), "log": log})

    ember.init(num_cpus=CPUS)
    storage = tempfile.mkdtemp(prefix="tune-turnover-")
    tuner = tune.Tuner(
        sleeper,
        param_space={"i": tune.grid_search(list(range(args.trials)))},
        run_config=tune.RunConfig(name="turnover", storage_path=storage),
    )
    started = time.time()
    grid = tuner.fit()
    wall = time.time() - started
    if grid.num_errors:
        raise SystemExit(f"{grid.num_errors} trials failed")
    trials = sorted((r.metrics for r in grid), key=lambda m: m["began"])
    log_dir = os.path.dirname(trials[0]["log"])
    # A worker's log is named after its fork's time (ns); the session's logs outlive the cluster.
    logs = glob.glob(f"{log_dir}/worker-*.log")
    forks = sorted(int(os.path.basename(p)[len("worker-") : -len(".log")]) / 1e9 for p in logs)
    ember.shutdown()

    by_id = {trial_id: steps for trial_id, steps in marks.items() if trial_id is not None}
    ids = {r.metrics["trial_id"]: r.metrics for r in grid}
    ends = sorted((m["ended"], tid) for tid, m in ids.items())
    starts = sorted((m["began"], tid) for tid, m in ids.items())
    # The k-th trial to start after the first CPUS took the slot the (k - CPUS)-th trial to end freed.
    steps = {
        "to result": [],
        "result": [],
        "to end": [],
        "end": [],
        "to launch": [],
        "launch": [],
        "to running": [],
        "gap": [],
    }
    overlapping_forks = 0
    for (began, tid), (ended, done_id) in zip(starts[CPUS:], ends):
        done, new = by_id.get(done_id, {}), by_id.get(tid, {})
        if {"handle", "handled"} <= done.keys() and {"launch", "launched"} <= new.keys():
            steps["to result"].append(done["handle"] - ended)
            steps["result"].append(done["handled"] - done["handle"])
            steps["to end"].append(done["last handle"] - done["handled"])
            steps["end"].append(done["last handled"] - done["last handle"])
            steps["to launch"].append(new["launch"] - done["last handled"])
            steps["launch"].append(new["launched"] - new["launch"])
            steps["to running"].append(began - new["launched"])
            if any(new["launch"] <= f <= began for f in forks):
                overlapping_forks += 1
        steps["gap"].append(began - ended)
    if os.environ.get("TURNOVER_DETAIL"):
        for (began, tid), (ended, _) in zip(starts[CPUS:], ends):
            new = by_id.get(tid, {})
            near = [round(1000 * (f - ended)) for f in forks if ended - 0.5 <= f <= began]
            print(
                f"gap {1000 * (began - ended):6.1f} launch@{1000 * (new.get('launch', 0) - ended):6.1f}"
                f" launched@{1000 * (new.get('launched', 0) - ended):6.1f} forks@{near}"
            )
    busy = sum(m["ended"] - m["began"] for m in trials)
    print(f"{len(trials)} trials, fit() {wall:.2f} s; trainables ran {busy:.2f} s on {CPUS} slots")
    print(
        f"first trainable running {1000 * (trials[0]['began'] - started):.0f} ms after fit() began; fit() ended"
        f" {1000 * (started + wall - max(m['ended'] for m in trials)):.0f} ms after the last trainable"
    )
    print(f"overhead over the floor: {wall - len(trials) * SLEEP_S / CPUS:.2f} s")
    print(f"slot time not running a trainable, per trial: {1000 * (CPUS * wall - busy) / len(trials):.1f} ms")
    for name, values in steps.items():
        print(f"  {name:>10}: {_quantiles(values)}")
    print(f"  worker forks: {len(forks)}; turnovers with a fork between launch and running: {overlapping_forks}")


if __name__ == "__main__":
    main()
