"""A real JupyterLab server for the browser tests, and what they share to drive it with headless
Chromium (Debian's, through Playwright): ``jupyter_lab(root, notebooks)`` writes the notebooks,
starts the server on a free port and, on the way out, stops its kernels (each stops the cluster it
started) and itself."""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import urllib.request

from conftest import wait_for

CHROMIUM = os.environ.get("EMBER_CHROMIUM", "/usr/bin/chromium")
ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = pathlib.Path(os.environ.get("EMBER_TEST_ARTIFACTS", ROOT / "test-artifacts"))


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


class Lab:
    """A running server: ``base`` URL, ``token``, ``root`` directory; ``api`` calls its REST API."""

    def __init__(self, base: str, token: str, root: pathlib.Path):
        self.base, self.token, self.root = base, token, root

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"null")

    def kernel_idle(self) -> bool:
        try:
            return any(kernel["execution_state"] == "idle" for kernel in self.api("/api/kernels"))
        except OSError:  # the server answers 500 while a kernel is half started
            return False

    def open_and_run_all(self, page, name: str) -> None:
        """Open notebook ``name`` in ``page`` and run all its cells from the menu, as a user would."""
        page.goto(f"{self.base}/lab/tree/{name}?token={self.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        wait_for(self.kernel_idle, timeout=60, message="the notebook's kernel to start")
        page.locator(".jp-Notebook").click()
        page.keyboard.press("Escape")
        page.get_by_text("Run", exact=True).first.click()
        page.get_by_text("Run All Cells", exact=True).click()


@contextlib.contextmanager
def jupyter_lab(root: pathlib.Path, notebooks: dict):
    """A JupyterLab server serving ``root``, where ``notebooks`` ({file name: [cell source]}) are."""
    for name, cells in notebooks.items():
        (root / name).write_text(json.dumps(notebook(cells)))
    port, token = free_port(), "ember-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / ".jupyter"), JUPYTER_RUNTIME_DIR=str(root / ".rt"))
    env.pop("EMBER_ADDRESS", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
    )  # fmt: skip
    lab = Lab(f"http://127.0.0.1:{port}", token, root)

    def up():
        try:
            return lab.api("/api/status") is not None
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, message="JupyterLab to start")
        yield lab
    finally:
        try:
            for kernel in lab.api("/api/kernels"):
                lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")  # the kernel stops its cluster
        except OSError:
            pass
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
