"""The cluster, object store, GPU and actor views (issue: notebook widgets v2): what they show, on
the shared cluster and from hand-made state; snapshots for saved notebooks; the disconnected mark."""

import os
import re
import textwrap

import psutil
import pytest
from conftest import run_driver, wait_for

import ember
from ember import widgets
from ember.runtime.client import core_client
from ember.runtime.cluster_state import ClusterState
from ember.widgets.events import EventFeed
from ember.widgets.render import STYLE, actors_html, cluster_html, gpus_html, store_html

pytest.importorskip("ipywidgets")


def state_with(**node) -> ClusterState:
    state = ClusterState()
    state.apply_node({"node_id": b"\x01" * 16, "alive": True, **node})
    return state


def cells(html: str, row_class: str) -> list:
    row = re.search(rf"<tr class='{row_class}'>(.*?)</tr>", html).group(1)
    return re.findall(r"<td[^>]*>(.*?)</td>", row)


def test_no_gpus_means_no_gpu_column_and_says_so():
    state = state_with(resources={"CPU": 4, "memory": 2**30}, available={"CPU": 4, "memory": 2**30})
    html = cluster_html(state)
    assert "<th>GPU</th>" not in html and "ember-gpu" not in html
    assert "No GPUs in this cluster (1 node(s))." in gpus_html(state)
    with_gpu = state_with(resources={"CPU": 4, "GPU": 2}, available={"CPU": 4, "GPU": 1})
    assert "<th>GPU</th>" in cluster_html(with_gpu) and "1 / 2 GPU" in cluster_html(with_gpu)
    assert "1 of 2 held" in gpus_html(with_gpu)


def test_memory_is_labelled_as_reserved_beside_the_ram_in_use():
    state = state_with(
        resources={"CPU": 2, "memory": 8 * 2**30},
        available={"CPU": 2, "memory": 6 * 2**30},
        ram=[3 * 2**30, 16 * 2**30],
    )
    html = cluster_html(state)
    assert "RAM in use" in html and "reserved 2.0 / 8.0 GiB" in html and "not RAM in use" in html
    assert "3.0 / 16.0 GiB" in html


def test_ram_and_store_bars_turn_orange_then_red_only_as_they_fill():
    from ember.widgets.render import BAR_COLOURS, bar

    assert BAR_COLOURS["ram"] in bar("ram", 3, 16, "3 / 16") and "#ef4444" not in bar("ram", 3, 16, "")
    assert "#f97316" in bar("store", 85, 100, "") and "#ef4444" in bar("ram", 99, 100, "")
    assert BAR_COLOURS["cpu"] in bar("cpu", 2, 2, "")  # a busy CPU is the point, not a warning


def test_values_never_share_a_cell_with_the_next_column():
    # "7.1 GiB2": the store's used bytes and its object count ran together.
    state = state_with(store={"capacity": 8 * 2**30, "used": int(7.1 * 2**30), "num_objects": 2})
    row = cells(store_html(state), "ember-store-node")
    assert "7.1 / 8.0 GiB" in row[1] and row[2] == "2"
    assert "pooled" not in row[1]  # said only when the store keeps recycled files
    pooled = state_with(store={"capacity": 8 * 2**30, "used": 2**30, "num_objects": 2, "pooled": 96 * 2**20})
    assert "pooled 96.0 MiB" in cells(store_html(pooled), "ember-store-node")[1]
    style = STYLE  # sent once beside the views, and once in a snapshot
    assert "white-space:nowrap" in style and "tabular-nums" in style and "overflow-x:auto" in style
    # Empty bars read as empty in a dark theme: the track is the theme's colour, not a light grey.
    assert "background:var(--jp-layout-color3" in style


