"""ember.train's decisions without a cluster: results from reports, kept checkpoints, restarts,
ranks by node, what the cluster can hold, configuration errors and the compact lines."""

import io

import pytest

from ember.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ember.train.checkpoint import Checkpoint
from ember.train.progress import RunView, TextReporter
from ember.train.session import WorkerPlace
from ember.train.state import FAIL, RESTART, CheckpointKeeper, FitState, ReportWatch, TrainingResult
from ember.train.worker_group import check_fits, place


def ck(i):
    return Checkpoint(f"/tmp/run/checkpoint_{i:06d}")


def test_a_result_needs_every_rank_and_carries_rank_zeros_metrics():
    state = FitState(2, 0, CheckpointConfig())
    state.start_attempt()
    assert state.on_report(1, 0, {"loss": 2.0}, ck(0)) == []
    [result] = state.on_report(0, 0, {"loss": 1.0})
    assert (result.index, result.metrics, result.checkpoint) == (0, {"loss": 1.0}, ck(0))
    assert state.on_report(0, 1, {"loss": 0.5}) == []
    # Rank 1 finished without its second report: the result no longer waits for it.
    assert [r.index for r in state.on_worker_done(1)] == [1]
    state.on_worker_done(0)
    assert state.finished and state.metrics == {"loss": 0.5} and state.history() == [{"loss": 1.0}, {"loss": 0.5}]


def test_results_complete_in_order_and_a_rank_outside_the_world_is_refused():
    state = FitState(2, 0, CheckpointConfig())
    state.start_attempt()
    state.on_report(0, 0, {"a": 0})
    state.on_report(0, 1, {"a": 1})
    state.on_report(1, 1, {"a": 1})
    assert state.results == []  # step 0 still waits for rank 1
    assert [r.index for r in state.on_report(1, 0, {"a": 0})] == [0, 1]
    with pytest.raises(ValueError, match="outside the world"):
        state.on_report(2, 2, {})


@pytest.mark.parametrize(
    "order, scores, kept",
    [("min", [5, 1, 4, 2, 3], [1, 3, 4]), ("max", [5, 1, 4, 2, 3], [0, 2, 4]), ("max", [9, 8, 7, 6, 5], [0, 1, 4])],
)
def test_keeper_keeps_the_best_by_score_and_always_the_latest(order, scores, kept):
    keeper = CheckpointKeeper(CheckpointConfig(2, "loss", order))
    dropped = []
    for i, score in enumerate(scores):
        dropped += keeper.add(i, ck(i), {"loss": score})
    assert [c for c, _ in keeper.best()] == [ck(i) for i in kept]
    assert sorted(dropped, key=lambda c: c.path) == [ck(i) for i in range(5) if i not in kept]
    assert keeper.latest == ck(4)


def test_keeper_without_score_keeps_the_most_recent_and_without_limit_keeps_all():
    keeper = CheckpointKeeper(CheckpointConfig(num_to_keep=2))
    for i in range(4):
        keeper.add(i, ck(i), {})
    assert [c for c, _ in keeper.best()] == [ck(2), ck(3)]
    everything = CheckpointKeeper(CheckpointConfig())
    assert all(everything.add(i, ck(i), {}) == [] for i in range(4)) and len(everything.best()) == 4


def test_keeper_ranks_a_missing_score_last_with_a_warning():
    keeper = CheckpointKeeper(CheckpointConfig(1, "acc"))
    keeper.add(0, ck(0), {"acc": 0.5})
    with pytest.warns(UserWarning, match="not a number"):
        assert keeper.add(1, ck(1), {"loss": 3}) == []  # the latest stays
    assert keeper.add(2, ck(2), {"acc": 0.1}) == [ck(1)]


def test_failures_restart_from_the_latest_checkpoint_until_max_failures():
    state = FitState(2, 1, CheckpointConfig(), resume_checkpoint=ck(99))
    assert state.start_attempt() == (0, ck(99))
    state.on_report(0, 0, {}, ck(0))
    state.on_report(1, 0, {}, ck(0))
    state.on_report(0, 1, {}, ck(1))  # rank 1 dies before its report 1
    decision, orphans = state.on_failure(RuntimeError("died"))
    assert (decision, orphans) == (RESTART, [ck(1)])
    # The next attempt numbers its reports after every index already used, and starts from ck(0).
    assert state.start_attempt() == (2, ck(0))
    assert state.attempt == 2
    assert state.on_failure(RuntimeError("again"))[0] == FAIL


@pytest.mark.parametrize("max_failures, restarts", [(0, 0), (2, 2), (-1, 10)])
def test_max_failures(max_failures, restarts):
    state = FitState(1, max_failures, CheckpointConfig())
    decisions = []
    for _ in range(10):
        state.start_attempt()
        decisions.append(state.on_failure(ValueError())[0])
    assert decisions.count(RESTART) == restarts
    if max_failures != -1:
        assert decisions[restarts] == FAIL


def test_place_gives_workers_of_one_node_consecutive_ranks():
    infos = [{"node_id": n} for n in ("a", "b", "a", "b", "c")]
    places = place(infos)
    assert [p.world_rank for p in places] == [0, 2, 1, 3, 4]
    assert [(p.local_rank, p.local_world_size, p.node_rank) for p in places] == [
        (0, 2, 0),
        (0, 2, 1),
        (1, 2, 0),
        (1, 2, 1),
        (0, 1, 2),
    ]
    assert all(p.world_size == 5 for p in places)


