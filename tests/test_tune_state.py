"""ember.tune's decisions without a cluster: search spaces and variants, the controller's trial
states (retries, errors, stop criteria, time budget), ASHA's rungs, the median stopping rule, PBT's
exploit and explore, ResultGrid's choices and errors, and argument checks."""

import math
import os
import random

import pytest

from ember import tune
from ember.train.checkpoint import Checkpoint
from ember.train.result import Result
from ember.tune import storage
from ember.tune.experiment import ERROR, PAUSED, PENDING, RETRY, RUNNING, TERMINATED, Experiment
from ember.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, PopulationBasedTraining
from ember.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ember.tune.stopper import make_stopper


def experiment(
    space,
    num_samples=1,
    searcher=None,
    scheduler=None,
    stop=None,
    metric="score",
    mode="max",
    max_concurrent=100,
    max_failures=0,
    budget=None,
    clock=None,
    path="/tmp/x/exp",
):
    searcher = searcher or BasicVariantGenerator(random_state=0)
    scheduler = scheduler or FIFOScheduler()
    searcher.set_search_properties(metric, mode, space, num_samples=num_samples)
    scheduler.set_search_properties(metric, mode)
    kwargs = {"clock": clock} if clock else {}
    exp = Experiment(
        searcher,
        scheduler,
        make_stopper(stop),
        path=path,
        trainable_name="f",
        metric=metric,
        mode=mode,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        time_budget_s=budget,
        **kwargs,
    )
    exp.begin()
    return exp


def run_all(exp, score_fn, iterations):
    """Drive every trial to its end: each result is score_fn(trial, i); returns the decisions."""
    decisions = []
    while not exp.done:
        for trial in exp.to_start():
            trial.starts  # noqa: B018
        running = exp.running()
        if not running:
            break
        for trial in running:
            i = trial.iteration
            if i >= iterations:
                exp.on_trial_end(trial.trial_id)
                continue
            decision, _, _ = exp.on_result(trial.trial_id, {"score": score_fn(trial, i)})
            decisions.append((trial.trial_id, i + 1, decision))
    return decisions


# ---- spaces and variants ----------------------------------------------------------------------------


def test_grid_times_num_samples_gives_every_combination_each_time():
    space = {
        "a": tune.grid_search([1, 2, 3]),
        "nested": {"b": tune.grid_search(["x", "y"])},
        "c": 7,
        "lr": tune.loguniform(1e-4, 1e-1),
    }
    exp = experiment(space, num_samples=2)
    started = exp.to_start()
    assert len(started) == 12 and exp.search_finished
    assert exp.to_start() == []
    combos = [(t.config["a"], t.config["nested"]["b"]) for t in started]
    assert combos[:6] == [(1, "x"), (2, "x"), (3, "x"), (1, "y"), (2, "y"), (3, "y")]  # first grid fastest
    assert combos[6:] == combos[:6]
    assert all(t.config["c"] == 7 and 1e-4 <= t.config["lr"] < 1e-1 for t in started)
    assert len({t.config["lr"] for t in started}) == 12  # sampled anew per trial
    assert [t.trial_id.split("_")[1] for t in started] == [f"{i:05d}" for i in range(12)]


def test_seeded_variants_repeat_and_domains_keep_their_bounds():
    space = {
        "u": tune.uniform(-1, 1),
        "qu": tune.quniform(0, 10, 0.5),
        "lu": tune.loguniform(1e-3, 1),
        "qlu": tune.qloguniform(1, 100, 5),
        "ri": tune.randint(0, 3),
        "qri": tune.qrandint(0, 20, 5),
        "lri": tune.lograndint(1, 1000),
        "rn": tune.randn(10, 0.1),
        "ch": tune.choice(["a", "b"]),
        "sf": tune.sample_from(lambda spec: spec.config.ri * 10),
        "deep": {"sf2": tune.sample_from(lambda spec: spec.config.sf + 1)},
    }

    def configs(seed):
        exp = experiment(space, num_samples=200, searcher=BasicVariantGenerator(random_state=seed))
        return [t.config for t in exp.to_start()]

    first = configs(7)
    assert first == configs(7) and first != configs(8)
    for c in first:
        assert -1 <= c["u"] < 1 and c["qu"] % 0.5 == 0 and 1e-3 <= c["lu"] < 1 and c["qlu"] % 5 == 0
        assert c["ri"] in (0, 1, 2) and c["qri"] in (0, 5, 10, 15, 20) and 1 <= c["lri"] < 1000
        assert isinstance(c["lri"], int) and c["ch"] in ("a", "b")
        assert c["sf"] == c["ri"] * 10 and c["deep"]["sf2"] == c["sf"] + 1
    assert {c["ri"] for c in first} == {0, 1, 2} and {c["qri"] for c in first} == {0, 5, 10, 15, 20}
    assert 9.5 < sum(c["rn"] for c in first) / len(first) < 10.5


