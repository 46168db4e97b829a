"""ember.train's TorchTrainer against Ray Train 2.60 and plain torch DDP, in one run.

The same small MLP on the same synthetic data (generated from a fixed seed in every worker), 2
workers on CPU, gloo, one torch thread per worker, a DistributedSampler over the data:

- ember: ``ember.train.torch.TorchTrainer`` (prepare_model, prepare_data_loader, report)
- ray: ``ray.train.torch.TorchTrainer`` from Ray 2.60 in its own virtual environment
- ddp: ``torch.multiprocessing.spawn`` of 2 processes joined with ``init_process_group("gloo")``

Each system runs in its own subprocess, one after the other, ``--rounds`` times interleaved (the
machine is shared: interleaving spreads a colleague's burst over all systems); the figures are the
medians over rounds. Measured per run:

- epoch: seconds per epoch after the first (rank 0's time between the ends of successive epochs,
  so a report's cost counts), median over the epochs;
- epoch CPU: rank 0's process CPU seconds per epoch after the first (all its threads: the loop,
  gloo's, and the runtime's), median over the epochs. Other users' load moves it less than the
  wall time, which on a shared 2-core machine mostly measures the share of the cores a system got
  (contention still inflates CPU time somewhat);
- first report: wall seconds from calling ``fit()`` (for ddp: ``spawn``) to rank 0 finishing its
  first training step and reporting it; the cluster is already up (``init`` is timed apart);
- peak memory: the largest sum of the RSS of every process of that system (the driver and all its
  descendants: head and node manager or GCS and raylet, and the workers), sampled every 50 ms.

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/train.py
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/train.py --systems ember,ddp --rounds 1 --epochs 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SYSTEMS = ("ember", "ray", "ddp")
WORKERS = 2
ROWS, FEATURES, HIDDEN, BATCH = 32768, 32, 256, 128


# ---- the training loop every system runs -----------------------------------------------------------


def make_model():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 1),
    )


def make_data():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=g)
    w = torch.randn(FEATURES, 1, generator=g)
    y = torch.sin(x @ w) + 0.1 * torch.randn(ROWS, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def common_loop(config, rank, report, wrap_model, wrap_loader):
    """One run of the benchmark's training: a report after the first step, then one per epoch."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = wrap_model(make_model())
    loader = wrap_loader(torch.utils.data.DataLoader(make_data(), batch_size=BATCH, shuffle=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ends, cpu, first = [], [], None
    for epoch in range(config["epochs"]):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total, steps = 0.0, 0
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
            if first is None:
                report({"step": 1, "loss": loss.item()})
                first = time.time()
        report({"epoch": epoch, "loss": total / steps})
        ends.append(time.time())
        cpu.append(time.process_time())
    if rank == 0:
        with open(config["out"], "w") as out:
            json.dump({"first_report": first, "epoch_ends": ends, "epoch_cpu": cpu}, out)


def framework_loop(config):
    """The loop for Ember's and Ray's TorchTrainer (each imports its own ``train``)."""
    if config["system"] == "ember":
        from ember import train
        from ember.train.torch import prepare_data_loader, prepare_model
    else:
        from ray import train
        from ray.train.torch import prepare_data_loader, prepare_model
    common_loop(config, train.get_context().get_world_rank(), train.report, prepare_model, prepare_data_loader)


def ddp_process(rank, port, config):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORKERS)

    def wrap_loader(loader):
        sampler = DistributedSampler(loader.dataset, num_replicas=WORKERS, rank=rank, shuffle=True)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)

    try:
        common_loop(config, rank, lambda metrics: None, DistributedDataParallel, wrap_loader)
    finally:
        dist.destroy_process_group()


# ---- one system, in its own process ------------------------------------------------------------------


def child(system: str, epochs: int) -> None:
    out = tempfile.mktemp(prefix=f"train-bench-{system}-", suffix=".json")
    storage = tempfile.mkdtemp(prefix=f"train-bench-{system}-")
    config = {"system": system, "epochs": epochs, "out": out}
    t0 = time.time()
    if system == "ember":
        import ember
        from ember import train
        from ember.train.torch import TorchTrainer

        ember.init(num_cpus=WORKERS)
        trainer_cls, scaling, run = TorchTrainer, train.ScalingConfig, train.RunConfig
    elif system == "ray":
        import ray
        from ray import train
        from ray.train.torch import TorchTrainer

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        trainer_cls, scaling, run = TorchTrainer, train.ScalingConfig, train.RunConfig
    init_s = time.time() - t0 if system != "ddp" else 0.0
    print("@@fit", flush=True)
    start = time.time()
    if system == "ddp":
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.spawn(ddp_process, args=(port, config), nprocs=WORKERS, join=True)
    else:
        result = trainer_cls(
            framework_loop,
            train_loop_config=config,
            scaling_config=scaling(num_workers=WORKERS),
            run_config=run(name="bench", storage_path=storage, **({"verbose": 0} if system == "ember" else {})),
        ).fit()
        if result.error is not None:
            raise RuntimeError(f"{system} fit failed: {result.error}")
    fit_s = time.time() - start
    with open(out) as f:
        seen = json.load(f)
    os.unlink(out)
    ends = seen["epoch_ends"]
    print(
        "@@result "
        + json.dumps(
            {
                "init_s": init_s,
                "fit_s": fit_s,
                "first_report_s": seen["first_report"] - start,
                "epoch_s": statistics.median(b - a for a, b in zip(ends, ends[1:])),
                "epochs_s": [b - a for a, b in zip(ends, ends[1:])],
                "epoch_cpu_s": statistics.median(b - a for a, b in zip(seen["epoch_cpu"], seen["epoch_cpu"][1:])),
            }
        ),
        flush=True,
    )


