"""ember.serve against Ray Serve 2.60, side by side in one run.

Each system runs in its own subprocess (Ember with this interpreter, Ray with ``--ray-python``), one
after the other, with the same deployments and the same load:

- noop HTTP latency: one client, one request at a time, p50/p99;
- noop HTTP throughput at saturation with 1 and with 2 replicas (``--connections`` clients);
- handle calls/s: the driver calls the 1-replica noop deployment by handle in batches, waiting for
  each batch: 5 in flight (the default max_ongoing_requests: none wait in the router) and 100
  (most wait in the router for a free slot);
- composition: an ingress deployment that awaits a second deployment by handle, over HTTP
  (p50 with one client, and throughput at saturation).

The HTTP load comes from a separate process on loopback: ``wrk`` when it is installed (Debian's
``wrk``), else an asyncio client of this file's own (``--client python``: a raw keep-alive HTTP/1.1
client, one coroutine per connection). Replicas ask for no CPU (``num_cpus=0``) in both systems, so
that a 2-core machine can hold two; every other option is each system's default.

Targets (issue 13): p50 at most half of Ray Serve's; every throughput row at least 2x Ray Serve's.

    .venv/bin/python benchmarks/serve.py [--seconds 5] [--connections 16] [--rounds 3] [--json PATH]
    .venv/bin/python benchmarks/serve.py --only ember      # Ember alone
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RAY_PYTHON = os.environ.get("RAY_PYTHON", "/work/ray-venv/bin/python")

# (row key, label, higher is better, the speed-up the issue asks for, if any)
ROWS = [
    ("http_p50_ms", "noop HTTP p50, 1 client (ms)", False, 2.0),
    ("http_p99_ms", "noop HTTP p99, 1 client (ms)", False, None),
    ("http_rps_1", "noop HTTP req/s, 1 replica", True, 2.0),
    ("http_rps_2", "noop HTTP req/s, 2 replicas", True, 2.0),
    ("handle_cps", "handle calls/s, 5 in flight", True, 2.0),
    ("handle_cps_queued", "handle calls/s, 100 in flight", True, 2.0),
    ("compose_p50_ms", "2-deployment HTTP p50 (ms)", False, 2.0),
    ("compose_rps", "2-deployment HTTP req/s", True, 2.0),
]


# --- the load --------------------------------------------------------------------------------------------
def _wrk_seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def load_wrk(url: str, connections: int, seconds: float) -> dict:
    """Requests/s and latency percentiles (ms) from wrk, with ``connections`` keep-alive clients."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        result[f"p{pct}_ms"] = _wrk_seconds(re.search(rf"\s{pct}%\s+(\S+)", out).group(1)) * 1e3
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return result


async def _python_load(host: str, port: int, path: str, connections: int, seconds: float) -> dict:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    latencies: list = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client():
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            errors += not head.startswith(b"HTTP/1.1 2")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(connections)])
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "errors": errors,
    }


