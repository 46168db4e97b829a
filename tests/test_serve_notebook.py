"""Serve in a real Jupyter kernel: what a notebook user gets when they interrupt a cell."""

import time

import pytest
from conftest import wait_for

pytest.importorskip("ipykernel")
pytest.importorskip("starlette")

SETUP = """
import os, ember
from ember import serve
ember.init(num_cpus=2)
serve.start(http_options={{"port": 0}})

@serve.deployment(ray_actor_options={{"num_cpus": 0}})
class Model:
    def __init__(self, started, gate):
        open(started, "w").close()
        while gate and not os.path.exists(gate):
            time.sleep(0.01)

    def __call__(self, x=1):
        return x * 2

import time
STARTED, GATE = {started!r}, {gate!r}
"""


def _interrupt_when(kernel, code: str, ready) -> dict:
    """Run ``code`` in a cell, interrupt the kernel once ``ready()`` holds; the cell's reply content."""
    msg_id = kernel.client.execute(code)
    wait_for(ready, timeout=60, message="the cell to get going")
    time.sleep(0.2)  # let the cell settle into its wait
    kernel.manager.interrupt_kernel()
    with kernel.changed:
        assert kernel.changed.wait_for(lambda: msg_id in kernel.idle, 60), "the cell never finished"
    reply = kernel.client.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.client.get_shell_msg(timeout=30)
    return reply["content"]


def test_interrupting_serve_run_in_a_notebook(tmp_path):
    from kernel_session import KernelSession

    started, gate = tmp_path / "started", tmp_path / "gate"
    kernel = KernelSession(cwd=str(tmp_path))
    try:
        kernel.execute(SETUP.format(started=str(started), gate=str(gate)), timeout=120)

        # Interrupted while the app deploys: the cell stops with KeyboardInterrupt, the kernel and the
        # deploy carry on, and the app is usable once its replica is up.
        reply = _interrupt_when(kernel, "handle = serve.run(Model.bind(STARTED, GATE), name='nb')", started.exists)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        gate.touch()
        cell = kernel.execute(
            "import time\n"
            "deadline = time.monotonic() + 60\n"
            "while serve.status().applications['nb'].status != 'RUNNING' and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "serve.get_app_handle('nb').remote(21).result(timeout_s=30)"
        )
        assert cell.result()["text/plain"] == "42"

        # blocking=True: the cell serves until interrupted; then Serve shuts down and the cell shows
        # the interrupt (as Ray's does), rather than returning a handle to an application now gone.
        started.unlink()
        reply = _interrupt_when(
            kernel,
            "serve.run(Model.bind(STARTED, None), name='blocking', route_prefix='/b', blocking=True)",
            started.exists,
        )
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        cell = kernel.execute("print(sorted(serve.status().applications))")
        assert cell.stdout().strip() == "[]"
        kernel.execute("ember.shutdown()")
    finally:
        kernel.shutdown()
