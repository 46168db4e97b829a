"""The head's per-worker time slots behind the dashboard's task stream: a plain object, fed records."""

import pytest

from ember.runtime.cluster_state import FAILED, FINISHED, RUNNING, TaskRecord
from ember.runtime.head.task_activity import FORGET_S, TaskActivity


def _record(name, pid, started, ended=None, state=FINISHED, node="n1"):
    record = TaskRecord(b"t" * 24, name)
    record.node, record.pid, record.started, record.ended = node, pid, started, ended
    record.state = state if ended is not None else RUNNING
    return record


def test_many_short_tasks_are_a_few_bars_with_exact_counts():
    activity = TaskActivity(window=30.0, slot=0.25)
    for i in range(10_000):  # 1 ms tasks back to back for 10 s: one steady run
        activity.ended(_record("noop", 7, 1000.0 + i * 0.001, 1000.0 + (i + 1) * 0.001))
    runs = activity.snapshot(1010.0)["workers"][0]["runs"]
    assert len(runs) == 1 and runs[0][:3] == [1000.0, 1010.0, "noop"]
    assert runs[0][3] == pytest.approx(1.0) and runs[0][4] == 10_000 and runs[0][5] == 0


def test_idle_gaps_functions_and_failures_split_runs():
    activity = TaskActivity(window=30.0, slot=0.25)
    activity.ended(_record("f", 7, 100.0, 101.0))
    activity.ended(_record("g", 7, 101.0, 101.5, state=FAILED))
    activity.ended(_record("f", 7, 105.0, 105.1))  # a tenth of its slot
    runs = activity.snapshot(106.0)["workers"][0]["runs"]
    assert [run[2] for run in runs] == ["f", "g", "f"]
    assert runs[1][5] == 1 and runs[0][5] == 0
    assert runs[2][3] == pytest.approx(0.4)


def test_running_tasks_reach_now_without_being_stored():
    activity = TaskActivity(window=30.0, slot=0.25)
    long = _record("train", 8, 100.0)
    first = activity.snapshot(102.0, running=[long])
    assert first["workers"][0]["runs"] == [[100.0, 102.0, "train", 1.0, 0, 0]]
    assert activity.snapshot(102.0)["workers"] == []  # nothing was kept of it
    assert activity.rows([long]) == [{"node_id": "n1", "pid": 8, "state": "busy", "task": "train", "tasks": 0}]


def test_old_slots_and_idle_workers_are_forgotten():
    activity = TaskActivity(window=10.0, slot=0.5, max_workers=3)
    for pid in range(3):
        activity.ended(_record("f", pid, 100.0, 100.2))
    activity.snapshot(111.0)
    assert all(not worker.slots for worker in activity.workers.values())  # out of the window
    assert len(activity.rows()) == 3  # still in the workers table
    activity.ended(_record("f", 99, 200.0, 200.1))  # a fourth worker: the table holds three
    assert len(activity.workers) == 3 and (None, 99) not in activity.workers and ("n1", 99) in activity.workers
    activity.snapshot(200.05 + FORGET_S)
    assert list(activity.workers) == [("n1", 99)]
    activity.ended(_record("lost", None, 100.0, 100.1))  # never ran on a known worker: skipped
    assert list(activity.workers) == [("n1", 99)]


def test_arguments_are_checked():
    for bad in ({"slot": 0}, {"window": 0.1, "slot": 0.25}, {"max_workers": 0}):
        with pytest.raises(ValueError):
            TaskActivity(**bad)