def test_points_to_evaluate_come_first_and_count_as_samples():
    gen = BasicVariantGenerator(points_to_evaluate=[{"a": 100}, {"b": -1.0}], random_state=1)
    exp = experiment({"a": tune.randint(0, 10), "b": tune.uniform(0, 1)}, num_samples=4, searcher=gen)
    configs = [t.config for t in exp.to_start()]
    assert len(configs) == 4 and configs[0]["a"] == 100 and 0 <= configs[0]["b"] < 1
    assert configs[1]["b"] == -1.0 and 0 <= configs[1]["a"] < 10
    assert all(0 <= c["a"] < 10 and 0 <= c["b"] < 1 for c in configs[2:])


def test_concurrency_limits_and_infinite_samples():
    exp = experiment({"a": tune.uniform(0, 1)}, num_samples=5, max_concurrent=2)
    first = exp.to_start()
    assert len(first) == 2 and exp.to_start() == []
    exp.on_result(first[0].trial_id, {"score": 1})
    exp.on_trial_end(first[0].trial_id)
    assert len(exp.to_start()) == 1
    limited = ConcurrencyLimiter(BasicVariantGenerator(), max_concurrent=3)
    exp = experiment({"a": tune.uniform(0, 1)}, num_samples=-1, searcher=limited)
    assert len(exp.to_start()) == 3 and exp.to_start() == [] and not exp.search_finished


def test_bad_spaces_and_configs_fail_where_they_are_made():
    with pytest.raises(ValueError, match="positive lower bound"):
        tune.loguniform(0, 1)
    with pytest.raises(ValueError, match="lower < upper"):
        tune.randint(3, 3)
    with pytest.raises(ValueError, match="non-empty"):
        tune.choice([])
    with pytest.raises(TypeError, match="list of values"):
        tune.grid_search(5)
    with pytest.raises(ValueError, match="'min' or 'max'"):
        tune.TuneConfig(mode="maximum")
    with pytest.raises(ValueError, match="num_samples"):
        tune.TuneConfig(num_samples=0)
    with pytest.raises(TypeError, match="dict, a function or a Stopper"):
        tune.RunConfig(stop=5)
    with pytest.raises(TypeError, match="Trainable"):
        tune.Tuner(int.__class__)
    from ember.tune.search.optuna import OptunaSearch

    with pytest.raises(ValueError, match="cannot search x"):
        OptunaSearch(space={"x": tune.randn()})


# ---- the controller's trial states ----------------------------------------------------------------


def test_retries_then_error_and_stop_criteria():
    exp = experiment({"a": tune.grid_search([1, 2])}, max_failures=1, stop={"score": 3})
    one, two = exp.to_start()
    assert exp.on_error(one.trial_id, ValueError("boom")) == RETRY and one.status == PENDING
    assert exp.to_start() == [one] and one.status == RUNNING
    assert exp.on_error(one.trial_id, ValueError("boom again")) == ERROR and one.status == ERROR
    assert "boom again" in one.error and one.num_failures == 2
    assert exp.on_result(two.trial_id, {"score": 2})[0] == "CONTINUE"
    assert exp.on_result(two.trial_id, {"score": 3})[0] == "STOP" and two.status == TERMINATED
    assert exp.done and exp.counts() == {"PENDING": 0, "RUNNING": 0, "PAUSED": 0, "TERMINATED": 1, "ERROR": 1}
    with pytest.raises(KeyError, match="stop criterion 'nope'"):
        make_stopper({"nope": 1})("t", {"score": 1})