def tree_rss(proc) -> int:
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_system(system: str, python: str, epochs: int) -> dict:
    import psutil

    env = dict(os.environ)
    if system == "ray":
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, os.path.abspath(__file__), "--child", system, "--epochs", str(epochs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak, stop, result = [0], threading.Event(), {}

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for line in proc.stdout:
            if line.startswith("@@result "):
                result = json.loads(line.split(" ", 1)[1])
            elif not line.startswith("@@fit"):
                sys.stderr.write(line)
        proc.wait(timeout=300)
    finally:
        stop.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not result:
        return {"error": f"{system} exited with {proc.returncode}"}
    result["peak_rss"] = peak[0]
    return result


# ---- the table -----------------------------------------------------------------------------------------


def table(summary: dict) -> str:
    def fmt(system, key, scale=1.0, unit="s"):
        value = summary.get(system, {}).get(key)
        return "-" if value is None else f"{value / scale:.3g} {unit}"

    def ratio(key, against):
        a, b = summary.get("ember", {}).get(key), summary.get(against, {}).get(key)
        return "-" if a is None or not b or key == "init_s" and against == "ddp" else f"{a / b:.2f}"

    rows = [
        ("time per epoch (after the first)", "epoch_s", 1.0, "s", "ddp", "<= 1.03 of ddp"),
        ("worker CPU per epoch (rank 0)", "epoch_cpu_s", 1.0, "s", "ddp", ""),
        ("fit() to first reported step", "first_report_s", 1.0, "s", "ray", "<= 0.33 of Ray"),
        ("peak memory (RSS, all processes)", "peak_rss", 2**20, "MiB", "ray", "<= 0.5 of Ray"),
        ("cluster start (init; none for ddp)", "init_s", 1.0, "s", "ray", ""),
        ("whole fit()", "fit_s", 1.0, "s", "ray", ""),
    ]
    lines = [
        "| row | Ember | Ray Train 2.60 | plain DDP | Ember/Ray | Ember/DDP | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, key, scale, unit, against, target in rows:
        met = ""
        if target:
            r = ratio(key, against)
            if r != "-":
                limit = float(target.split()[1])
                met = " met" if float(r) <= limit else " MISSED"
        lines.append(
            f"| {label} | {fmt('ember', key, scale, unit)} | {fmt('ray', key, scale, unit)} | "
            f"{fmt('ddp', key, scale, unit)} | {ratio(key, 'ray')} | {ratio(key, 'ddp')} | {target}{met} |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every system, interleaved; medians are shown")
    p.add_argument("--ember-python", default=sys.executable, help="interpreter for Ember and plain DDP")
    p.add_argument(
        "--ray-python",
        default=os.environ.get("RAY_PYTHON", "/work/ray-venv/bin/python"),
        help="interpreter with Ray 2.60 and torch (env RAY_PYTHON)",
    )
    p.add_argument("--json", help="write every run's figures to this path")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not timed)")
    if args.child:
        child(args.child, args.epochs)
        return
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    runs: dict = {s: [] for s in systems}
    load = [os.getloadavg()[0]]
    for round_number in range(args.rounds):
        for system in systems:
            python = args.ray_python if system == "ray" else args.ember_python
            figures = run_system(system, python, args.epochs)
            load.append(os.getloadavg()[0])
            runs[system].append(figures)
            shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items() if k != "epochs_s"}
            print(f"round {round_number + 1} {system}: {shown}", file=sys.stderr, flush=True)
    summary = {}
    for system, results in runs.items():
        good = [r for r in results if "error" not in r]
        if good:
            summary[system] = {
                key: statistics.median(r[key] for r in good)
                for key in ("init_s", "fit_s", "first_report_s", "epoch_s", "epoch_cpu_s", "peak_rss")
            }
    print(table(summary))
    print(f"\n{args.rounds} round(s), {args.epochs} epochs, medians; load average {min(load):.1f} to {max(load):.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "summary": summary, "load": load}, f, indent=1)


if __name__ == "__main__":
    main()
