"""The task graph view: its layered layout (a plain function), its per-view model (hand-made events),
its bokeh drawing, and the widget against the shared cluster (real events)."""

import random

import pytest
from conftest import wait_for
from test_event_stream import submitted, task  # hand-made task events, as an owner sends them

import ember
from ember.runtime.cluster_state import ClusterState
from ember.widgets.graph import COLOURS, TaskGraphModel, to_svg
from ember.widgets.graph_layout import crossings, layered_layout
from ember.widgets.graph_plot import GROUP, TASK, columns, view_ranges


def chain(state, name="add", length=50, start=0, when=1.0):
    """``length`` calls of ``name``, each taking the previous one's result."""
    events = [submitted(start, name, when=when)]
    events += [submitted(start + n, name, deps=(start + n - 1,), when=when) for n in range(1, length)]
    state.apply(b"event:task", events)


def order_of(placements: dict) -> list:
    layers: dict = {}
    for key, where in placements.items():
        layers.setdefault(where.layer, []).append((where.slot, key))
    return [[key for _, key in sorted(layers[depth])] for depth in sorted(layers)]


# --- layout ---------------------------------------------------------------------------------------------
def test_a_chain_of_50_is_50_layers_and_every_edge_goes_deeper():
    edges = [(n - 1, n) for n in range(1, 50)]
    placements = layered_layout(range(50), edges)
    assert [placements[n].layer for n in range(50)] == list(range(50))
    assert all(placements[n].slot == 0 for n in range(50))


def test_a_wide_layer_stays_one_layer_spread_along_its_axis():
    keys = [*range(500), "sum"]
    placements = layered_layout(keys, [(n, "sum") for n in range(500)])
    assert {placements[n].layer for n in range(500)} == {0} and placements["sum"].layer == 1
    slots = sorted(placements[n].slot for n in range(500))
    assert slots == [n - 249.5 for n in range(500)]  # one apart, centred: nothing wraps, nothing overlaps


def test_random_dags_place_no_two_nodes_together_and_edges_only_go_deeper():
    rng = random.Random(7)
    for _ in range(20):
        size = rng.randint(2, 120)
        edges = {(a, b) for b in range(size) for a in rng.sample(range(b), min(b, rng.randint(0, 3)))}
        placements = layered_layout(range(size), edges)
        spots = [(where.layer, where.slot) for where in placements.values()]
        assert len(set(spots)) == size
        assert all(placements[a].layer < placements[b].layer for a, b in edges)
        for members in order_of(placements):
            slots = [placements[key].slot for key in members]
            assert slots == [n - (len(members) - 1) / 2 for n in range(len(members))]


def test_barycentre_sweeps_remove_crossings_the_first_seen_order_has():
    # Seen in this order, c (b's child) comes before d (a's child): a->d crosses b->c.
    keys = ["a", "b", "c", "d", "e", "f"]
    edges = [("a", "d"), ("b", "c"), ("d", "f"), ("c", "e")]
    successors = {"a": ["d"], "b": ["c"], "d": ["f"], "c": ["e"]}
    assert crossings(order_of(layered_layout(keys, edges, sweeps=0)), successors) == 1
    assert crossings(order_of(layered_layout(keys, edges)), successors) == 0


def test_cycles_and_self_edges_between_functions_do_not_stop_the_layout():
    placements = layered_layout(["f", "g", "h"], [("f", "f"), ("f", "g"), ("g", "f"), ("g", "h"), ("x", "f")])
    assert (placements["f"].layer, placements["g"].layer, placements["h"].layer) == (0, 1, 2)
    with pytest.raises(ValueError):
        layered_layout(["f"], [], sweeps=-1)


