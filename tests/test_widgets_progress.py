"""progress(refs) and the live figures that must not mislead: the progress model with hand-made
events, the text line outside a notebook, and the running count and actor durations a real
cluster reports."""

import io
import re
import statistics

import pytest
from conftest import settled, wait_for

import ember
from ember import widgets
from ember.runtime.cluster_state import ClusterState
from ember.runtime.ids import TASK_ID_SIZE
from ember.widgets.progress_model import ProgressModel, _cells, fmt_duration, progress_html

pytest.importorskip("ipywidgets")


def tid(i: int) -> bytes:
    return i.to_bytes(TASK_ID_SIZE, "big")


def oid(i: int) -> bytes:
    return tid(i) + b"\x00\x01"


def folded(kind, i, name, submitted, started, ended, **fields):
    """One owner record of a task that went through every state within a batch."""
    return [kind, tid(i), ended, {"name": name, "times": {"submitted": submitted, "running": started}, **fields}]


def widths(html: str) -> dict:
    return {k: float(v) for k, v in re.findall(r"ember-progress-seg-(\w+)'.*?width:([\d.]+)%", html)}


# --- the model, with hand-made events -------------------------------------------------------------
def test_ten_of_500_failed_is_two_percent_red_not_a_red_bar():
    state = ClusterState()
    model = ProgressModel([oid(i) for i in range(500)], now=100.0)
    batch = [folded("finished", i, "square", 100.0, 100.5, 101.0) for i in range(470)]
    batch += [folded("failed", i, "square", 100.0, 100.5, 101.0, error="boom") for i in range(470, 480)]
    batch += [["running", tid(i), 101.0, {"name": "square", "times": {"submitted": 100.0}}] for i in range(480, 490)]
    batch += [["submitted", tid(i), 100.0, {"name": "square"}] for i in range(490, 500)]
    state.apply(b"event:task", batch)
    assert model.update(state, now=110.0)
    assert model.counts == {"finished": 470, "failed": 10, "running": 10, "pending": 10}
    assert model.shares()["failed"] == pytest.approx(0.02)
    html = progress_html(model, now=110.0)
    assert widths(html) == {"finished": 94.0, "failed": 2.0, "running": 2.0, "pending": 2.0}
    assert "ember-progress-percent'>96%<" in html and "ember-progress-title'>square<" in html
    # 480 done in 10 s: 48 tasks/s, 20 left: ETA under a second.
    assert model.rate(now=110.0) == pytest.approx(48.0)
    assert model.eta(now=110.0) == pytest.approx(20 / 48)
    line = model.line(now=110.0)
    assert line.startswith("square: [") and "96% 480/500 (10 failed, 10 running, 10 pending)" in line
    assert "10.0 s, 48 tasks/s ETA 417 ms" in line
    bar = re.search(r"\[(.*)\]", line).group(1)
    assert len(bar) == 24 and bar.count("!") == 1 and bar.count("#") == 21  # one red cell, not all


def test_final_line_says_finished_in_the_time_from_first_submission_to_last_end():
    state = ClusterState()
    model = ProgressModel([oid(1), oid(2), oid(3)], now=50.0)
    state.apply(b"event:task", [folded("finished", 1, "load", 49.0, 49.1, 51.0)])
    state.apply(b"event:task", [folded("finished", 2, "load", 49.0, 49.1, 52.0)])
    model.update(state, now=52.5)
    assert not model.finished and model.eta(now=52.5) is not None
    state.apply(b"event:task", [folded("failed", 3, "train", 49.5, 49.6, 53.5, error="x")])
    model.update(state, now=60.0)
    assert model.finished and model.elapsed(now=99.0) == pytest.approx(4.5)
    assert model.title() == "load, train"
    assert model.line(now=99.0) == "load, train: 3/3 (1 failed) Finished in 4.5 s, 0.67 tasks/s"
    html = progress_html(model)
    assert "ember-progress-final'>Finished in 4.5 s<" in html and "ETA" not in html


