"""The web dashboard's pages in a real browser (headless Debian Chromium, driven by Playwright): one
cluster (the shared one), one browser for every page. While a workload runs (tasks, an actor, a
placement group, a put object), each page renders with numbers that change; a job submitted through
the page's jobs endpoint shows its logs on the jobs page. Screenshots go to test-artifacts/ (or
$EMBER_TEST_ARTIFACTS)."""

import os
import re
import sys
import threading

import pytest
from conftest import wait_for
from jupyter_lab import ARTIFACTS, CHROMIUM

import ember
from ember.util.placement_group import placement_group, remove_placement_group

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("starlette")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@ember.remote
def _tick(i):
    import time

    time.sleep(0.02)
    return i


@ember.remote
class _Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


class Workload:
    """Tasks and actor calls in a loop on a thread of the test's driver, until stopped."""

    def __init__(self):
        self.counter = _Counter.remote()
        self.stop = threading.Event()
        self.rounds = 0
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self.stop.is_set():
                ember.get([_tick.remote(i) for i in range(20)] + [self.counter.add.remote()], timeout=60)
                self.rounds += 1
        except Exception as error:  # shown by the test, not lost on the thread
            self.error = error


def number(page, selector: str) -> float:
    return float(page.locator(selector).first.inner_text().replace(",", "") or 0)


def changes(page, selector: str, message: str, timeout: float = 20) -> None:
    """The number at ``selector`` changes while the page stays open (its view is fetched anew)."""
    first = number(page, selector)
    wait_for(lambda: number(page, selector) != first, timeout=timeout, interval=0.2, message=message)


def test_every_page_renders_live_numbers(cluster):
    url = cluster.dashboard_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    group = placement_group([{"CPU": 1}], name="browser-pages-group")
    ember.get(group.ready(), timeout=30)
    blob = ember.put(b"b" * 4_000_000)
    workload = Workload()
    workload.thread.start()
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})

                def visit(path: str, ready: str, shot: str):
                    page.goto(f"{url}{path}")
                    page.wait_for_selector(ready, timeout=30_000)
                    return shot

                shots = []
                shots.append(visit("/", ".ember-overview .ember-tasks-per-s", "overview"))
                changes(page, ".ember-overview .ember-finished", "the overview's finished count to grow")
                assert number(page, ".ember-cluster .ember-node-count") == 1
                page.screenshot(path=str(ARTIFACTS / "dashboard_overview.png"), full_page=True)

                visit("/nodes", ".ember-workers .ember-worker", "nodes")
                assert re.fullmatch(r"[\d.]+ / 4 CPU", page.locator(".ember-cpu-text").first.inner_text())
                assert number(page, ".ember-worker-pid") > 0
                page.screenshot(path=str(ARTIFACTS / "dashboard_nodes.png"), full_page=True)

                visit("/tasks", ".ember-task-stream .ember-stream-bar", "tasks")
                changes(page, ".ember-tasks .ember-count-finished", "the tasks page's finished count to grow")
                page.wait_for_selector(".ember-graph svg.ember-task-graph", timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard_tasks.png"), full_page=True)

                visit("/actors", ".ember-actors .ember-actor", "actors")
                row = page.locator(".ember-actor", has_text="_Counter")
                wait_for(lambda: row.count() == 1, message="the counter actor's row")
                calls = row.locator(".ember-actor-calls")
                first = int(calls.inner_text())
                wait_for(lambda: int(calls.inner_text()) > first, interval=0.2, message="the actor's calls to grow")
                assert row.locator(".ember-actor-state").inner_text() == "ALIVE"
                page.screenshot(path=str(ARTIFACTS / "dashboard_actors.png"), full_page=True)

                visit("/objects", ".ember-store .ember-object", "objects")
                biggest = page.locator(".ember-object").first
                assert biggest.locator("code").first.inner_text() == blob.hex()[:12]
                assert "put" in biggest.inner_text()
                page.screenshot(path=str(ARTIFACTS / "dashboard_objects.png"), full_page=True)

                visit("/placement_groups", ".ember-pg", "placement groups")
                mine = page.locator(".ember-pg", has_text="browser-pages-group")
                assert mine.locator(".ember-pg-state").inner_text() == "CREATED"
                remove_placement_group(group)
                wait_for(
                    lambda: mine.locator(".ember-pg-state").inner_text() == "REMOVED",
                    interval=0.2,
                    message="the removed group's state on the open page",
                )

                # A job, submitted through the endpoint the jobs page reads, its id taken from that list.
                code = "import ember; ember.init(); print('job says', ember.get(ember.remote(lambda: 6 * 7).remote()))"
                reply = page.request.post(f"{url}/api/jobs/", data={"entrypoint": f'{sys.executable} -c "{code}"'})
                assert reply.ok, reply.text()
                jobs = page.request.get(f"{url}/api/jobs/").json()
                (job,) = [j for j in jobs if j["submission_id"] == reply.json()["submission_id"]]
                visit(f"/jobs?job={job['submission_id']}", ".ember-jobs .ember-job", "jobs")
                logs = page.locator(".ember-job-logs")
                wait_for(lambda: "job says 42" in logs.inner_text(), timeout=60, interval=0.3, message="job logs")
                row = page.locator(".ember-job", has_text=job["submission_id"])
                wait_for(lambda: row.locator(".ember-job-status").inner_text() == "SUCCEEDED", timeout=30)
                page.screenshot(path=str(ARTIFACTS / "dashboard_jobs.png"), full_page=True)

                # The stop button of a running job stops it.
                sleeper = page.request.post(f"{url}/api/jobs/", data={"entrypoint": "sleep 120"}).json()
                visit(f"/jobs?job={sleeper['submission_id']}", ".ember-jobs .ember-job", "jobs")
                button = page.locator(f"button[data-stop='{sleeper['submission_id']}']")
                wait_for(lambda: button.count() == 1, timeout=30, interval=0.2, message="the stop button")
                button.click()
                row = page.locator(".ember-job", has_text=sleeper["submission_id"])
                wait_for(lambda: row.locator(".ember-job-status").inner_text() == "STOPPED", timeout=30)

                visit("/logs", ".ember-log-file", "logs")
                page.locator(".ember-log-file a", has_text="dashboard.log").click()
                page.wait_for_selector(".ember-log-text", timeout=30_000)
                assert "dashboard for head" in page.locator(".ember-log-text").inner_text()
                page.screenshot(path=str(ARTIFACTS / "dashboard_logs.png"), full_page=True)

                # The theme follows the toggle (CSS variables): the page's background changes.
                light = page.evaluate("getComputedStyle(document.body).backgroundColor")
                page.click("#ember-theme")
                assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light
                page.screenshot(path=str(ARTIFACTS / "dashboard_logs_dark.png"), full_page=True)
            finally:
                browser.close()
    finally:
        workload.stop.set()
        workload.thread.join(60)
        ember.kill(workload.counter)
        if group is not None:
            try:
                remove_placement_group(group)
            except Exception:
                pass
    assert workload.error is None, workload.error
    assert workload.rounds > 0