def test_check_fits_refuses_what_the_cluster_can_never_hold():
    nodes = [{"Resources": {"CPU": 4, "GPU": 1}}, {"Resources": {"CPU": 2}}]
    check_fits([{"CPU": 1}] * 6, "PACK", nodes)
    with pytest.raises(ValueError, match="the whole cluster has"):
        check_fits([{"CPU": 1}] * 7, "PACK", nodes)
    with pytest.raises(ValueError, match="no node of the cluster"):
        check_fits([{"CPU": 5}], "SPREAD", nodes)
    with pytest.raises(ValueError, match="the whole cluster has"):
        check_fits([{"CPU": 1, "GPU": 1}] * 2, "PACK", nodes)
    with pytest.raises(ValueError):
        check_fits([{"CPU": 1}] * 5, "STRICT_PACK", nodes)
    with pytest.raises(ValueError):
        check_fits([{"CPU": 1}] * 3, "STRICT_SPREAD", nodes)
    check_fits([{"CPU": 1}] * 2, "STRICT_SPREAD", nodes)


def test_configs_validate_their_arguments():
    assert ScalingConfig(2, use_gpu=True).worker_resources() == {"CPU": 1.0, "GPU": 1.0}
    assert ScalingConfig(resources_per_worker={"CPU": 2, "custom": 1}).worker_resources() == {"CPU": 2, "custom": 1}
    for bad in (
        lambda: ScalingConfig(0),
        lambda: ScalingConfig(True),
        lambda: ScalingConfig(2, placement_strategy="TIGHT"),
        lambda: ScalingConfig(resources_per_worker={"CPU": -1}),
        lambda: FailureConfig(-2),
        lambda: CheckpointConfig(0),
        lambda: CheckpointConfig(checkpoint_score_order="up"),
        lambda: RunConfig(name="a/b"),
    ):
        with pytest.raises((ValueError, TypeError)):
            bad()
    with pytest.raises(TypeError):
        ScalingConfig(use_gpu="yes")
    assert RunConfig(storage_path="s3://bucket/x").resolved_storage() == "s3://bucket/x"


def test_text_lines_one_per_result_and_a_summary():
    out = io.StringIO()
    reporter = TextReporter(RunView("run", clock=iter([0.0, 2.5]).__next__), stream=out)
    place0 = WorkerPlace(0, 1, 0, 1, 0, "n" * 32)
    reporter.start_attempt(1, [{"node_id": "n" * 32, "address": "10.0.0.1", "pid": 7}], [place0])
    reporter.worker_report(0, 0, {"loss": 0.12345, "tag": "x", "w": [1, 2]})
    reporter.result(TrainingResult(0, {"loss": 0.12345, "tag": "x", "w": [1, 2]}, ck(0)))
    reporter.finish()
    assert out.getvalue().splitlines() == [
        "ember.train: run [1] loss=0.1235 tag=x | checkpoint_000000",
        "ember.train: run finished in 2.5 s: 1 results, loss=0.1235 tag=x",
    ]
    assert "10.0.0.1" in reporter.view.html() and "finished" in reporter.view.html()


def test_widget_has_a_row_per_worker_and_a_curve_per_rank(capsys):
    from ember.train.progress import WidgetReporter

    reporter = WidgetReporter(RunView("run"))
    infos = [{"node_id": "a" * 32, "address": "127.0.0.1", "pid": 10 + r} for r in range(2)]
    reporter.start_attempt(1, infos, place(infos), 0)
    for i in range(3):
        for rank in range(2):
            reporter.worker_report(rank, i, {"loss": 1.0 / (i + 1 + rank), "note": "x"})
        reporter.result(TrainingResult(i, {"loss": 1.0 / (i + 1)}))
    reporter.worker_state(1, "finished")
    reporter.finish()
    table = reporter.widget.table.value
    assert table.count("ember-train-worker") == 2 and "finished in" in table and "127.0.0.1" in table
    assert set(reporter.widget.figures) == {"loss"}
    assert sorted(rank for _, rank in reporter.widget.sources) == ["rank 0", "rank 1"]
    assert list(reporter.widget.sources[("loss", "rank 1")].data["y"]) == [0.5, 1 / 3, 0.25]
    assert list(reporter.widget.sources[("loss", "rank 0")].data["x"]) == [1, 2, 3]
    assert "Ember training run" in reporter._bundle()["text/plain"]
    assert not reporter.broken


def test_a_silent_loop_is_named_once_by_rank():
    now = [0.0]
    watch = ReportWatch(10.0, lambda: now[0])
    watch.start_attempt(range(3))
    assert watch.timeout() == 10.0 and watch.due() == []
    now[0] = 4.0
    watch.reported(1)
    watch.finished(2)  # a loop that returned is not silent
    now[0] = 10.0
    assert watch.timeout() == 0.0
    assert watch.due() == [0]  # rank 1 reported 6 s ago
    now[0] = 30.0
    assert watch.due() == [] and watch.timeout() is None  # once per fit, even after a restart
    watch.start_attempt(range(3))
    assert watch.timeout() is None
    never = ReportWatch(None, lambda: now[0])
    never.start_attempt([0])
    now[0] = 1e9
    assert never.timeout() is None and never.due() == []
    for bad in (0, -1, True, "10"):
        with pytest.raises(ValueError):
            ReportWatch(bad, lambda: 0.0)
