"""End to end in a real browser: JupyterLab serves a notebook that loads the extension and shows the
dashboard; headless Chromium (Debian's, driven by Playwright) runs it. Checks that the widgets render
with live numbers and that a line printed late by a task lands under the cell that submitted it.
The screenshot is kept in test-artifacts/ (or $EMBER_TEST_ARTIFACTS).
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import urllib.request

import pytest
from conftest import wait_for

CHROMIUM = os.environ.get("EMBER_CHROMIUM", "/usr/bin/chromium")
ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = pathlib.Path(os.environ.get("EMBER_TEST_ARTIFACTS", ROOT / "test-artifacts"))

playwright_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

CELLS = [
    "%load_ext ember",
    "import ember, pathlib\n"
    # Its own resource shape: the owner pipelines tasks of one shape onto a worker, and a square
    # queued behind this waiting task would wait with it.
    "@ember.remote(num_cpus=0.5)\n"
    "def late(path):\n"
    "    import os, time\n"
    "    while not os.path.exists(path):\n"
    "        time.sleep(0.01)\n"
    "    print('late line for the first cell')\n"
    "late_ref = late.remote('signal')\n"
    "tag_a = ember.runtime.task_context.output_tag.get()",
    "@ember.remote\n"
    "def square(x):\n"
    "    return x * x\n"
    "ember.get([square.remote(i) for i in range(20)])\n"
    "%ember dashboard",
    "from ember.kernel_ext.extension import _extensions\n"
    "pathlib.Path('signal').touch()\n"
    "ember.get(late_ref)\n"
    "print('delivered:', next(iter(_extensions.values())).router.wait_delivered(tag_a, 1, 60))",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def notebook(cells: list) -> dict:
    return {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None} for c in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port serving tmp_path; stops its kernels and itself afterwards."""
    (tmp_path / "dashboard.ipynb").write_text(json.dumps(notebook(CELLS)))
    port, token = free_port(), "ember-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / ".jupyter"), JUPYTER_RUNTIME_DIR=str(tmp_path / ".rt"))
    env.pop("EMBER_ADDRESS", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def api(path, method="GET"):
        request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"null")

    def up():
        try:
            return api("/api/status") is not None
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, message="JupyterLab to start")
        yield base, token, api
    finally:
        try:
            for kernel in api("/api/kernels"):
                api(f"/api/kernels/{kernel['id']}", method="DELETE")  # the kernel stops its cluster
        except OSError:
            pass
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def kernel_idle(api) -> bool:
    try:
        return any(kernel["execution_state"] == "idle" for kernel in api("/api/kernels"))
    except OSError:  # the server answers 500 while a kernel is half started
        return False


def test_dashboard_renders_live_in_jupyterlab(lab):
    base, token, api = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{base}/lab/tree/dashboard.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            wait_for(lambda: kernel_idle(api), timeout=60, message="the notebook's kernel to start")
            page.locator(".jp-Notebook").click()
            page.keyboard.press("Escape")
            page.get_by_text("Run", exact=True).first.click()
            page.get_by_text("Run All Cells", exact=True).click()

            # The dashboard's cluster tab renders, with the node and its live numbers.
            page.wait_for_selector(".ember-cluster .ember-node", timeout=60_000)
            finished = page.locator(".ember-cluster .ember-count-finished").last
            wait_for(
                lambda: int(finished.inner_text() or 0) >= 20,
                timeout=30,
                message="the dashboard to show 20 finished tasks",
            )
            assert re.fullmatch(r"[\d.]+ / 2 CPU", page.locator(".ember-cpu-text").last.inner_text())
            assert int(page.locator(".ember-node-count").last.inner_text()) == 1

            # The task graph tab draws the tasks.
            page.get_by_role("tab", name="Task graph").click()
            page.wait_for_selector(".ember-task-graph circle, .ember-task-graph .ember-group", timeout=30_000)

            # The late line went to the first code cell's output area, not to the cell running then.
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            wait_for(lambda: "delivered: True" in cells.nth(3).inner_text(), timeout=60)
            wait_for(lambda: "late line for the first cell" in cells.nth(1).inner_text(), timeout=30)
            assert "late line for the first cell" not in cells.nth(3).inner_text()

            page.get_by_role("tab", name="Cluster").click()
        finally:
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)  # kept, pass or fail
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