def test_a_retry_restarts_from_the_latest_checkpoint():
    exp = experiment({"a": 1}, max_failures=-1)
    (trial,) = exp.to_start()
    exp.on_result(trial.trial_id, {"score": 1})
    exp.on_result(trial.trial_id, {"score": 2}, checkpoint=Checkpoint("/tmp/x/c2"))
    exp.on_result(trial.trial_id, {"score": 3})
    exp.on_error(trial.trial_id, RuntimeError("died"))
    exp.to_start()
    assert trial.start_point() == (Checkpoint("/tmp/x/c2"), 2) and trial.iteration == 2
    assert exp.on_result(trial.trial_id, {"score": 3})[0] == "CONTINUE"
    assert trial.last_result["training_iteration"] == 3


def test_time_budget_stops_every_trial():
    now = [0.0]
    exp = experiment({"a": tune.uniform(0, 1)}, num_samples=10, max_concurrent=2, budget=5, clock=lambda: now[0])
    running = exp.to_start()
    assert exp.budget_left() == 5
    now[0] = 6.0
    assert exp.on_budget() == running and exp.done
    assert all(t.status == TERMINATED for t in exp.trials) and len(exp.trials) == 2


def test_restore_states():
    exp = experiment({"a": tune.grid_search([1, 2, 3])}, max_failures=0)
    one, two, three = exp.to_start()
    exp.on_trial_end(one.trial_id)
    exp.on_error(two.trial_id, ValueError("x"))
    exp.prepare_restore(resume_unfinished=True, resume_errored=False, restart_errored=False)
    assert (one.status, two.status, three.status) == (TERMINATED, ERROR, PENDING)
    exp.prepare_restore(resume_unfinished=True, resume_errored=False, restart_errored=True)
    assert two.status == PENDING and two.error is None and two.checkpoint is None


def test_state_file_is_rewritten_on_changes_and_for_results_only_every_period(tmp_path):
    now = [0.0]
    exp = experiment({"a": tune.grid_search([1, 2])}, path=str(tmp_path / "exp"))
    store = storage.ExperimentStorage(None, exp.path, clock=lambda: now[0])
    state = {"experiment": exp}

    def report(trial, n):
        for _ in range(n):
            exp.on_result(trial.trial_id, {"score": trial.iteration})
            store.append_result(trial.path, trial.last_result)
            store.save_state(state)  # as the controller does after every event

    one, two = exp.to_start()
    assert store.save_state(state) and store.writes == 1  # two new trials, started
    report(one, 500)
    report(two, 500)
    assert store.writes == 1  # a thousand results, no change a restore needs exactly, no time passed
    now[0] = storage.STATE_PERIOD_S
    report(one, 1)
    assert store.writes == 2  # results alone: once the period has passed
    report(one, 3)
    assert store.writes == 2
    exp.on_result(one.trial_id, {"score": 0}, checkpoint=Checkpoint(str(tmp_path / "c")))
    store.append_result(one.path, one.last_result)
    assert store.save_state(state) and store.writes == 3  # a checkpoint: at once
    exp.on_trial_end(two.trial_id)
    assert store.save_state(state) and not store.save_state(state) and store.writes == 4
    exp.started = None
    assert store.save_state(state) and store.writes == 5  # fit()'s last save, always written
    store.close()
    assert not [p for p in os.listdir(exp.path) if ".tmp" in p]  # the temporary file was renamed
    saved = storage.load_state(None, exp.path)["experiment"]
    assert [(t.status, t.iteration, t.num_results) for t in saved.trials] == [
        (RUNNING, 505, 505),
        (TERMINATED, 500, 500),
    ]
    with pytest.raises(ValueError, match="period_s"):
        storage.SavePolicy(-1)


