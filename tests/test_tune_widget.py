"""ember.tune's trial display: the table model driven by the controller's own state machine (rows
follow running, paused under PBT, terminated and errored trials; sorted by the metric, the best
highlighted), the compact log lines outside a notebook, on the real runtime too, and the live
widget in a real kernel leaving the final table as text/html for a saved notebook."""

import io
import re

import pytest
from conftest import ember_processes, shared_cluster_pids, wait_for

from ember import tune
from ember.train.checkpoint import Checkpoint
from ember.tune import progress
from ember.tune.experiment import Experiment
from ember.tune.schedulers import FIFOScheduler, PopulationBasedTraining
from ember.tune.search import BasicVariantGenerator
from ember.tune.stopper import make_stopper


def experiment(space, scheduler=None, mode="max"):
    searcher = BasicVariantGenerator(random_state=0)
    scheduler = scheduler or FIFOScheduler()
    searcher.set_search_properties("score", mode, space, num_samples=1)
    scheduler.set_search_properties("score", mode)
    exp = Experiment(
        searcher,
        scheduler,
        make_stopper(None),
        path="/tmp/x/exp",
        trainable_name="f",
        metric="score",
        mode=mode,
        max_concurrent=10,
    )
    exp.begin()
    return exp


def rows(page: str) -> list:
    """(trial, status cell, classes) of each table row, in the order shown."""
    found = re.findall(r"<tr class='([^']*)'[^>]*><td>([^<]*)</td><td>([^<]*)</td>", page)
    return [(trial, status, classes.split()) for classes, trial, status in found]


def test_rows_follow_trial_states_and_sort_by_the_metric():
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        metric="score",
        mode="max",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.1, 0.2, 0.3, 0.4]},
        quantile_fraction=0.25,
        resample_probability=0.0,
        seed=0,
    )
    exp = experiment({"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4])}, scheduler=pbt)
    now = [0.0]
    table = progress.TrialTable("exp", "score", "max", clock=lambda: now[0])
    out = io.StringIO()
    text = progress.TextReporter(table, stream=out)
    low, mid, broken, high = exp.to_start()
    for trial in (low, mid, broken, high):
        text.trial(trial)
    assert table.counts() == {"RUNNING": 4}
    assert [status for _, status, _ in rows(table.html())] == ["RUNNING"] * 4
    assert table.best_trial() is None  # no metric yet: nothing highlighted
    for step in (1, 2):
        exp.on_result(high.trial_id, {"score": 10.0 * step}, checkpoint=Checkpoint(f"/tmp/x/high{step}"))
        text.result(high, high.last_result)
        exp.on_result(low.trial_id, {"score": float(step)})
        text.result(low, low.last_result)
        exp.on_result(mid.trial_id, {"score": 5.0 + step})
        text.result(mid, mid.last_result)
    # PBT's exploit paused the bottom trial; the controller shows it at once.
    assert low.status == "PAUSED"
    exp.on_error(broken.trial_id, ValueError("lr 0.3 diverged: loss is nan"))
    text.trial(broken)
    exp.on_trial_end(mid.trial_id)
    text.trial(mid)
    shown = rows(table.html())
    # Sorted by the best score, best first; the errored trial, without a score, last.
    assert [trial for trial, _, _ in shown] == [high.name, mid.name, low.name, broken.name]
    assert [status for _, status, _ in shown] == [
        "RUNNING",
        "TERMINATED",
        "PAUSED",
        "ERROR (ValueError: lr 0.3 diverged: loss is nan)",
    ]
    assert "ember-trial-best" in shown[0][2] and not any("ember-trial-best" in c for _, _, c in shown[1:])
    assert [c[1] for _, _, c in shown] == [
        "ember-trial-running",
        "ember-trial-terminated",
        "ember-trial-paused",
        "ember-trial-error",
    ]
    assert table.rows[high.name]["latest"] == 20.0 and table.rows[high.name]["best"] == 20.0
    # The log said the error once, on its own line, and nothing else yet: no time has passed.
    assert out.getvalue() == f"ember.tune: trial {broken.name} errored: ValueError: lr 0.3 diverged: loss is nan\n"
    text.trial(broken)
    assert out.getvalue().count("errored") == 1
    # The paused trial goes on (from the donor's checkpoint) and is shown running again.
    assert exp.to_start() == [low]
    text.trial(low)
    assert table.rows[low.name]["status"] == "RUNNING"


def test_min_mode_sorts_ascending_and_html_is_escaped():
    exp = experiment({"name": tune.grid_search(["<a>", "b"])}, mode="min")
    table = progress.TrialTable("exp <1>", "score", "min")
    first, second = exp.to_start()
    exp.on_result(first.trial_id, {"score": 3.0})
    exp.on_result(second.trial_id, {"score": 1.5})
    exp.on_result(first.trial_id, {"score": 2.0})
    for trial in (first, second):
        table.update(trial)
    page = table.html()
    assert [trial for trial, _, _ in rows(page)] == [second.name, first.name]
    assert table.best_trial() == second.name
    assert "name=&lt;a&gt;" in page and "<a>" not in page
    assert table.rows[first.name]["latest"] == 2.0 and table.rows[first.name]["best"] == 2.0


def test_log_lines_are_compact_and_spaced_by_the_period():
    exp = experiment({"a": tune.grid_search(list(range(6)))})
    now = [0.0]
    table = progress.TrialTable("exp", "score", "max", clock=lambda: now[0])
    out = io.StringIO()
    text = progress.TextReporter(table, stream=out)
    for trial in exp.to_start():
        text.trial(trial)
    for step in range(40):
        now[0] += 0.5  # 20 s in all: a line every 5 s (at the first result past it), whatever the number of results
        for trial in exp.running():
            exp.on_result(trial.trial_id, {"score": trial.config["a"] + step})
            text.result(trial, trial.last_result)
    for trial in list(exp.running()):
        exp.on_trial_end(trial.trial_id)
        text.trial(trial)
    text.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith(progress.PREFIX) and "\r" not in line and len(line) < 200 for line in lines)
    assert lines[0] == "ember.tune: exp 5s: 6 running | best score=13 (f_" + exp.trials[5].trial_id + ")"
    assert lines[-1].startswith("ember.tune: exp 20s: 6 terminated | best score=44") and lines[-1].endswith("finished")
    assert progress.TextReporter(table, verbose=0, stream=(quiet := io.StringIO())).finish() is None
    assert quiet.getvalue() == ""


def broken_or_counting(config):
    if config["a"] == 2:
        raise ValueError(f"a={config['a']} is not allowed")
    for i in range(3):
        tune.report({"score": config["a"] * 10 + i})


def test_outside_a_notebook_fit_prints_log_lines_not_a_table(cluster, tmp_path, capfd):
    grid = tune.Tuner(
        broken_or_counting,
        param_space={"a": tune.grid_search([0, 1, 2])},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path)),
    ).fit()
    assert grid.num_errors == 1 and grid.num_terminated == 2
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith(progress.PREFIX)]
    errored = [line for line in lines if " errored: " in line]
    assert len(errored) == 1 and errored[0].endswith("ValueError: a=2 is not allowed"), lines
    assert lines[-1].startswith("ember.tune: exp ") and lines[-1].endswith("| finished")
    assert "2 terminated, 1 error | best score=12 (" in lines[-1]
    # Compact: no table, no bar redrawn with carriage returns, nothing on stdout.
    assert "\r" not in captured.err and "<table" not in captured.err and "+--" not in captured.err
    assert progress.PREFIX not in captured.out