# --- model ----------------------------------------------------------------------------------------------
def test_a_chain_collapsed_keeps_its_self_edge_with_the_count():
    state = ClusterState()
    chain(state)
    graph = TaskGraphModel(threshold=10).build(state)
    assert graph.collapsed and graph.total == 50
    (node,) = graph.nodes
    assert node.key == "add" and node.label == "add ×50" and node.counts == {"pending": 50}
    assert graph.edges == [("add", "add", 49)]
    data = columns(graph)
    assert data["notes"]["text"] == ["49"] and len(data["loops"]["x0"]) == 1
    assert data["strips"]["colour"] == [COLOURS["pending"]]  # all 50 pending: one strip, the box's width
    assert len(data["edges"]["x0"]) == 1  # the loop's arrowhead
    svg = to_svg(graph)
    assert svg.count("class='ember-self-edge'") == 1 and ">49</text>" in svg


def test_a_chain_below_the_threshold_is_drawn_call_by_call_in_50_layers():
    state = ClusterState()
    chain(state)
    graph = TaskGraphModel(threshold=100).build(state)
    assert not graph.collapsed and len(graph.nodes) == 50 and len(graph.edges) == 49
    assert sorted(node.layer for node in graph.nodes) == list(range(50))
    data = columns(graph)
    arrows = data["edges"]
    assert len(arrows["x0"]) == 49 and all(x1 > x0 for x0, x1 in zip(arrows["x0"], arrows["x1"]))
    assert set(data["nodes"]["label"]) == {"add"}
    assert to_svg(graph).count("marker-end='url(#ember-arrow)'") == 49


def test_edges_between_functions_keep_their_counts_with_the_self_edges():
    state = ClusterState()
    state.apply(b"event:task", [submitted(n, "load") for n in range(20)])
    state.apply(b"event:task", [["finished", task(n), 2.0, {}] for n in range(15)] + [["failed", task(15), 2.0, {}]])
    state.apply(b"event:task", [submitted(100 + n, "parse", deps=(n,)) for n in range(20)])
    state.apply(b"event:task", [submitted(200, "merge", deps=(100, 101)), submitted(201, "merge", deps=(200, 102))])
    graph = TaskGraphModel(threshold=10).build(state)
    assert sorted(graph.edges) == [("load", "parse", 20), ("merge", "merge", 1), ("parse", "merge", 3)]
    layers = {node.key: node.layer for node in graph.nodes}
    assert layers == {"load": 0, "parse": 1, "merge": 2}
    strips = columns(graph)["strips"]  # load: 4 pending, 15 finished, 1 failed, side by side in proportion
    load = [(right - left, colour) for left, right, colour in zip(strips["left"], strips["right"], strips["colour"])][
        :3
    ]
    assert [colour for _, colour in load] == [COLOURS["pending"], COLOURS["finished"], COLOURS["failed"]]
    assert [width / GROUP["width"] for width, _ in load] == pytest.approx([4 / 20, 15 / 20, 1 / 20])


def test_the_collapse_is_decided_per_view():
    state = ClusterState()
    chain(state, length=40)
    narrow, wide = TaskGraphModel(threshold=10), TaskGraphModel(threshold=150)
    assert narrow.build(state).collapsed and not wide.build(state).collapsed
    narrow.threshold = 40
    assert not narrow.build(state).collapsed  # a view's threshold can change, and the view follows
    with pytest.raises(ValueError):
        narrow.threshold = -1
    with pytest.raises(ValueError):
        TaskGraphModel(threshold="10")