def test_actors_tab_shows_pid_node_restarts_and_calls(feed):
    @ember.remote
    class Worker:
        def pid(self):
            return os.getpid()

    actor = Worker.remote()
    pid = ember.get([actor.pid.remote() for _ in range(3)])[-1]
    view = widgets.Actors(feed=feed)
    actor_id = actor._actor_id.hex()

    def shown():
        with feed.lock:
            html = actors_html(feed.state)
        match = re.search(rf"<tr class='ember-actor'><td><code>{actor_id[:12]}</code>.*?</tr>", html)
        return match and re.findall(r"<td[^>]*>(.*?)</td>", match.group(0))

    wait_for(lambda: shown() and shown()[7] == "3", timeout=20, message="three calls on the actors tab")
    row = shown()
    assert row[1] == "Worker" and row[3] == "ALIVE" and row[4] == str(pid) and row[6] == "0"
    assert ">restarts</th>" in view.html.value
    view.close()
    ember.kill(actor)


def test_nodes_report_the_machines_memory_in_use(cluster):
    def reported():
        ram = ember.nodes()[0].get("RAM")
        return ram is not None and ram

    used, total = wait_for(reported, timeout=20, message="the node's RAM in its stats")
    assert total == psutil.virtual_memory().total and 0 < used < total


def test_widget_outputs_carry_a_snapshot_and_a_one_line_summary(feed):
    view = widgets.Cluster(feed=feed)
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("Ember cluster (live in JupyterLab): tasks ")
    assert "<style>" in bundle["text/html"] and "ember-cluster" in bundle["text/html"]
    dashboard = widgets.Dashboard(feed=feed)
    html = dashboard._repr_mimebundle_()["text/html"]
    assert all(name in html for name in ("ember-cluster", "ember-store", "ember-gpus", "ember-actors"))
    dashboard.close()
    view.close()


def test_a_widget_closed_on_the_feeds_own_thread_does_not_stall_it(feed):
    # The garbage collector may finalize a widget on the feed's thread while it applies events or
    # calls listeners, and ipywidgets' __del__ closes it: closing must not wait on the feed's lock.
    view = widgets.Cluster(feed=feed)
    closed = []

    def close_on_the_feeds_thread(state):
        if not closed:
            closed.append(True)
            view.close()

    feed.add_listener(close_on_the_feeds_thread)
    wait_for(lambda: closed, timeout=10)
    updates = feed.updates
    feed.poke()
    wait_for(lambda: feed.updates > updates, timeout=10)
    assert view._listen not in feed.listeners
    feed.remove_listener(close_on_the_feeds_thread)


def test_widgets_say_they_are_disconnected_after_shutdown(cluster):
    # In a driver of its own, so its shutdown leaves the shared cluster alone.
    code = textwrap.dedent(
        f"""
        import time, ember
        from ember import widgets
        ember.init(address={cluster.address!r})
        view = widgets.Cluster()
        assert view.banner.value == ""
        ember.shutdown()
        deadline = time.time() + 20
        while "Disconnected" not in view.banner.value and time.time() < deadline:
            time.sleep(0.05)
        print("BANNER", view.banner.value.count("Disconnected"), "connection was shut down" in view.banner.value)
        print("SNAPSHOT", "Disconnected" in view._repr_mimebundle_()["text/html"])
        """
    )
    out = run_driver(code, timeout=120).stdout  # the secret is in our environment, as init put it
    assert "BANNER 1 True" in out and "SNAPSHOT True" in out


def test_a_hidden_tab_is_still_redrawn_while_a_cell_runs(cluster):
    # The kernel cannot hear that a tab was opened while a cell runs (its message waits for the
    # cell to end), so a hidden view keeps up at a lower rate instead of freezing.
    feed = EventFeed(core_client.current_client().publisher_address).start()
    try:
        dashboard = widgets.Dashboard(feed=feed)
        actors = dashboard.views[4]
        assert actors.hidden

        @ember.remote
        class Probe:
            def ping(self):
                return 1

        probe = Probe.remote()
        ember.get(probe.ping.remote())
        shown = probe._actor_id.hex()[:12]
        wait_for(lambda: shown in actors.html.value, timeout=20, message="the hidden tab to redraw")
        assert actors.hidden  # still hidden: redrawn at the hidden rate
        dashboard.close()
        ember.kill(probe)
    finally:
        feed.stop()