def test_a_restore_catches_trials_up_from_result_json(tmp_path):
    exp = experiment({"a": tune.grid_search([1])}, path=str(tmp_path / "exp"), mode="min")
    store = storage.ExperimentStorage(None, exp.path)
    (trial,) = exp.to_start()
    scores = [5, 3, 4, 1, 2]
    for score in scores[:2]:
        exp.on_result(trial.trial_id, {"score": score}, time_this_iter_s=0.5)
        store.append_result(trial.path, trial.last_result)
    store.save_state({"experiment": exp})
    for score in scores[2:]:  # logged after the state file was written, then the driver died
        exp.on_result(trial.trial_id, {"score": score}, time_this_iter_s=0.5)
        store.append_result(trial.path, trial.last_result)
    store.close()
    log = os.path.join(trial.path, storage.RESULT_FILE)
    with open(log, "a") as out:
        out.write('{"score": 0, "training_iter')  # the line the kill cut short
    (back,) = storage.load_state(None, exp.path)["experiment"].trials
    assert (back.iteration, back.num_results, back.time_total) == (5, 5, 2.5)
    assert back.last_result["score"] == 2 and back.last_result["training_iteration"] == 5
    assert back.best["score"] == 1  # mode min, over the logged results too
    assert [r["score"] for r in back.history] == scores
    # The next append cuts the fragment first, so the log stays readable to its end.
    store = storage.ExperimentStorage(None, exp.path)
    store.append_result(trial.path, {"score": 9})
    store.close()
    assert [r["score"] for r in storage.read_results(trial.path)] == [*scores, 9]
    with open(log) as source:
        assert source.read().count("\n") == 6


# ---- schedulers -------------------------------------------------------------------------------------


def _quantile(values, q):
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    return values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (pos - lo)


def test_asha_rungs_keep_the_top_fraction():
    asha = ASHAScheduler(metric="score", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    exp = experiment({"a": tune.grid_search(list(range(9)))}, scheduler=asha)
    assert [m for m, _ in asha.rungs] == [1, 3, 9]
    # Scores in a mixed order (a permutation of 0..8), constant over a trial's iterations.
    decisions = run_all(exp, lambda trial, i: (trial.config["a"] * 5) % 9, iterations=100)
    rungs = dict(asha.rungs)
    assert len(rungs[1]) == 9 and all(t.status == TERMINATED for t in exp.trials)
    for milestone in (1, 3):
        order = list(rungs[milestone].items())  # in the order the trials reached the rung
        for k, (trial_id, score) in enumerate(order):
            (decision,) = [d for tid, now, _, d in asha.decisions if tid == trial_id and now == milestone]
            earlier = [value for _, value in order[:k]]
            expected = "STOP" if earlier and score < _quantile(earlier, 2 / 3) else "CONTINUE"
            assert decision == expected, (milestone, k, score, earlier)
            assert exp.trial(trial_id).iteration == (milestone if decision == "STOP" else exp.trial(trial_id).iteration)
    survivors = [t for t in exp.trials if t.iteration == 9]
    assert survivors and all(d == "STOP" for _, now, _, d in asha.decisions if now == 9)
    # Worked by hand: scores 0,5,1,6,2,7,3,8,4 reach rung 1 in that order; 1, 2, 3 and 4 fall below
    # the 2/3 quantile of those before them. The rest reach rung 3 in rising order, so all go on.
    assert sorted(t.config["a"] for t in survivors) == [0, 1, 3, 5, 7]
    assert len(rungs[3]) == len(rungs[9]) == 5
    assert len(decisions) == sum(t.iteration for t in exp.trials)


def test_median_stopping_rule_stops_the_laggard():
    rule = MedianStoppingRule(
        time_attr="training_iteration", metric="score", mode="max", grace_period=2, min_samples_required=3
    )
    exp = experiment({"a": tune.grid_search([10, 9, 8, 1])}, scheduler=rule)
    run_all(exp, lambda trial, i: trial.config["a"], iterations=4)
    by_a = {t.config["a"]: t for t in exp.trials}
    assert by_a[1].iteration == 2 and rule.stopped == [by_a[1].trial_id]
    assert all(by_a[a].iteration == 4 for a in (10, 9, 8))


def test_pbt_exploits_a_top_trials_checkpoint_and_explores_its_config():
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        metric="score",
        mode="max",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.1, 0.2, 0.3, 0.4], "m": tune.uniform(0, 1)},
        quantile_fraction=0.5,
        resample_probability=0.0,
        seed=0,
    )
    exp = experiment({"lr": tune.grid_search([0.1, 0.4]), "m": 0.5}, scheduler=pbt)
    low, high = exp.to_start()
    for step in (1, 2):
        exp.on_result(high.trial_id, {"score": 10 * step}, checkpoint=Checkpoint(f"/tmp/x/high{step}"))
        decision = exp.on_result(low.trial_id, {"score": step})[0]
    assert decision == PAUSED.replace("PAUSED", "PAUSE") and low.status == PAUSED
    (exploit,) = pbt.exploits
    assert exploit["donor"] == high.trial_id and exploit["checkpoint"] == Checkpoint("/tmp/x/high2")
    assert low.config["lr"] in (0.3, 0.4) and low.config["m"] in (0.5 * 1.2, 0.5 * 0.8)
    assert exp.to_start() == [low] and low.start_point() == (Checkpoint("/tmp/x/high2"), 2)
    with pytest.raises(ValueError, match="not in the trial's config"):
        experiment(
            {"x": 1}, scheduler=PopulationBasedTraining(metric="score", mode="max", hyperparam_mutations={"lr": [1, 2]})
        ).to_start()