def test_reset_forgets_this_views_ended_tasks_only():
    state = ClusterState()
    state.apply(b"event:task", [submitted(n, "map") for n in range(200)])
    state.apply(b"event:task", [submitted(300 + n, "reduce", deps=(n,)) for n in range(2)])
    state.apply(b"event:task", [["finished", task(n), 2.0, {}] for n in range(197)])  # 3 maps still pending
    kept, reset = TaskGraphModel(), TaskGraphModel()
    assert kept.build(state).collapsed and reset.build(state).collapsed
    reset.reset(state)
    graph = reset.build(state)  # what is still live stays: 3 maps, 2 reduces, the edges between them
    assert not graph.collapsed and graph.total == 5
    assert [node.key for node in graph.nodes] == [task(197), task(198), task(199), task(300), task(301)]
    assert graph.edges == [] and graph.counts["pending"] == 5
    state.apply(b"event:task", [submitted(1000, "fresh", deps=(199,)), submitted(1001, "fresh", deps=(1000,))])
    graph = reset.build(state)
    assert not graph.collapsed and [node.key for node in graph.nodes][-2:] == [task(1000), task(1001)]
    assert graph.edges == [(task(199), task(1000), 1), (task(1000), task(1001), 1)]
    assert kept.build(state).collapsed  # the other view still collapses the whole session
    # Past the threshold again: the live ones as they end, and what came after the reset.
    state.apply(b"event:task", [["finished", task(n), 3.0, {}] for n in (197, 198, 199, 300, 301)])
    chain(state, name="fresh", length=160, start=2000)
    state.apply(b"event:task", [["running", task(2000), 4.0, {"node": b"n", "pid": 7}]])
    graph = reset.build(state)
    assert graph.collapsed and graph.total == 167
    counts = {node.key: node.counts for node in graph.nodes}
    assert counts == {"map": {"finished": 3}, "reduce": {"finished": 2}, "fresh": {"pending": 161, "running": 1}}
    # A live task's dependencies count whoever made them: reduce's inputs ended before the reset.
    assert sorted(graph.edges) == [("fresh", "fresh", 160), ("map", "fresh", 1), ("map", "reduce", 2)]
    assert graph.counts == {"pending": 161, "running": 1, "finished": 5, "failed": 0}
    whole = {node.key: node.counts for node in kept.build(state).nodes}
    assert whole["map"] == {"finished": 200} and whole["reduce"] == {"finished": 2}


def test_clearing_the_state_after_a_views_reset_leaves_no_negative_counts():
    state = ClusterState()
    chain(state, length=30)
    model = TaskGraphModel(threshold=5)
    model.reset(state)
    state.clear_tasks(now=2.0)
    chain(state, name="g", length=10, start=500, when=1.5)  # stamped before the clear: ignored
    chain(state, name="g", length=20, start=600, when=3.0)
    graph = model.build(state)
    assert graph.total == 20 and [(node.key, node.counts) for node in graph.nodes] == [("g", {"pending": 20})]
    assert graph.edges == [("g", "g", 19)]


def test_hover_has_name_state_node_pid_duration_and_error():
    state = ClusterState()
    state.apply(b"event:task", [submitted(1, "ok"), submitted(2, "bad")])
    state.apply(b"event:task", [["running", task(1), 2.0, {"node": b"\xab" * 8, "pid": 41}]])
    state.apply(b"event:task", [["finished", task(1), 2.25, {}], ["running", task(2), 2.0, {"node": b"\xab" * 8}]])
    state.apply(b"event:task", [["failed", task(2), 2.5, {"error": "ValueError: no"}]])
    graph = TaskGraphModel().build(state)
    info = {node.key: node.info for node in graph.nodes}
    assert info[task(1)] == {
        "name": "ok", "state": "finished", "node": "ab" * 6, "pid": "41", "duration": "250.0 ms", "error": ""
    }  # fmt: skip
    assert info[task(2)]["error"] == "ValueError: no" and info[task(2)]["state"] == "failed"
    nodes = columns(graph)["nodes"]
    assert nodes["error"] == ["", "ValueError: no"] and nodes["pid"] == ["41", ""]
    collapsed = TaskGraphModel(threshold=1).build(state)
    ok = next(node for node in collapsed.nodes if node.key == "ok")
    assert ok.info["duration"] == "mean 250.0 ms over 1" and ok.info["state"] == "1 finished"


def test_drawn_boxes_never_overlap():
    rng = random.Random(3)
    state = ClusterState()
    events = [submitted(n, f"f{n % 4}", deps=rng.sample(range(n), min(n, 2))) for n in range(120)]
    state.apply(b"event:task", events)
    for threshold in (150, 10):
        graph = TaskGraphModel(threshold=threshold).build(state)
        shape = GROUP if graph.collapsed else TASK
        nodes = columns(graph)["nodes"]
        boxes = list(zip(nodes["x"], nodes["y"]))
        for i, (x1, y1) in enumerate(boxes):
            for x2, y2 in boxes[i + 1 :]:
                assert abs(x1 - x2) >= shape["width"] or abs(y1 - y2) >= shape["height"]


