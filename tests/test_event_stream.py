"""The widgets' event stream: throttling, aggregation, task-graph collapse, output routing (plain
classes, hand-made events), and the real feed against the shared cluster."""

import time

import msgpack
import pytest
from conftest import wait_for

import ember
from ember.kernel_ext.remote_cell import CellProgram, run_cell
from ember.kernel_ext.routing import OutputRouter
from ember.runtime import transport
from ember.runtime.client import core_client
from ember.runtime.cluster_state import ClusterState
from ember.runtime.ids import return_object_id
from ember.runtime.task_context import output_tag
from ember.widgets.events import EventFeed
from ember.widgets.graph import TaskGraphModel, to_svg
from ember.widgets.throttle import Throttle


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# --- throttle ------------------------------------------------------------------------------------------
def test_throttle_allows_at_most_one_update_per_period_and_loses_none():
    clock = Clock()
    throttle = Throttle(0.1, clock)
    assert throttle.due() is None and not throttle.take()  # nothing changed: nothing to send
    throttle.note()
    assert throttle.due() == 0 and throttle.take()  # the first change goes out at once
    throttle.note()
    clock.now += 0.04
    assert not throttle.take()  # too soon
    assert throttle.due() == pytest.approx(0.06)
    for _ in range(50):  # a burst coalesces
        throttle.note()
    clock.now += 0.06
    assert throttle.take()
    assert not throttle.take() and throttle.due() is None


def test_throttle_rate_over_a_simulated_second():
    clock = Clock()
    throttle = Throttle(0.1, clock)
    sent = 0
    for _ in range(1000):  # a change every millisecond for one second
        throttle.note()
        sent += throttle.take()
        clock.now += 0.001
    assert 9 <= sent <= 10


# --- aggregation ---------------------------------------------------------------------------------------
def task(n: int) -> bytes:
    return n.to_bytes(14, "little")


def submitted(n, name, deps=(), when=1.0):
    return [
        "submitted",
        task(n),
        when,
        {"name": name, "parent": None, "deps": [return_object_id(task(d), 0) for d in deps]},
    ]


def test_state_counts_states_and_keeps_dependencies():
    state = ClusterState()
    events = [submitted(1, "load"), submitted(2, "load"), submitted(3, "train", deps=(1, 2))]
    events += [["running", task(1), 2.0, {"node": b"\x01" * 4, "pid": 7}], ["finished", task(1), 2.5, {}]]
    events += [["running", task(2), 2.0, {"node": b"\x01" * 4, "pid": 8}], ["failed", task(2), 3.0, {"error": "E: x"}]]
    state.apply(b"event:task", events)
    assert state.summary() == {"pending": 1, "running": 0, "finished": 1, "failed": 1}
    assert state.tasks[task(3)].deps == [task(1), task(2)]
    assert state.tasks[task(1)].duration == pytest.approx(0.5)
    assert state.tasks[task(2)].error == "E: x"
    assert state.workers() == {"01010101": 2}
    assert state.by_name["load"]["finished"] == 1 and state.by_name["train"]["pending"] == 1


def test_state_takes_a_tasks_states_folded_into_one_event():
    # What an owner sends for tasks that went through several states within one batch.
    folded, separate = ClusterState(), ClusterState()
    merged = {"name": "train", "deps": [return_object_id(task(1), 0)], "node": b"\x01" * 4, "pid": 7}
    for state in (folded, separate):
        state.apply(b"event:task", [submitted(1, "load")])
    folded.apply(
        b"event:task",
        [
            ["failed", task(2), 3.0, dict(merged, error="E: x", times={"submitted": 1.0, "running": 2.0})],
            ["running", task(3), 2.0, dict(merged, times={"submitted": 1.0})],
        ],
    )
    separate.apply(
        b"event:task",
        [
            submitted(2, "train", deps=(1,)),
            ["running", task(2), 2.0, {"node": b"\x01" * 4, "pid": 7}],
            ["failed", task(2), 3.0, {"error": "E: x"}],
            submitted(3, "train", deps=(1,)),
            ["running", task(3), 2.0, {"node": b"\x01" * 4, "pid": 7}],
        ],
    )
    for state in (folded, separate):
        assert state.summary() == {"pending": 1, "running": 1, "finished": 0, "failed": 1}
        record = state.tasks[task(2)]
        assert (record.deps, record.error, record.duration, record.node) == ([task(1)], "E: x", 1.0, "01010101")
        assert state.name_edges[("load", "train")] == 2 and state.durations["train"] == [1.0, 1]


