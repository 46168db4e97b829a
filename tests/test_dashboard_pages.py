"""The dashboard's pages without a browser: their views as plain functions of a ClusterState and of
the head's activity answer, and their JSON endpoints over real HTTP on the shared cluster's dashboard."""

import os

import httpx
import msgpack
import pytest

import ember
from ember.dashboard import pages_views as pv
from ember.dashboard.pages import PAGES, Pages, shell
from ember.dashboard.pages_feed import TaskRate
from ember.runtime.cluster_state import ClusterState
from ember.runtime.head.task_summary import TaskSummary
from ember.util.placement_group import placement_group, remove_placement_group
from tests.conftest import wait_for

pytest.importorskip("starlette")


def _task(summary, task_id: bytes, name: str, pid: int, start: float, end: float | None, failed=False):
    fields = {"name": name, "node": b"\x01" * 16, "pid": pid}
    events = [["submitted", task_id, start - 0.1, fields], ["running", task_id, start, fields]]
    if end is not None:
        events.append(
            ["failed" if failed else "finished", task_id, end, {"error": "ValueError: boom"} if failed else {}]
        )
    summary.apply_batch(msgpack.packb(events))


def test_task_stream_rows_per_worker_and_window():
    summary = TaskSummary()
    _task(summary, b"a" * 24, "f", 10, 100.0, 101.0)
    _task(summary, b"b" * 24, "g", 11, 100.5, None)  # still running: its bar reaches now
    _task(summary, b"c" * 24, "f", 10, 10.0, 11.0)  # ended before the window: left out
    _task(summary, b"d" * 24, "h", 12, 101.0, 101.5, failed=True)
    stream = pv.task_stream(summary.activity(102.0, recent=10, failures=10)["stream"])
    assert sorted(pid for _, pid in stream["workers"]) == [10, 11, 12]
    bars = {bar[3]: bar for bar in stream["bars"]}
    assert set(bars) == {"f", "g", "h"}
    assert bars["f"][1:3] == [100.0, 101.0] and bars["f"][5] == 1.0 and bars["f"][6] == 1  # one run of 4 slots
    assert bars["g"][2] == 102.0 and bars["g"][6] == 0 and bars["h"][4] == "failed"
    svg = pv.task_stream_svg(stream)
    assert svg.count("class='ember-stream-bar'") == 3 and "stroke='#ef4444'" in svg
    empty = TaskSummary().activity(102.0, recent=10, failures=10)["stream"]
    assert "No task ran" in pv.task_stream_svg(pv.task_stream(empty))


def test_workers_failures_and_recent():
    summary = TaskSummary()
    _task(summary, b"a" * 24, "f", 10, 100.0, 101.0)
    _task(summary, b"b" * 24, "g", 11, 100.5, None)
    _task(summary, b"d" * 24, "h", 12, 101.0, 101.5, failed=True)
    activity = summary.activity(102.0, recent=2, failures=10)
    state = ClusterState()
    state.apply(b"event:actor", {"actor_id": b"\x02" * 16, "state": "ALIVE", "class_name": "Counter", "pid": 13})
    rows = {row["pid"]: row for row in pv.workers(activity["workers"], state)}
    assert rows[10]["state"] == "idle" and rows[10]["tasks"] == 1 and rows[10]["task"] == "f"
    assert rows[11]["state"] == "busy" and rows[11]["task"] == "g"
    assert rows[13]["state"] == "actor" and rows[13]["task"] == "Counter"
    failed = pv.failures(activity["failures"])
    assert [f["name"] for f in failed] == ["h"] and "boom" in failed[0]["error"]
    assert [row["name"] for row in activity["recent"]] == ["g", "h"]  # the newest two, oldest first


def test_functions_from_the_aggregates():
    state = ClusterState()
    events = [["submitted", b"a" * 24, 99.9, {"name": "f"}], ["running", b"a" * 24, 100.0, {"pid": 10}]]
    state.apply(b"event:task", events + [["finished", b"a" * 24, 101.0, {}], ["running", b"b" * 24, 100.0, {}]])
    state.apply(b"event:task", [["submitted", b"b" * 24, 99.0, {"name": "g"}]])
    functions = {row["name"]: row for row in pv.by_function(state)}
    assert functions["f"]["finished"] == 1 and functions["f"]["mean_s"] == pytest.approx(1.0)
    assert functions["g"]["running"] == 1 and functions["g"]["mean_s"] is None