def test_refs_ready_before_the_bar_and_puts_count_as_finished():
    state = ClusterState()
    put = tid(9) + b"\xff\xff"
    model = ProgressModel([oid(1), put], names={tid(1): "known"}, now=10.0)
    model.mark_ready([oid(1)])
    model.update(state, now=11.0)
    assert model.counts["finished"] == 2 and model.finished and model.title() == "known"
    empty = ProgressModel([], now=1.0)
    empty.update(state, now=2.0)
    assert empty.finished and empty.percent() == 100.0 and empty.shares()["finished"] == 1.0


def test_running_and_pending_are_their_own_segments_and_names_are_listed():
    state = ClusterState()
    names = ["a", "b", "c", "d"]
    model = ProgressModel([oid(i) for i in range(8)], now=0.0)
    state.apply(b"event:task", [["submitted", tid(i), 0.0, {"name": names[i % 4]}] for i in range(8)])
    state.apply(b"event:task", [["running", tid(i), 0.5, {}] for i in range(2)])
    model.update(state, now=1.0)
    assert model.counts == {"finished": 0, "failed": 0, "running": 2, "pending": 6}
    assert model.rate(now=1.0) is None and model.eta(now=1.0) is None  # no rate before the first one ends
    assert model.title() == "a, b, c and 1 more"
    assert widths(progress_html(model, now=1.0)) == {"running": 25.0, "pending": 75.0}


def test_text_cells_add_up_and_keep_small_segments_visible():
    for shares in (
        {"finished": 0.999, "failed": 0.001, "running": 0, "pending": 0},
        {"finished": 0.5, "failed": 0.0, "running": 0.25, "pending": 0.25},
        {"finished": 0.0, "failed": 0.0, "running": 0.0, "pending": 1.0},
    ):
        cells = _cells(shares, 24)
        assert sum(cells.values()) == 24
        assert all(cells[s] >= 1 for s, share in shares.items() if share > 0)
    assert [fmt_duration(s) for s in (0.25, 12.34, 245, 7380)] == ["250 ms", "12.3 s", "4m 05s", "2h 03m"]


# --- on a real cluster ----------------------------------------------------------------------------
@ember.remote
def square(x):
    return x * x


@ember.remote
def fail():
    raise RuntimeError("broken on purpose")


@ember.remote
def slow_square(x):
    import time

    time.sleep(0.3)  # still running when the bar is made: its name comes from the owner or the events
    return x * x




def test_widget_and_text_line_after_real_tasks(feed):
    refs = [square.remote(i) for i in range(9)] + [fail.remote()]
    bar = widgets.Progress(refs, feed=feed)
    text_out = io.StringIO()
    line = widgets.TextProgress(refs, feed=feed, stream=text_out)
    ember.wait(refs, num_returns=len(refs))
    final = bar.wait(timeout=20)
    assert final.startswith("square, fail: 10/10 (1 failed) Finished in ")
    assert bar.progress.counts == {"finished": 9, "failed": 1, "running": 0, "pending": 0}
    assert widths(bar.html.value) == {"finished": 90.0, "failed": 10.0}
    assert "ember-progress-final'>Finished in" in bar.html.value
    # The same counts and names; the times may differ by when each model first saw the tasks.
    head = final.split(" Finished in ")[0]
    assert line.wait(timeout=20).startswith(head)
    printed = text_out.getvalue().splitlines()
    assert printed[-1].startswith(head) and all("\r" not in p for p in printed)  # not a terminal: whole lines
    assert line.update not in feed.listeners
    bar.close()
    assert not feed.listeners


def test_progress_outside_a_kernel_is_the_text_line(cluster):
    ref = slow_square.remote(3)
    shown = widgets.progress([ref])
    assert isinstance(shown, widgets.TextProgress)
    assert shown.wait(timeout=20).startswith("slow_square: 1/1 Finished in")


@ember.remote
class Napper:
    def nap(self):
        import time

        time.sleep(0.01)
        return 1