def test_state_retry_runs_again_and_late_submitted_event():
    state = ClusterState()
    state.apply(b"event:task", [["running", task(1), 1.0, {"node": b"n", "pid": 1}]])  # submitted missed
    state.apply(b"event:task", [["running", task(1), 2.0, {"node": b"n", "pid": 2}], ["finished", task(1), 3, {}]])
    assert state.summary()["finished"] == 1 and sum(state.summary().values()) == 1


def test_state_forgets_oldest_ended_tasks_but_counts_stay():
    state = ClusterState(max_tasks=10)
    for n in range(30):
        state.apply(b"event:task", [submitted(n, "f"), ["finished", task(n), 2.0, {}]])
    state.apply(b"event:task", [submitted(99, "g")])
    assert len(state.tasks) == 10 and task(99) in state.tasks
    assert state.summary() == {"pending": 1, "running": 0, "finished": 30, "failed": 0}


def test_clear_ignores_events_stamped_before_it():
    state = ClusterState()
    state.apply(b"event:task", [submitted(1, "f", when=1.0)])
    state.clear_tasks(now=5.0)
    state.apply(b"event:task", [["finished", task(1), 4.0, {}], submitted(2, "g", when=6.0)])
    assert state.summary() == {"pending": 1, "running": 0, "finished": 0, "failed": 0}


def head_summary(state: ClusterState) -> dict:
    """A summary as it reaches a kernel: through msgpack, as the head publishes it."""
    return msgpack.unpackb(msgpack.packb(state.summary_message(now=10.0)), raw=False, strict_map_key=False)


def test_summary_carries_the_heads_aggregates_from_what_a_kernel_started_to_look():
    head, kernel = ClusterState(), ClusterState()
    before = [submitted(1, "load"), ["finished", task(1), 2.0, {"times": {"running": 1.5}}]]
    head.apply(b"event:task", before + [submitted(2, "load")])  # one ended, one still pending
    kernel.load_summary(head_summary(head))  # the kernel starts looking now
    assert kernel.summarized and kernel.summary() == {"pending": 0, "running": 0, "finished": 0, "failed": 0}
    head.apply(b"event:task", [submitted(3, "train", deps=(1, 2)), submitted(4, "train", deps=(3,))])
    head.apply(b"event:task", [["finished", task(2), 3.0, {"times": {"running": 2.5}}]])
    head.apply(b"event:task", [["failed", task(3), 4.0, {"times": {"running": 3.0}, "error": "E"}]])
    kernel.load_summary(head_summary(head))
    # Net of what was pending when it looked: the old pending task ended as a new one came, so the
    # total reads 0 pending (per function it is exact here: the new one is another function's).
    assert kernel.summary() == {"pending": 0, "running": 0, "finished": 1, "failed": 1}
    assert kernel.by_name["load"]["finished"] == 1 and kernel.by_name["train"] == {
        "pending": 1,
        "running": 0,
        "finished": 0,
        "failed": 1,
    }
    # Edges between functions, a function's to itself included; the one ended before looking is gone.
    assert kernel.name_edges == {("load", "train"): 2, ("train", "train"): 1}
    assert kernel.durations["load"] == [pytest.approx(0.5), 1] and kernel.durations["train"] == [1.0, 1]
    # Task events applied while summarized keep records only: nothing is counted twice.
    kernel.apply(b"event:task", [submitted(5, "train"), ["finished", task(5), 5.0, {}]])
    assert kernel.summary()["finished"] == 1 and kernel.tasks[task(5)].state == "finished"
    # A clear forgets what the summaries counted so far.
    kernel.clear_tasks()
    assert kernel.summary() == {"pending": 0, "running": 0, "finished": 0, "failed": 0} and not kernel.tasks


