"""ember.data's progress: the per-execution model and widget, the log lines outside a kernel, the off switch."""

import io
import itertools

import pytest
from conftest import ember_processes, shared_cluster_pids, wait_for

import ember.data as rd
from ember.data import progress
from ember.data.executor import Executor


class Recorder(progress.TextReporter):
    """The text reporter on a StringIO, also keeping the operators' states at every draw."""

    def __init__(self, period: float = progress.TEXT_PERIOD, clock=None):
        super().__init__(stream=io.StringIO(), **({"clock": clock} if clock else {}))
        self.period = period
        self.calls = 0
        self.seen_states: list = []

    def update(self, executor) -> None:
        self.calls += 1
        super().update(executor)

    def draw(self, model) -> None:
        self.seen_states.append([model.state(i) for i in range(len(model.rows))])
        super().draw(model)


def run(ds, reporter) -> list:
    """Consume ``ds`` through an executor that reports to ``reporter``; returns the block metadata."""
    return [meta for _, meta in Executor(ds._physical(), progress=reporter).run()]


@pytest.fixture
def context():
    """The current DataContext, with its budget and progress switch put back after the test."""
    ctx = rd.DataContext.get_current()
    limits = ctx.execution_options.resource_limits
    saved = (limits.object_store_memory, ctx.enable_progress_bars)
    yield ctx
    limits.object_store_memory, ctx.enable_progress_bars = saved


def ember_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith(progress.PREFIX)]


def test_model_rows_after_a_known_pipeline(cluster):
    # Three operators: a different resource shape stops fusion on both sides of the MapBatches.
    ds = (
        rd.range(1000, override_num_blocks=5)
        .map(lambda r: {"id": r["id"] + 1})
        .map_batches(lambda b: {"id": b["id"] * 2}, num_cpus=0.5)
        .filter(lambda r: r["id"] % 4 == 0)
    )
    reporter = Recorder()
    metas = run(ds, reporter)
    assert sum(m.num_rows for m in metas) == 500
    model = reporter.model
    assert model.finished and model.error is None
    assert [r.name for r in model.rows] == ["ReadRange->Map(<lambda>)", "MapBatches(<lambda>)", "Filter(<lambda>)"]
    assert [(r.rows, r.blocks, r.tasks) for r in model.rows] == [(1000, 5, 5), (1000, 5, 5), (500, 5, 5)]
    # At the end nothing runs or sits in the store, and the default budget never held anything back.
    assert all(r.done and r.tasks_active == 0 and r.bytes_in_flight == 0 for r in model.rows)
    assert not any(r.ever_throttled for r in model.rows)
    assert [model.state(i) for i in range(3)] == ["done"] * 3
    assert model.output() == (500, 5)
    assert model.throughput(2) > 0

    page = model.html()
    assert page.count("class='ember-data-op'") == 3
    assert "<td class='ember-num ember-data-rows'>1,000</td>" in page
    assert "<td class='ember-num ember-data-rows'>500</td>" in page
    assert "ember-data-done" in page and "Finished in" in page
    assert "var(--jp-" not in page  # the theme lives in STYLE, sent once beside the view
    # Under a kernel it is shown with a text/html snapshot; the final log lines say the same.
    lines = reporter.stream.getvalue().splitlines()
    assert lines[0].startswith("ember.data: ReadRange->Map(<lambda>): 1,000 rows, 5 blocks, 5 tasks,")
    assert lines[1].startswith("ember.data: MapBatches(<lambda>): 1,000 rows, 5 blocks, 5 tasks,")
    assert lines[2].startswith("ember.data: Filter(<lambda>): 500 rows, 5 blocks, 5 tasks,")
    assert lines[3].startswith("ember.data: Finished in ") and "500 rows in 5 blocks out" in lines[3]
    assert len(lines) == 4


def test_a_tiny_budget_shows_the_operator_throttled(cluster, context):
    rows_per_block, blocks = 4096, 12
    context.execution_options.resource_limits.object_store_memory = rows_per_block * 8  # one block
    ds = rd.range(rows_per_block * blocks, override_num_blocks=blocks).map_batches(lambda b: {"id": b["id"] + 1})
    reporter = Recorder(period=0)  # draw at every scheduling pass
    assert sum(m.num_rows for m in run(ds, reporter)) == rows_per_block * blocks
    model = reporter.model
    assert model.rows[0].ever_throttled
    assert ["throttled"] in reporter.seen_states  # seen live, between blocks
    assert model.state(0) == "done"
    assert "(was throttled by the budget)" in reporter.stream.getvalue()
    assert "ember-data-throttled" not in model.html()  # over now


def test_log_lines_outside_a_kernel(cluster, context, capfd):
    ds = rd.range(300, override_num_blocks=3).map_batches(lambda b: {"id": b["id"] * 2})
    assert ds.count() == 300
    assert ds.take_all()[-1] == {"id": 598}
    err = capfd.readouterr().err
    lines = ember_lines(err)
    # Two executions, short ones: no progress line, one line per operator and how each ended.
    assert len(lines) == 4, err
    assert lines[0].startswith("ember.data: ReadRange->MapBatches(<lambda>): 300 rows, 3 blocks, 3 tasks,")
    assert lines[1].startswith("ember.data: Finished in ")
    assert lines[3].startswith("ember.data: Finished in ")
    assert not any("\r" in line or "running" in line for line in lines)