def test_actor_method_duration_is_its_run_time_not_its_queue_time(feed):
    """40 calls sent at once run one after another on the actor: the last waits there ~0.4 s, but
    each ran ~10 ms, and that is what its duration (the graph's hover mean) must say."""
    napper = Napper.remote()
    ember.get(napper.nap.remote())
    # Cleared once the warm-up call is counted: the head's summaries say what ended, not when.
    wait_for(lambda: feed.state.summary()["finished"] >= 1, timeout=20, message="the warm-up call's events")
    wait_for(settled(lambda: feed.state.summary()), timeout=20, message="the task counts to settle")
    with feed.lock:
        feed.state.clear_tasks()
    assert sum(ember.get([napper.nap.remote() for _ in range(40)])) == 40
    wait_for(lambda: feed.state.summary()["finished"] == 40, timeout=20, message="the 40 calls' events")
    with feed.lock:
        durations = [record.duration for record in feed.state.tasks.values()]
        ((name, (total, count)),) = feed.state.durations.items()
    assert name.endswith("nap") and count == 40
    # Queue time counted as run time would give a mean of ~0.2 s and a median of ~0.2 s.
    assert 0.005 <= statistics.median(durations) <= 0.1
    assert 0.005 <= total / count <= 0.1
    ember.kill(napper)


# --- what is really running -----------------------------------------------------------------------
def test_running_counts_short_tasks_reported_only_once_they_ended():
    state = ClusterState()
    # Two CPUs busy with 50 ms tasks for 2 s, each reported in one record after it ended; more queued.
    batch = [
        folded("finished", cpu * 1000 + k, "short", 0.0, 10.0 + k * 0.05, 10.0 + (k + 1) * 0.05)
        for cpu in range(2)
        for k in range(40)
    ]
    state.apply(b"event:task", batch + [["submitted", tid(99_999), 10.0, {"name": "short"}]])
    assert state.summary()["running"] == 0  # what the counts alone said
    assert state.running_now(now=11.5) == 2
    state.apply(b"event:task", [["running", tid(99_999), 11.9, {}]])
    assert state.running_now(now=11.9) == 2  # the two CPUs' short tasks still count, not on top of it
    assert state.running_now(now=20.0) == 1  # the window moved past the short ones
    state.apply(b"event:task", [["finished", tid(99_999), 21.0, {}]])
    assert state.running_now(now=21.0) == 0  # nothing queued nor running: all ended


@ember.remote(num_cpus=2)
def busy_short():
    import time

    time.sleep(0.05)


@ember.remote(num_cpus=2)
def busy_until(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)


def running_shown(view) -> int:
    return int(re.search(r"ember-count-running'>(\d+)<", view.html.value).group(1))


def test_cluster_widget_shows_two_running_while_two_tasks_hold_the_cpus(feed, tmp_path):
    """Two tasks of two CPUs each fill the 4-CPU cluster: long ones, then a stream of 50 ms ones."""
    view = widgets.Cluster(feed=feed)
    release = tmp_path / "release"
    held = [busy_until.remote(str(release)) for _ in range(2)]
    try:
        wait_for(lambda: running_shown(view) == 2, timeout=20, message="2 running while two tasks hold the CPUs")
        wait_for(lambda: re.search(r"ember-cpu-text'>4 / 4 CPU<", view.html.value), timeout=20, message="4 CPUs")
    finally:
        release.touch()  # a failure above must not leave the CPUs held for the tests after this one
    ember.get(held)
    refs = [busy_short.remote() for _ in range(140)]  # 3.5 s of work at two at a time
    seen = []
    while len(ember.wait(refs, num_returns=len(refs), timeout=0.05)[0]) < 120:
        if feed.state.summary()["finished"] > 50:  # a window's worth in, while the stream flows
            seen.append(running_shown(view))
    ember.get(refs)
    assert seen and statistics.median(seen) == 2, seen
    wait_for(lambda: running_shown(view) == 0, timeout=20, message="0 running once all ended")
    view.close()