def test_an_older_summary_arriving_late_does_not_roll_the_counts_back():
    head, kernel = ClusterState(), ClusterState()
    kernel.load_summary(head_summary(head))
    head.apply(b"event:task", [submitted(1, "f")])
    published = head_summary(head)  # on its way through the hub...
    head.apply(b"event:task", [["finished", task(1), 2.0, {"times": {"running": 1.5}}]])
    kernel.load_summary(head_summary(head))  # ...overtaken by one the kernel asked for
    kernel.load_summary(published)
    assert kernel.summary() == {"pending": 0, "running": 0, "finished": 1, "failed": 0}


def test_a_finished_jobs_unended_tasks_count_as_failed_not_running_for_good():
    head = ClusterState()
    mine = {"name": "f", "job": b"j1"}
    head.apply(b"event:task", [["submitted", task(1), 1.0, mine], ["submitted", task(2), 1.0, mine]])
    head.apply(b"event:task", [["running", task(2), 1.5, {"node": b"n", "pid": 9}]])
    head.apply(b"event:task", [["submitted", task(3), 1.0, {"name": "f", "job": b"j2"}]])
    head.end_job(b"j1", 2.0)  # its driver was SIGKILLed: nobody will report these two again
    assert head.summary() == {"pending": 1, "running": 0, "finished": 0, "failed": 2}
    assert head.tasks[task(2)].error.startswith("OwnerDiedError") and head.tasks[task(3)].state == "pending"


def test_summary_names_what_made_the_largest_objects():
    head, kernel = ClusterState(), ClusterState()
    head.apply(b"event:task", [submitted(7, "make_array")])
    message = head.summary_message(objects=[return_object_id(task(7), 0), return_object_id(task(8), 0)])
    kernel.load_summary(msgpack.unpackb(msgpack.packb(message), raw=False))
    assert kernel.creator_of(return_object_id(task(7), 0)) == "make_array"
    assert kernel.creator_of(return_object_id(task(8), 0)) == "?"


def test_state_nodes_and_actors_tolerate_missing_fields():
    state = ClusterState()
    state.apply(b"event:node", {"node_id": b"\xab" * 4, "available": {"CPU": 1.0}, "store": {"used": 5}})
    state.apply(b"event:node", {"node_id": b"\xab" * 4, "gpus": [{"gpu_id": 0, "holder": None, "share": 0}]})
    state.apply(b"event:actor", {"actor_id": b"\x01", "state": "ALIVE", "name": None, "class_name": "A"})
    state.apply(b"event:unknown", {"x": 1})
    node = state.nodes["abababab"]
    assert node["available"] == {"CPU": 1.0} and node["gpus"][0]["gpu_id"] == 0
    assert state.actors["01"]["state"] == "ALIVE"


# --- task graph ----------------------------------------------------------------------------------------
def test_graph_draws_tasks_and_dependency_edges_below_the_threshold():
    state = ClusterState()
    state.apply(b"event:task", [submitted(1, "a"), submitted(2, "a"), submitted(3, "b", deps=(1, 2))])
    graph = TaskGraphModel(threshold=10).build(state)
    assert not graph.collapsed and len(graph.nodes) == 3
    assert sorted(graph.edges) == [(task(1), task(3), 1), (task(2), task(3), 1)]
    layers = {node.key: node.layer for node in graph.nodes}
    assert layers == {task(1): 0, task(2): 0, task(3): 1}
    svg = to_svg(graph)
    assert svg.count("<circle") == 3 and svg.count("<line") == 2 and "<title>b [pending]" in svg


def test_graph_collapses_by_function_past_the_threshold():
    state = ClusterState()
    events = [submitted(n, "map") for n in range(5000)]
    events += [submitted(10_000 + n, "reduce", deps=(2 * n, 2 * n + 1)) for n in range(100)]
    events += [["finished", task(n), 2.0, {}] for n in range(4000)]
    events += [["failed", task(4000), 2.0, {"error": "E"}]]
    state.apply(b"event:task", events)
    graph = TaskGraphModel(threshold=150).build(state)
    assert graph.collapsed and graph.total == 5100
    groups = {node.key: node for node in graph.nodes}
    assert set(groups) == {"map", "reduce"}
    assert groups["map"].counts == {"pending": 999, "finished": 4000, "failed": 1}
    assert groups["map"].state == "failed"
    assert graph.edges == [("map", "reduce", 200)]
    assert groups["reduce"].layer == 1
    assert to_svg(graph).count("<g class='ember-group") == 2


