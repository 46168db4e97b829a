"""Time to a first result from a newly started worker: a plain one against one for a cached pip env.

Each round gives the task a fresh ``env_vars`` value, so its env has a new key and a new worker must
start; the pip part (the venv) is set up once before timing and reused. Needs the package registry.
Run: ``python benchmarks/runtime_env_start.py``. The pip env's worker is forked from the node (its venv
provides nothing the node imported; see ember/runtime/node/venv_fork.py); with ``EMBER_WORKER_EXEC=1``
every worker, plain or pip, execs a fresh interpreter.
"""

import os
import statistics
import time

import ember

REQUIREMENT = "termcolor==2.4.0"


@ember.remote
def pid():
    return os.getpid()


def start_time(options: dict, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        env = dict(options, env_vars={"ROUND": str(time.time_ns())})
        began = time.perf_counter()
        ember.get(pid.options(runtime_env=env).remote())
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    ember.init(num_cpus=2)
    ember.get(pid.options(runtime_env={"pip": [REQUIREMENT]}).remote(), timeout=600)  # the venv, made once
    plain = start_time({})
    pip = start_time({"pip": [REQUIREMENT]})
    print(
        f"new plain worker: {plain * 1000:.0f} ms; new worker for a cached pip env: {pip * 1000:.0f} ms; "
        f"ratio {pip / plain:.1f}"
    )
    ember.shutdown()


if __name__ == "__main__":
    main()