def test_a_named_dataset_names_its_progress_and_explain_shows_the_pushdown(cluster, context, capfd):
    ds = rd.range(100, override_num_blocks=2).select_columns(["id"]).limit(5)
    assert ds.name is None
    ds.set_name("first five")
    assert ds.name == "first five" and len(ds.take_all()) == 5
    lines = ember_lines(capfd.readouterr().err)
    assert lines and all(line.startswith("ember.data: first five: ") for line in lines)
    model = progress.ExecutionProgress(name="a <b> name")
    assert "Dataset a &lt;b&gt; name execution" in model.html()
    with pytest.raises(TypeError, match="name must be a str"):
        ds.set_name(3)
    ds.explain()
    out = capfd.readouterr().out
    logical, optimized, physical = out.split("\n\n")
    assert logical.splitlines() == [
        "-------- Logical Plan --------",
        "Limit[5]",
        "+- SelectColumns(['id'])",
        "   +- ReadRange",
    ]
    assert optimized.splitlines()[-1] == "   +- ReadRange (columns=['id'], limit=5)"  # pushed into the read
    assert physical.splitlines()[1:] == ["Limit[5]", "+- ReadRange->SelectColumns(['id']) (columns=['id'], limit=5)"]


def test_progress_lines_are_spaced_by_the_period(cluster):
    # A clock that moves one second per reading: the period, not the machine's speed, spaces the lines.
    ticks = itertools.count()
    reporter = Recorder(clock=lambda: float(next(ticks)))
    ds = rd.range(2000, override_num_blocks=20).map_batches(lambda b: {"id": b["id"] + 1}, concurrency=1)
    run(ds, reporter)
    lines = reporter.stream.getvalue().splitlines()
    running = [line for line in lines if line.startswith("ember.data: running ")]
    assert running, lines
    # The first line waits a whole period; then at most one per period (5 readings of the clock).
    assert len(running) <= reporter.calls // int(progress.TEXT_PERIOD)
    # A concurrency cap is a different shape: the read and the map are two operators, on one line.
    assert all("| ReadRange: " in line and " | MapBatches(<lambda>): " in line for line in running)
    assert lines[-1].startswith("ember.data: Finished in ")


def test_a_failed_execution_ends_its_progress_with_the_error(cluster, capfd):
    def boom(batch):
        raise ValueError("bad block")

    with pytest.raises(Exception, match="bad block"):
        rd.range(10, override_num_blocks=2).map_batches(boom).take_all()
    lines = ember_lines(capfd.readouterr().err)
    assert lines[-1].startswith("ember.data: Failed after ") and "bad block" in lines[-1]


def test_no_widget_or_log_when_progress_bars_are_disabled(cluster, context, capfd):
    context.enable_progress_bars = False
    assert progress.reporter() is None
    ds = rd.range(100, override_num_blocks=2).map_batches(lambda b: b)
    assert ds.count() == 100
    assert ember_lines(capfd.readouterr().err) == []


def test_one_widget_per_execution_in_a_kernel():
    pytest.importorskip("ipykernel")
    from kernel_session import KernelSession

    kernel = KernelSession()
    try:
        kernel.execute("import ember, ember.data as rd\nember.init(num_cpus=2)")
        counted = kernel.execute("rd.range(200, override_num_blocks=4).map_batches(lambda b: b).count()")
        kernel.execute("rd.DataContext.get_current().enable_progress_bars = False")
        quiet = kernel.execute("rd.range(10).map_batches(lambda b: b).count()")
        kernel.execute("ember.shutdown()")
    finally:
        kernel.shutdown()
    wait_for(
        lambda: not [p for p in ember_processes() if p.pid not in shared_cluster_pids()],
        timeout=15,
        message="the kernel's cluster to go",
    )

    shown = [m["content"] for m in counted.messages() if m["msg_type"] == "display_data"]
    renewed = [m["content"] for m in counted.messages() if m["msg_type"] == "update_display_data"]
    assert len(shown) == 1, counted.outputs()
    assert "application/vnd.jupyter.widget-view+json" in shown[0]["data"]
    assert "Dataset execution" in shown[0]["data"]["text/html"]
    # The snapshot a saved notebook keeps is renewed with the totals when the execution ends.
    assert len(renewed) == 1 and renewed[0]["transient"] == shown[0]["transient"]
    final = renewed[0]["data"]
    assert "Finished in" in final["text/html"] and "200 rows in 4 blocks out" in final["text/plain"]
    assert counted.result()["text/plain"] == "200"
    assert progress.PREFIX not in counted.stderr()  # no log lines under a widget
    assert not [m for m in quiet.messages() if m["msg_type"] in ("display_data", "update_display_data")]