def test_pbt_explore_resamples_and_perturbs():
    pbt = PopulationBasedTraining(
        metric="s",
        mode="min",
        hyperparam_mutations={"n": tune.randint(1, 5), "opt": {"lr": lambda: 0.5}},
        resample_probability=1.0,
    )
    pbt.rng = random.Random(3)
    new = pbt.explore({"n": 100, "opt": {"lr": 0.1}, "keep": "x"})
    assert 1 <= new["n"] < 5 and new["opt"]["lr"] == 0.5 and new["keep"] == "x"


# ---- results ----------------------------------------------------------------------------------------


def test_result_grid_best_and_errors():
    def result(values, error=None):
        history = [{"loss": v, "config": {"v": values}} for v in values]
        return Result(
            metrics=history[-1] if history else {}, checkpoint=None, error=error, path="p", metrics_history=history
        )

    grid = tune.ResultGrid(
        [result([5, 1, 4]), result([3, 2]), result([], ValueError("x"))],
        "/p",
        "loss",
        "min",
        ["TERMINATED", "TERMINATED", "ERROR"],
    )
    assert grid.get_best_result().metrics["loss"] == 2
    assert grid.get_best_result(scope="all") is grid[0]  # reached 1 on the way
    assert grid.get_best_result(mode="max", scope="avg") is grid[0]
    assert grid.num_errors == 1 and grid.num_terminated == 2 and len(grid) == 3
    with pytest.raises(ValueError, match="No trial reported the metric 'acc'.*'loss'"):
        grid.get_best_result("acc")
    with pytest.raises(ValueError, match="'min' or 'max'"):
        grid.get_best_result("loss", "best")
    with pytest.raises(ValueError, match="scope"):
        grid.get_best_result(scope="first")
    frame = grid.get_dataframe(filter_metric="loss", filter_mode="min")
    assert list(frame["loss"][:2]) == [1, 2] and "config/v" in frame.columns


def test_state_is_written_off_the_controller_thread_newest_last_and_failures_surface(tmp_path):
    import threading

    from ember.tune import storage

    exp = experiment({"a": tune.grid_search([1, 2])}, path=str(tmp_path / "exp"))
    store = storage.ExperimentStorage(None, exp.path)
    for step in range(50):  # a burst: each save replaces the one not yet written
        store.save_state({"experiment": exp, "step": step}, force=True)
    store.flush()
    assert storage.load_state(None, exp.path)["step"] == 49
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "ember-tune-state"]  # the writer is gone

    broken = storage.ExperimentStorage(None, str(tmp_path / "gone"))
    (tmp_path / "gone").rmdir()  # the experiment's directory vanished: the write fails
    broken.save_state({"experiment": exp, "step": 1}, force=True)
    with pytest.raises(OSError, match="could not write the experiment state"):
        broken.close()