# --- output routing ------------------------------------------------------------------------------------
def test_router_sends_lines_to_the_tagged_cell_with_the_right_label():
    sent = []
    router = OutputRouter(lambda parent, stream, text: sent.append((parent, stream, text)))
    router.begin_cell("a", {"id": "A"})
    router.begin_cell("b", {"id": "B"})
    router.handle("stdout", "f", 5, "from a", "a")
    remote = router.remote_tag("a")
    router.handle("stderr", "run_cell", 5, "plain", remote)
    router.handle("stdout", "thread", 6, "untagged", None)
    assert sent == [
        ({"id": "A"}, "stdout", "(f pid=5) from a\n"),
        ({"id": "A"}, "stderr", "plain\n"),
        ({"id": "B"}, "stdout", "(thread pid=6) untagged\n"),  # no tag: the newest cell
    ]
    assert router.wait_delivered(remote, 1, timeout=0) and not router.wait_delivered(remote, 2, timeout=0)


def test_router_groups_all_nodes_output_per_node():
    sent = []
    router = OutputRouter(lambda parent, stream, text: sent.append((parent, stream, text)))
    router.begin_cell("a", {"id": "A"})
    one, two = router.remote_tag("a", "node0 aa"), router.remote_tag("a", "node1 bb")
    router.handle("stdout", "f", 1, "x1", one)
    router.handle("stdout", "f", 2, "y1", two)
    router.handle("stdout", "f", 1, "x2", one)
    assert sent == []  # held until each node's task ends
    router.flush_group(two)
    router.flush_group(one)
    assert [text for _, _, text in sent] == ["[stdout:node1 bb]\ny1\n", "[stdout:node0 aa]\nx1\nx2\n"]


# --- %%remote cell analysis (runs the worker side in-process) ------------------------------------------
def test_cell_program_finds_reads_and_assignments():
    program = CellProgram("import numpy as np\ny = x + 1\nfor i in range(3):\n    pass\ndef g(a):\n    b = 1\ny", "<c>")
    assert {"x", "range", "y"} <= program.reads
    assert program.assigns == ["np", "y", "i", "g"]
    assert program.inputs({"x": 1, "range": 2, "unused": 3, "In": [], "_": 0}) == {"x": 1, "range": 2}
    with pytest.raises(SyntaxError):
        CellProgram("def (:", "<c>")


def test_run_cell_returns_value_names_and_cell_line_numbers():
    ok = run_cell(CellProgram("y = x * 2\nimport os\ny + 1", "<cell ok>").payload({"x": 4}))
    assert ok["value"] == 9 and "error" not in ok
    import cloudpickle

    assert set(cloudpickle.loads(ok["names"])) == {"y", "os"}
    failed = run_cell(CellProgram("a = 1\n\nraise KeyError(a)", "<cell bad>").payload({}))
    ename, evalue, lines = failed["error"]
    assert ename == "KeyError" and 'File "<cell bad>", line 4' in lines[0] and "raise KeyError(a)" in lines[0]
    with pytest.raises(KeyError):
        run_cell(CellProgram("raise KeyError(1)", "<c>").payload({}), blocking=False)


# --- the real feed on the shared cluster ----------------------------------------------------------------
@ember.remote
def ok(x):
    return x


@ember.remote
def bad():
    raise ValueError("no")