def test_task_rate():
    rate = TaskRate(window=2.0)
    assert rate.rate(0.0) == 0.0
    for second in range(5):
        rate.note(float(second), second * 100)
    assert rate.rate(4.0) == pytest.approx(100.0)
    assert rate.rate(10.0) == 0.0  # no summary for longer than the window: nothing ended since
    with pytest.raises(ValueError):
        TaskRate(window=0)


def test_log_text_stays_in_the_log_directory(tmp_path):
    (tmp_path / "worker-1.log").write_text("x" * 100 + "last line\n")
    (tmp_path.parent / "secret.txt").write_text("no")
    pages = Pages(feed=None, head=None, jobs=None, log_dir=str(tmp_path))
    assert pages.log_text("worker-1.log", tail=10) == "last line\n"
    for bad in ("../secret.txt", "", ".", "..", "missing.log", str(tmp_path / "worker-1.log")):
        with pytest.raises(KeyError):
            pages.log_text(bad)


def test_every_page_has_its_shell():
    for path, (title, name) in PAGES.items():
        text = shell(path)
        assert f'data-view="{name}"' in text and f"<title>{title} " in text and "{{" not in text


def _get(url: str, path: str):
    reply = httpx.get(f"{url}{path}", timeout=30)
    assert reply.status_code == 200, (path, reply.text[:500])
    return reply.json() if reply.headers["content-type"].startswith("application/json") else reply.text


@ember.remote
def _square(x):
    return x * x


@ember.remote
class _Tally:
    def add(self, n):
        return n


def test_json_endpoints_follow_the_cluster(cluster):
    url = cluster.dashboard_url
    before = _get(url, "/api/overview")["tasks"]["counts"]["finished"]
    tally = _Tally.remote()
    ember.get([tally.add.remote(i) for i in range(3)])
    ref = ember.put(b"x" * 3_000_000)
    group = placement_group([{"CPU": 1}], name="pages-test-group")
    ember.get(group.ready(), timeout=30)
    try:
        ember.get([_square.remote(i) for i in range(50)])

        def finished():
            return _get(url, "/api/overview")["tasks"]["counts"]["finished"] >= before + 53

        wait_for(finished, timeout=30, message="the overview to count the tasks")
        overview = _get(url, "/api/overview")
        assert overview["nodes"] == 1 and overview["resources"]["total"]["CPU"] == 4
        assert overview["actors_alive"] >= 1

        def recent_squares():
            # The head's activity answer serves pages for half a second: it may predate the last tasks.
            tasks = _get(url, "/api/tasks")
            done = any(row["name"].endswith("_square") and row["state"] == "FINISHED" for row in tasks["recent"])
            return tasks["stream"]["bars"] and done and tasks

        tasks = wait_for(recent_squares, timeout=30, message="task stream bars and the recent tasks")
        assert any(row["name"].endswith("_square") or row["name"] == "_square" for row in tasks["by_function"])

        actors = wait_for(
            lambda: [a for a in _get(url, "/api/actors")["actors"] if a["class_name"] == "_Tally" and a["calls"] >= 3],
            timeout=30,
            message="the actor with its calls",
        )
        assert actors[0]["state"] == "ALIVE" and actors[0]["pid"] > 0

        nodes = wait_for(lambda: (n := _get(url, "/api/nodes"))["workers"] and n, timeout=30, message="workers")
        assert nodes["nodes"][0]["alive"] and all(w["pid"] > 0 for w in nodes["workers"])

        objects = wait_for(
            lambda: (o := _get(url, "/api/objects"))["largest"] and o["largest"][0]["size"] >= 3_000_000 and o,
            timeout=30,
            message="the put object among the largest",
        )
        assert objects["largest"][0]["object_id"] == ref.hex() and objects["largest"][0]["made_by"] == "put"

        groups = _get(url, "/api/placement_groups")["placement_groups"]
        mine = [g for g in groups if g["name"] == "pages-test-group"]
        assert mine and mine[0]["state"] == "CREATED" and mine[0]["bundles"][0]["resources"] == {"CPU": 1}

        for name in ("overview", "nodes", "tasks", "actors", "objects", "placement_groups", "jobs", "serve", "logs"):
            body = _get(url, f"/api/view/{name}")
            assert body["html"].startswith("<div class='ember-view") and "data" in body
        assert httpx.get(f"{url}/api/view/nope", timeout=30).status_code == 404
        assert "<svg class='ember-task-stream'" in _get(url, "/api/view/tasks")["html"]
        assert set(_get(url, "/api/view/tasks?html_only=1")) == {"html"}  # what the pages ask for
    finally:
        remove_placement_group(group)
        ember.kill(tally)


