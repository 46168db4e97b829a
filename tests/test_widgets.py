"""The widgets' models after known workloads on the shared cluster (ipywidgets without a frontend:
the model state is what a frontend would render)."""

import re
import time

import numpy as np
import pytest
from conftest import wait_for

import ember
from ember import widgets
from ember.runtime.task_context import output_tag

pytest.importorskip("ipywidgets")


@ember.remote
def square(x):
    return x * x


@ember.remote
def fail():
    raise RuntimeError("broken on purpose")




def counts(html: str) -> dict:
    return {k: int(v) for k, v in re.findall(r"ember-count-(\w+)'>(\d+)<", html)}


def test_task_graph_and_progress_after_three_finished_and_one_failed(feed):
    graph = widgets.TaskGraph(feed=feed)
    refs = [square.remote(i) for i in range(3)] + [fail.remote()]
    bar = widgets.Progress(refs, feed=feed)
    ember.wait(refs, num_returns=4)
    want = {"pending": 0, "running": 0, "finished": 3, "failed": 1}
    wait_for(lambda: counts(graph.counts.value) == want, timeout=20, message=f"graph counts {want}")
    wait_for(lambda: bar.progress.finished, timeout=20)
    assert bar.progress.counts == {"finished": 3, "failed": 1, "running": 0, "pending": 0}  # a quarter red, not all
    assert str(bar).startswith("square, fail: 4/4 (1 failed) Finished in ")
    drawn = graph.plot.sources["nodes"].data  # what the bokeh plot shows
    assert sorted(drawn["state"]) == ["failed", "finished", "finished", "finished"]
    assert any("RuntimeError: broken on purpose" in error for error in drawn["error"])  # the failed task's hover
    svg = graph.static_html()
    assert svg.count("class='ember-task ember-finished'") == 3 and svg.count("class='ember-task ember-failed'") == 1
    graph.close()
    bar.close()
    assert not feed.listeners


def test_task_graph_draws_dependencies_and_collapses(feed):
    graph = widgets.TaskGraph(threshold=20, feed=feed)
    first = square.remote(3)
    second = square.remote(first)
    assert ember.get(second) == 81
    wait_for(lambda: graph.graph is not None and len(graph.graph.edges) == 1, timeout=20)
    assert not graph.graph.collapsed
    ember.get([square.remote(i) for i in range(30)])
    wait_for(lambda: graph.graph.collapsed and counts(graph.counts.value).get("finished") == 32, timeout=20)
    assert "collapsed by function" in graph.counts.value
    (node,) = graph.graph.nodes  # one function: one node, whatever the count
    assert "square" in node.label and node.counts == {"finished": 32}
    graph.close()


def test_cluster_object_store_and_gpu_widgets(feed):
    cluster_view = widgets.Cluster(feed=feed)
    store = widgets.ObjectStore(feed=feed)
    gpus = widgets.GPUs(feed=feed)
    html = cluster_view.html.value
    assert "ember-node-count'>1<" in html
    assert re.search(r"ember-cpu-text'>[\d.]+ / 4 CPU<", html)
    assert re.search(r"ember-gpu-text'>[\d.]+ / 2 GPU<", html)
    ref = ember.put(np.ones(2**21, dtype=np.uint8))  # 2 MiB: into shared memory
    wait_for(lambda: "2.0 MiB" in store.html.value, timeout=20, message="the object to be listed")
    row = re.search(r"<tr class='ember-object'>.*?</tr>", store.html.value).group(0)
    assert ref.hex()[:12] in row and "<td>put</td>" in row
    assert "held" in gpus.html.value or "ember-gpu'" in gpus.html.value
    del ref
    for view in (cluster_view, store, gpus):
        view.close()


def test_dashboard_has_every_widget_in_tabs(feed):
    dashboard = widgets.Dashboard(feed=feed)
    assert [dashboard.get_title(i) for i in range(len(dashboard.children))] == list(widgets.Dashboard.TITLES)
    assert len(feed.listeners) == 5
    actor = ember.remote(type("Probe", (), {"ping": lambda self: 1})).remote()
    ember.get(actor.ping.remote())
    # Only the tab shown is redrawn; another is brought up to date when it is selected.
    assert [view.hidden for view in dashboard.views] == [False, True, True, True, True]
    wait_for(lambda: feed.state.actors, timeout=20, message="the actor's event")
    dashboard.selected_index = 4
    assert not dashboard.views[4].hidden and dashboard.views[0].hidden
    wait_for(lambda: "ALIVE" in dashboard.views[4].html.value, timeout=20, message="the actor to show")
    dashboard.close()
    assert not feed.listeners
    ember.kill(actor)


def test_widgets_update_at_most_ten_times_a_second(feed):
    graph = widgets.TaskGraph(feed=feed)
    values = []
    graph.counts.observe(lambda change: values.append(change["new"]), "value")
    token = output_tag.set("burst")
    try:
        refs = [square.remote(i) for i in range(300)]
    finally:
        output_tag.reset(token)
    before = feed.updates
    started = time.monotonic()
    ember.get(refs)
    wait_for(lambda: feed.state.summary("burst")["finished"] == 300, timeout=30)
    wait_for(lambda: feed.throttle.due() is None, timeout=5)
    elapsed = time.monotonic() - started
    assert feed.updates - before <= 10 * elapsed + 2
    assert len(values) <= feed.updates - before + 1
    graph.close()


def test_live_metrics_table_and_plots_are_appended_to():
    metrics = widgets.LiveMetrics(title="trials")
    for step in range(3):
        metrics.report("trial_1", loss=1.0 / (step + 1), accuracy=0.5 + step / 10)
    metrics.report("trial_2", loss=2.0)
    metrics.set_status("trial_1", "TERMINATED")
    table = metrics.table.value
    assert table.count("<tr class='ember-trial'>") == 2
    assert "TERMINATED" in table and ">0.3333<" in table
    source = metrics.sources[("loss", "trial_1")]
    assert source.data["y"] == [1.0, 0.5, 1.0 / 3]  # streamed into the same source: appended, not redrawn
    assert source.data["x"] == [0, 1, 2]
    assert set(metrics.figures) == {"loss", "accuracy"} and len(metrics.plots.children) == 2
    assert len(metrics.figures["loss"].renderers) == 2  # one line per trial