def test_the_bokeh_plot_is_redrawn_in_place():
    pytest.importorskip("bokeh")
    from ember.widgets.graph_plot import GraphPlot

    state = ClusterState()
    plot = GraphPlot()
    sources = dict(plot.sources)
    model = TaskGraphModel(threshold=10)
    chain(state, length=5)
    plot.update(model.build(state))
    assert len(plot.sources["nodes"].data["x"]) == 5 and len(plot.sources["edges"].data["x0"]) == 4
    chain(state, length=50, start=100)
    plot.update(model.build(state))
    assert plot.sources == sources  # the same sources, new data
    assert plot.sources["nodes"].data["label"] == ["add ×55"] and plot.sources["notes"].data["text"] == ["53"]
    assert plot.boxes.glyph.width == GROUP["width"]
    tools = {type(tool).__name__ for tool in plot.figure.tools}
    assert {"PanTool", "WheelZoomTool", "HoverTool"} <= tools


# --- the widget, real events ----------------------------------------------------------------------------
@ember.remote
def add(x, y):
    return x + y


def test_widget_collapses_a_real_chain_with_its_self_edge_and_resets(feed):
    pytest.importorskip("ipywidgets")
    from ember.widgets import TaskGraph

    graph = TaskGraph(threshold=10, feed=feed)
    ref = add.remote(0, 1)
    for _ in range(49):
        ref = add.remote(ref, 1)
    assert ember.get(ref) == 50
    wait_for(
        lambda: graph.graph.collapsed and graph.graph.counts["finished"] == 50,
        timeout=20,
        message="the chain's 50 calls, collapsed",
    )
    assert graph.graph.edges == [("add", "add", 49)]
    assert graph.plot.sources["notes"].data["text"] == ["49"]
    assert "collapsed by function" in graph.counts.value and "ember-count-finished'>50<" in graph.counts.value
    # Raising this view's threshold shows the calls one by one: 50 layers, as run.
    graph.threshold_box.value = 100
    assert not graph.graph.collapsed and sorted(n.layer for n in graph.graph.nodes) == list(range(50))
    info = graph.graph.nodes[-1].info
    assert info["node"] and info["pid"].isdigit() and info["duration"].endswith(("ms", " s"))
    graph.threshold_box.value = 10
    graph.reset_button.click()
    assert graph.graph.nodes == [] and not graph.graph.collapsed
    assert ember.get(add.remote(add.remote(1, 2), 3)) == 6
    wait_for(lambda: graph.graph.counts["finished"] == 2, timeout=20, message="the two new calls")
    assert not graph.graph.collapsed and len(graph.graph.edges) == 1
    assert "<circle" in graph.static_html()
    graph.close()
    assert not feed.listeners


def test_the_view_shows_a_small_graph_whole_and_a_huge_layer_from_its_top():
    state = ClusterState()
    chain(state, length=3)
    data = columns(TaskGraphModel().build(state))
    (x0, x1), (y0, y1) = view_ranges(data, False, 800, 420)
    assert x0 < min(data["nodes"]["x"]) and max(data["nodes"]["x"]) < x1 and y0 < 0 < y1
    assert (x1 - x0) / 800 == pytest.approx(1 / 62)  # not blown up to fill the plot
    state.apply(b"event:task", [submitted(1000 + n, "wide") for n in range(400)])
    data = columns(TaskGraphModel(threshold=1000).build(state))
    (x0, x1), (y0, y1) = view_ranges(data, False, 800, 420)
    assert (y1 - y0) / 420 == pytest.approx(1 / 8)  # readable: the top rows, the rest a pan away
    assert y1 > max(data["nodes"]["y"]) and y0 > min(data["nodes"]["y"])