def test_feed_sees_tasks_finish_and_fail_on_the_real_cluster(cluster):
    feed = EventFeed(core_client.current_client().publisher_address).start()
    rounds = []
    feed.add_listener(lambda state: rounds.append(dict(state.summary())))
    feed.want_tasks("test", True, wait=10)  # records (tags, errors, nodes) come from every task's events
    assert feed.taking_tasks
    try:
        # The hub is PUB/SUB: wait until the subscription is live (a probe's events arrive) first.
        wait_for(lambda: ember.get(ok.remote(0)) == 0 and feed.state.summary()["finished"] > 0, timeout=20)
        token = output_tag.set("workload")  # tasks carry the tag: the count ignores late probes' events
        try:
            refs = [ok.remote(i) for i in range(3)] + [bad.remote()]
        finally:
            output_tag.reset(token)
        ember.wait(refs, num_returns=4)
        expected = {"pending": 0, "running": 0, "finished": 3, "failed": 1}
        wait_for(lambda: feed.state.summary("workload") == expected, timeout=20)
        mine = [r for r in feed.state.tasks.values() if r.tag == "workload"]
        failed = [r for r in mine if r.state == "failed"]
        assert failed[0].name.endswith("bad") and failed[0].error.startswith("ValueError: no")
        assert all(r.node and r.duration is not None for r in mine)
        wait_for(lambda: rounds and rounds[-1]["failed"] >= 1, timeout=10, message="listeners to see the end state")
        assert feed.state.nodes, "node snapshot"
    finally:
        feed.stop()


def test_busy_cluster_is_counted_from_summaries_without_every_tasks_events(cluster):
    """Past its busy rate the feed stops decoding every task's events (it cost the driver's own
    throughput) and counts from the head's summaries, exactly; a view that asks gets them again."""
    feed = EventFeed(core_client.current_client().publisher_address, busy_rate=50).start()
    try:
        assert feed.state.summarized
        wait_for(lambda: feed.taking_tasks, timeout=10, message="calm: every task's events, for views made later")
        refs = [ok.remote(i) for i in range(300)]
        wait_for(lambda: not feed.taking_tasks, timeout=20, message="the feed to stop taking task events")
        assert ember.get(refs) == list(range(300))
        wait_for(lambda: feed.state.summary()["finished"] == 300, timeout=20, message="every task counted")
        assert len(feed.state.tasks) < 300  # records were dropped, the counts are exact all the same
        feed.want_tasks("viewer", True, wait=10)
        assert feed.taking_tasks
        feed.want_tasks("viewer", False)
        wait_for(lambda: feed.taking_tasks, timeout=20, message="calm again: task events taken for everyone")
    finally:
        feed.stop()


def test_refresh_counts_this_processs_own_tasks_at_once(cluster):
    """``%ember status`` reads the counts right after a cell's tasks ended, while their events may
    still be held by the owner (batched for 0.1 s) or not yet folded into a published summary:
    ``refresh`` sends them and loads the head's summary, so each one is counted without waiting."""
    feed = EventFeed(core_client.current_client().publisher_address).start()
    try:
        for size in (1, 20, 5):
            feed.refresh()
            before = feed.state.summary()
            ember.get([ok.remote(i) for i in range(size)])
            feed.refresh()
            after = feed.state.summary()
            assert (after["finished"] - before["finished"], after["failed"] - before["failed"]) == (size, 0)
    finally:
        feed.stop()


def test_feed_throttles_listener_rounds_under_an_event_flood(cluster):
    """500 event batches in a burst reach the listeners as a few rounds, not 500."""
    publisher, address = transport.bind_publisher()
    feed = EventFeed(address, rate=10).start()
    feed.want_tasks("test", True, wait=10)
    try:
        probe = [["submitted", task(0), 1.0, {"name": "probe"}]]
        wait_for(
            lambda: publisher.send_multipart([b"event:task", msgpack.packb(probe)]) or feed.state.tasks, timeout=10
        )
        seen_before, started = feed.updates, time.monotonic()
        for n in range(1, 501):
            publisher.send_multipart([b"event:task", msgpack.packb([["submitted", task(n), 1.0, {"name": "f"}]])])
        wait_for(lambda: len(feed.state.tasks) == 501, timeout=10)
        wait_for(lambda: feed.throttle.due() is None, timeout=5, message="the last round to go out")
        elapsed = time.monotonic() - started
        assert feed.updates - seen_before <= 10 * elapsed + 2  # at most 10 a second, whatever the burst
        publisher.send_multipart([b"event:task", b"\xc1 not msgpack"])  # dropped, the feed goes on
        publisher.send_multipart([b"event:task", msgpack.packb([["finished", task(1), 2.0, {}]])])
        wait_for(lambda: feed.state.summary()["finished"] == 1, timeout=10)
    finally:
        feed.stop()
        publisher.close(0)