def test_waiting_demand_says_when_no_node_can_ever_hold_it():
    state = state_with(
        resources={"CPU": 4},
        total={"CPU": 4},
        demand=[{"CPU": 1}, {"CPU": 1}, {"CPU": 64}],
    )
    html = cluster_html(state)
    rows = re.findall(r"<tr class='ember-demand'>(.*?)</tr>", html)
    assert len(rows) == 2
    assert "2×" in rows[0] and "{CPU: 1}" in rows[0] and "waiting for resources in use" in rows[0]
    assert "1×" in rows[1] and "{CPU: 64}" in rows[1] and "infeasible" in rows[1]


def test_a_notebook_saved_by_nbclient_keeps_snapshots_with_the_numbers_at_the_cells_end(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        "%load_ext ember",
        "import time, ember\n"
        "from ember.widgets import events\n"
        "@ember.remote\n"
        "def square(x):\n"
        "    return x * x\n"
        "view = ember.widgets.Cluster()\n"
        "display(view)\n"
        "ember.get([square.remote(i) for i in range(7)])\n"
        "deadline = time.time() + 30\n"
        "while events.feed().state.summary()['finished'] < 7 and time.time() < deadline:\n"
        "    time.sleep(0.05)",
        "%ember dashboard",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    path = tmp_path / "saved.ipynb"
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_ADDRESS", "EMBER_CLUSTER_TOKEN")}
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3")
    client.execute(env=env, cwd=str(tmp_path))  # the kernel's shutdown stops the cluster it started
    nbformat.write(notebook, path)
    # BokehJS (8 MB inline) reached the page for the task graph, but is not kept in the outputs.
    assert path.stat().st_size < 300_000, path.stat().st_size
    saved = nbformat.read(path, as_version=4)
    (cluster_output,) = [o for o in saved.cells[1].outputs if o.get("output_type") == "display_data"]
    html = cluster_output.data["text/html"]
    assert "ember-cluster" in html and "<style>" in html
    assert re.search(r"ember-count-finished.>7<", html), "the snapshot shows the numbers at the cell's end"
    assert cluster_output.data["text/plain"].startswith("Ember cluster (live in JupyterLab)")
    outputs = saved.cells[2].outputs  # BokehJS may be loaded there first
    (dashboard,) = [o for o in outputs if o.get("data", {}).get("text/plain", "").startswith("Ember dashboard")]
    assert all(view in dashboard.data["text/html"] for view in ("ember-cluster", "ember-store", "ember-actors"))


def test_cluster_widget_shows_the_nodes_workers_by_state(feed):
    @ember.remote
    class Holder:
        def ping(self):
            return 1

    @ember.remote
    def one():
        return 1

    holder = Holder.remote()
    # A task too, so that a pool worker exists (the pool's idle ones may have been retired by now).
    assert ember.get([holder.ping.remote(), one.remote()]) == [1, 1]
    view = widgets.Cluster(feed=feed)

    def states():
        return {k: int(v) for k, v in re.findall(r"ember-workers-(\w+)'>(\d+)<", view.html.value)}

    # The actor's worker and the pool's (node reports come as they change: wait for both).
    wait_for(lambda: states().get("actor", 0) >= 1 and sum(states().values()) >= 2, timeout=20, message="workers")
    view.close()
    ember.kill(holder)


def test_an_infeasible_task_shows_in_the_cluster_widget(feed):
    @ember.remote(num_cpus=64)
    def too_big():
        return 1

    ref = too_big.remote()
    view = widgets.Cluster(feed=feed)
    wait_for(lambda: "infeasible" in view.html.value and "{CPU: 64}" in view.html.value, timeout=20)
    ember.cancel(ref)
    wait_for(lambda: "ember-demand" not in view.html.value, timeout=20, message="the demand to go")
    view.close()


def test_cluster_widget_links_to_the_dashboard(cluster, feed):
    view = widgets.Cluster(feed=feed)
    try:
        link = re.search(r"class='ember-dashboard-link' href='([^']+)'", view.html.value)
        assert link and link.group(1) == cluster.dashboard_url
    finally:
        view.close()
    assert "ember-dashboard-link" not in cluster_html(state_with(resources={"CPU": 1}, available={"CPU": 1}))
