"""Thread counts in workers: OMP_NUM_THREADS is 1 unless the user set it (as Ray does), and the BLAS a
forked worker inherits already loaded follows the worker's environment."""

import json
import os

import pytest
from conftest import run_driver

pytest.importorskip("threadpoolctl")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

PROBE = """
import json, os
import ember

ember.init(num_cpus=2, **INIT)

@ember.remote
def probe():
    from threadpoolctl import threadpool_info
    import pyarrow as pa
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return {"omp": os.environ.get("OMP_NUM_THREADS"), "blas": blas, "arrow": pa.cpu_count()}

seen = {"default": ember.get(probe.remote())}
seen["task_env"] = ember.get(probe.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "4"}}).remote())
print("@@" + json.dumps(seen))
ember.shutdown()
"""


def probe(init: str = "{}", **env) -> dict:
    """What a task sees in a fresh cluster started by a driver with ``env`` and ``init(**init)``."""
    # run_driver starts from os.environ: the variables under test come only from ``env``.
    saved = {name: os.environ.pop(name) for name in THREAD_VARIABLES if name in os.environ}
    try:
        out = run_driver(PROBE.replace("**INIT", f"**{init}"), env=env, timeout=90).stdout
    finally:
        os.environ.update(saved)
    line = next(line for line in out.splitlines() if line.startswith("@@"))
    return json.loads(line[2:])


def test_a_worker_defaults_to_one_thread_for_openmp_blas_and_arrow():
    seen = probe()
    assert seen["default"]["omp"] == "1"
    assert seen["default"]["blas"] and set(seen["default"]["blas"]) == {1}  # numpy's BLAS, loaded before the fork
    assert seen["default"]["arrow"] == 1
    # A task's own env_vars are in its environment while it runs.
    assert seen["task_env"]["omp"] == "4"


def test_the_users_value_from_the_driver_environment_wins():
    seen = probe(OMP_NUM_THREADS="3")
    assert seen["default"]["omp"] == "3"
    assert set(seen["default"]["blas"]) == {3}
    assert seen["default"]["arrow"] == 3


def test_the_users_value_from_runtime_env_wins_and_a_blas_variable_of_its_own():
    seen = probe('{"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "2"}}}')
    assert seen["default"]["omp"] == "2"
    assert set(seen["default"]["blas"]) == {2}
    seen = probe(OPENBLAS_NUM_THREADS="2")
    assert seen["default"]["omp"] == "1"
    assert set(seen["default"]["blas"]) == {2}


def test_an_exec_worker_gets_the_same_default():
    seen = probe(EMBER_WORKER_EXEC="1")
    assert seen["default"]["omp"] == "1"
    assert set(seen["default"]["blas"]) == {1}