def test_widget_in_a_kernel_leaves_the_final_table_as_html():
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    from kernel_session import KernelSession

    kernel = KernelSession()
    try:
        kernel.execute("import ember, tempfile\nfrom ember import tune\nember.init(num_cpus=2)")
        kernel.execute(
            "def f(config):\n"
            "    if config['a'] == 2:\n"
            "        raise ValueError('a=2 is not allowed')\n"
            "    for i in range(3):\n"
            "        tune.report({'score': config['a'] * 10 + i})\n"
        )
        fitted = kernel.execute(
            "grid = tune.Tuner(f, param_space={'a': tune.grid_search([0, 1, 2])},\n"
            "    tune_config=tune.TuneConfig(metric='score', mode='max'),\n"
            "    run_config=tune.RunConfig(name='exp', storage_path=tempfile.mkdtemp())).fit()\n"
            "grid.num_errors, grid.num_terminated"
        )
        kernel.execute("ember.shutdown()")
    finally:
        kernel.shutdown()
    wait_for(
        lambda: not [p for p in ember_processes() if p.pid not in shared_cluster_pids()],
        timeout=15,
        message="the kernel's cluster to go",
    )
    assert fitted.result()["text/plain"] == "(1, 2)", fitted.outputs()
    displayed = [m["content"] for m in fitted.messages() if m["msg_type"] == "display_data"]
    # Bokeh's loader comes as its own display (application/javascript); the widget is one more.
    shown = [c for c in displayed if "application/vnd.jupyter.widget-view+json" in c["data"]]
    renewed = [m["content"] for m in fitted.messages() if m["msg_type"] == "update_display_data"]
    assert len(shown) == 1, fitted.outputs()
    assert "<table class='ember-metrics ember-tune'>" in shown[0]["data"]["text/html"]
    # The snapshot a saved notebook keeps is renewed with the final table when fit() ends.
    final = renewed[-1]
    assert final["transient"] == shown[0]["transient"]
    page, plain = final["data"]["text/html"], final["data"]["text/plain"]
    assert plain.endswith("finished")
    table_rows = rows(page)
    assert [status for _, status, _ in table_rows] == [
        "TERMINATED",
        "TERMINATED",
        "ERROR (ValueError: a=2 is not allowed)",
    ]
    assert "ember-trial-best" in table_rows[0][2] and "a=1" in page and "finished" in page
    assert progress.PREFIX not in fitted.stderr()  # no log lines under a widget