def test_log_endpoints(cluster):
    url = cluster.dashboard_url
    logs = _get(url, "/api/logs")
    names = [f["name"] for f in logs["files"]]
    assert "dashboard.log" in names and os.path.isdir(logs["log_dir"])
    assert "dashboard for head" in _get(url, "/api/logs/dashboard.log")
    assert httpx.get(f"{url}/api/logs/..%2Fsecret", timeout=30).status_code == 404
    assert httpx.get(f"{url}/api/logs/dashboard.log?tail=x", timeout=30).status_code == 400
    page = httpx.get(f"{url}/logs?file=dashboard.log", timeout=30)
    assert page.status_code == 200 and 'data-view="logs"' in page.text
    view = _get(url, "/api/view/logs?file=dashboard.log")
    assert "dashboard for head" in view["html"]


def test_a_networked_dashboard_takes_the_secret_once_in_a_link(cluster, tmp_path):
    from ember import dashboard
    from ember.runtime import transport
    from tests.test_dashboard_server import _get as get_or_none
    from tests.test_dashboard_server import _network_address

    host = _network_address()
    if host is None:
        pytest.skip("this machine has no network interface besides loopback")
    (tmp_path / "logs").mkdir()
    process, url = dashboard.start(cluster.address, host, 0, str(tmp_path))
    try:
        token = transport.current_token()
        refused = wait_for(lambda: get_or_none(f"{url}/tasks"), timeout=30, message="the dashboard to answer")
        assert refused.status_code == 401
        assert httpx.get(f"{url}/tasks?token=wrong", timeout=30).status_code == 401
        with httpx.Client(base_url=url, timeout=30) as browser:
            first = browser.get(f"/tasks?token={token}")
            assert first.status_code == 303 and first.headers["location"] == "tasks"  # relative (a proxy prefix)
            assert {"httponly", "samesite=strict"} <= {
                part.strip().lower() for part in first.headers["set-cookie"].split(";")
            }
            page = browser.get("/tasks")  # the cookie from now on
            assert page.status_code == 200 and 'data-view="tasks"' in page.text
            assert browser.get("/api/view/tasks").json()["data"]["counts"]["finished"] >= 0
    finally:
        dashboard.stop(process)


def test_serve_page_shows_the_applications_its_controller_reports(cluster, serve_instance):
    from ember import serve

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
    class Echo:
        def __call__(self, text):
            return text

    serve.run(Echo.bind(), name="pages-echo", route_prefix=None)
    url = cluster.dashboard_url
    data = wait_for(
        lambda: (d := _get(url, "/api/serve")).get("applications", {}).get("pages-echo") and d,
        timeout=60,
        message="the Serve endpoint to list the application",
    )
    echo = data["applications"]["pages-echo"]["deployments"]["Echo"]
    assert data["running"] and echo["target_replicas"] == 2
    page = _get(url, "/api/view/serve")["html"]
    assert "pages-echo" in page and "Echo" in page and "ember-serve-row" in page
    serve.delete("pages-echo")
    wait_for(lambda: "pages-echo" not in _get(url, "/api/serve").get("applications", {}), timeout=60)
