"""The dashboard through JupyterLab: with jupyter-server-proxy, a browser that reaches only JupyterLab
opens the dashboard at /proxy/PORT/ (its pages use relative links), and the notebook's widgets link
there when told to (EMBER_DASHBOARD_LINK) or when running under JupyterHub."""

import os
import re
from urllib.parse import urlsplit

import pytest
from conftest import wait_for
from jupyter_lab import ARTIFACTS, CHROMIUM, jupyter_lab

import ember
from ember.dashboard import link


def test_link_follows_the_template_or_jupyterhub(monkeypatch):
    url = "http://127.0.0.1:8265"
    monkeypatch.delenv("EMBER_DASHBOARD_LINK", raising=False)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    assert link(url) == url and link(None) is None
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert link(url) == "/user/ada/proxy/8265/"
    monkeypatch.setenv("EMBER_DASHBOARD_LINK", "/proxy/{port}/")
    assert link(url) == "/proxy/8265/"
    monkeypatch.setenv("EMBER_DASHBOARD_LINK", "/proxy/{nonsense}/")
    assert link(url) == url  # a template that does not fit: the plain address, and a warning


def test_dashboard_pages_work_through_jupyterlabs_proxy(cluster, tmp_path):
    pytest.importorskip("jupyter_server_proxy")
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    port = urlsplit(cluster.dashboard_url).port

    @ember.remote
    def _one():
        return 1

    ember.get([_one.remote() for _ in range(5)])
    with jupyter_lab(tmp_path, {}) as lab:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{lab.base}/proxy/{port}/nodes?token={lab.token}")
                page.wait_for_selector(".ember-node", timeout=60_000)  # the view came through the proxy
                assert re.search(r"\d+ / 4 CPU", page.locator(".ember-cpu-text").first.inner_text())
                page.get_by_role("link", name="Tasks").click()  # a relative link stays under the prefix
                page.wait_for_selector(".ember-count-finished", timeout=30_000)
                assert page.url.startswith(f"{lab.base}/proxy/{port}/tasks")
                wait_for(lambda: "updated" in page.locator("#ember-updated").inner_text(), timeout=30)
                page.screenshot(path=str(ARTIFACTS / "dashboard_through_jupyterlab.png"))
            finally:
                browser.close()