def load(url: str, connections: int, seconds: float, client: str) -> dict:
    """Load ``url`` from a separate process (wrk, or this file in ``--loadgen`` mode)."""
    if client == "wrk":
        return load_wrk(url, connections, seconds)
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", url, "--connections", str(connections), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- one system, in its own process ----------------------------------------------------------------------
def worker(backend: str, args) -> dict:
    import logging

    if backend == "ray":
        import ray
        from ray import serve

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    else:
        sys.path.insert(0, ROOT)
        import ember as ray
        from ember import serve

        ray.init(num_cpus=2)
    logging.getLogger("ray.serve").setLevel(logging.ERROR)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/"

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Noop:
        async def __call__(self, request=None):
            return "ok"

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Ingress:
        def __init__(self, model):
            self.model = model

        async def __call__(self, request):
            return await self.model.remote()

    def measure(connections: int) -> dict:
        load(url, connections, 1.0, args.client)  # warm-up: connections, replicas' first calls
        return load(url, connections, args.seconds, args.client)

    results: dict = {}
    errors = 0
    handle = serve.run(Noop.bind(), name="bench", route_prefix="/")
    one = measure(1)
    results["http_p50_ms"], results["http_p99_ms"] = one["p50_ms"], one["p99_ms"]
    full = measure(args.connections)
    results["http_rps_1"] = full["rps"]
    errors += one["errors"] + full["errors"]

    handle.remote().result()
    for key, batch in (("handle_cps", 5), ("handle_cps_queued", 100)):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            for response in [handle.remote() for _ in range(batch)]:
                response.result()
            count += batch
        results[key] = count / (time.perf_counter() - started)

    serve.run(Noop.options(num_replicas=2).bind(), name="bench", route_prefix="/")
    full = measure(args.connections)
    results["http_rps_2"] = full["rps"]
    errors += full["errors"]
    serve.delete("bench")

    serve.run(Ingress.bind(Noop.bind()), name="compose", route_prefix="/")
    one = measure(1)
    full = measure(args.connections)
    results["compose_p50_ms"], results["compose_rps"] = one["p50_ms"], full["rps"]
    errors += one["errors"] + full["errors"]
    results["errors"] = errors
    serve.shutdown()
    ray.shutdown()
    return results


def run_backend(backend: str, args) -> dict:
    python = sys.executable if backend == "ember" else args.ray_python
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    env.pop("RAY_ADDRESS", None)
    if backend == "ember":
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [python, __file__, "--worker", backend, "--seconds", str(args.seconds)]
    command += ["--connections", str(args.connections), "--client", args.client]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError(f"the {backend} run failed (exit status {done.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def table(results: dict) -> str:
    ember, ray = results.get("ember", {}), results.get("ray", {})
    lines = [f"{'row':<32} {'ember':>10} {'ray serve':>10} {'ratio':>8}  target"]
    for key, label, higher, goal in ROWS:
        e, r = ember.get(key), ray.get(key)
        cells = [f"{v:>10.2f}" if v is not None and v < 100 else f"{v:>10,.0f}" if v else f"{'-':>10}" for v in (e, r)]
        if e and r:
            ratio = e / r if higher else r / e
            verdict = f"{'met' if ratio >= goal else 'NOT met'} (>= {goal:g}x)" if goal else ""
            lines.append(f"{label:<32} {cells[0]} {cells[1]} {ratio:>7.2f}x  {verdict}")
        else:
            lines.append(f"{label:<32} {cells[0]} {cells[1]}")
    lines.append("ratio: Ember's speed-up (Ray's time / Ember's time for latencies, Ember / Ray for rates)")
    for name, res in results.items():
        if res.get("errors"):
            lines.append(f"WARNING: {name} had {res['errors']} failed requests")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16, help="clients at saturation")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each system, alternating; medians shown")
    parser.add_argument("--only", choices=("ember", "ray"), help="run one system only")
    parser.add_argument("--ray-python", default=RAY_PYTHON)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        from urllib.parse import urlsplit

        parts = urlsplit(args.loadgen)
        out = asyncio.run(_python_load(parts.hostname, parts.port, parts.path or "/", args.connections, args.seconds))
        print(json.dumps(out))
        return
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return
    load_avg = os.getloadavg()[0]
    runs: dict = {}
    for round_ in range(args.rounds):
        # Alternating rounds, so that a colleague's burst of load falls on both systems alike.
        for backend in ("ember", "ray"):
            if args.only in (None, backend):
                print(f"round {round_ + 1}: running {backend} ...", flush=True)
                runs.setdefault(backend, []).append(run_backend(backend, args))
    results = {
        backend: {key: statistics.median(run[key] for run in done) for key in done[0]} for backend, done in runs.items()
    }
    print(
        f"load client: {args.client}, {args.connections} connections at saturation, {args.seconds:g} s a row, "
        f"median of {args.rounds} round(s); "
        f"load average {load_avg:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores"
    )
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "runs": runs, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
