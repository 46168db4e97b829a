"""End to end in a real browser: JupyterLab serves a notebook that loads the extension and shows the
dashboard; headless Chromium (Debian's, driven by Playwright) runs it. Checks that the widgets render
with live numbers and that a line printed late by a task lands under the cell that submitted it.
The screenshot is kept in test-artifacts/ (or $EMBER_TEST_ARTIFACTS).
"""

import os
import re

import pytest
from conftest import wait_for
from jupyter_lab import ARTIFACTS, CHROMIUM, jupyter_lab

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


@pytest.fixture
def lab(tmp_path):
    with jupyter_lab(tmp_path, {"dashboard.ipynb": CELLS}) as lab:
        yield lab


def test_dashboard_renders_live_in_jupyterlab(lab):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            lab.open_and_run_all(page, "dashboard.ipynb")

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

            page.get_by_role("tab", name="Task graph").click()
            # The task graph tab draws the tasks: a bokeh canvas of a real size (not a hidden tab's zero).
            canvas = page.wait_for_selector(".ember-task-graph canvas", timeout=30_000)
            wait_for(lambda: (canvas.bounding_box() or {}).get("width", 0) > 200, timeout=30, message="the canvas")
            page.wait_for_timeout(500)  # bokeh paints on the next animation frame
            page.locator(".ember-task-graph").last.screenshot(path=str(ARTIFACTS / "task_graph.png"))

            # The late line went to the first code cell's output area, not to the cell running then.
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            wait_for(lambda: "delivered: True" in cells.nth(3).inner_text(), timeout=60)
            wait_for(lambda: "late line for the first cell" in cells.nth(1).inner_text(), timeout=30)
            assert "late line for the first cell" not in cells.nth(3).inner_text()

            # A reloaded page gets the live widgets back from the kernel, and BokehJS with them: the
            # task graph draws again instead of jupyter_bokeh's error box.
            page.keyboard.press("Control+s")
            wait_for(lambda: "dirty" not in (page.locator(".jp-mod-current").first.get_attribute("class") or ""),
                     timeout=30, message="the notebook to be saved")  # fmt: skip
            page.reload()
            page.wait_for_selector(".ember-cluster .ember-node", timeout=60_000)
            page.get_by_role("tab", name="Task graph").last.click()
            canvas = page.wait_for_selector(".ember-task-graph canvas", timeout=30_000)
            wait_for(lambda: (canvas.bounding_box() or {}).get("width", 0) > 200, timeout=30, message="the canvas")
            assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
            page.wait_for_timeout(500)  # bokeh paints on the next animation frame
            page.locator(".ember-task-graph").last.screenshot(path=str(ARTIFACTS / "task_graph_after_reload.png"))
            page.get_by_role("tab", name="Cluster").last.click()
        finally:
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)  # kept, pass or fail
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
