"""ember.tune on the real runtime: exact trial counts and configs, ASHA stopping trials at its
rungs, PBT's exploit handing a trial another's checkpoint, retries from checkpoints then errors
with the user's traceback, class trainables, with_parameters/with_resources, Optuna, and every
trial actor released afterwards."""

import json
import os
import time

import numpy as np
import pytest

from ember import train, tune
from ember.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ember.tune.search import ConcurrencyLimiter
from tests.conftest import wait_for


def run_config(tmp_path, name="exp", **kwargs):
    return tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0, **kwargs)


def no_trial_actor_left() -> bool:
    from ember.util.state import list_actors

    return not [a for a in list_actors() if a.class_name == "TrialActor" and a.state != "DEAD"]


def counting(config):
    for i in range(3):
        tune.report({"score": config["a"] * 10 + i, "b": config["nested"]["b"]})


def test_grid_and_samples_run_every_config_once(cluster, tmp_path):
    space = {"a": tune.grid_search([1, 2, 3]), "nested": {"b": tune.choice(["x", "y"])}, "fixed": 5}
    grid = tune.Tuner(
        counting,
        param_space=space,
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=2),
        run_config=run_config(tmp_path),
    ).fit()
    assert len(grid) == 6 and grid.num_terminated == 6 and grid.num_errors == 0
    assert [r.config["a"] for r in grid] == [1, 2, 3, 1, 2, 3]
    assert all(r.config["fixed"] == 5 and r.metrics["b"] == r.config["nested"]["b"] for r in grid)
    assert all(r.metrics["training_iteration"] == 3 and len(r.metrics_history) == 3 for r in grid)
    best = grid.get_best_result()
    assert best.config["a"] == 3 and best.metrics["score"] == 32
    frame = grid.get_dataframe()
    assert len(frame) == 6 and sorted(frame["config/a"]) == [1, 1, 2, 2, 3, 3]
    assert grid.get_best_result("score", "min", scope="all").config["a"] == 1
    with pytest.raises(ValueError, match="'accuracy'.*'score'"):
        grid.get_best_result("accuracy")
    lines = open(os.path.join(grid[0].path, "result.json")).read().splitlines()
    assert [json.loads(line)["score"] for line in lines] == [10, 11, 12]
    assert tune.Tuner.can_restore(grid.experiment_path)
    assert no_trial_actor_left()


def constant_score(config):
    for _ in range(8):
        tune.report({"score": config["a"]})


def test_asha_stops_trials_at_their_rungs_within_one_report(cluster, tmp_path):
    asha = ASHAScheduler(metric="score", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    grid = tune.Tuner(
        constant_score,
        param_space={"a": tune.grid_search([3, 7, 1, 6, 2, 8, 4, 5])},
        tune_config=tune.TuneConfig(scheduler=asha, max_concurrent_trials=2),
        run_config=run_config(tmp_path),
    ).fit()
    assert len(grid) == 8 and grid.num_terminated == 8
    stops = {tid: now for tid, now, _, decision in asha.decisions if decision == "STOP"}
    for result in grid:
        # The trial stopped at exactly the result the scheduler stopped it on.
        assert len(result.metrics_history) == stops[result.metrics["trial_id"]]
    stopped_early = [r for r in grid if len(r.metrics_history) < 8]
    assert stopped_early and [r.config["a"] for r in grid if len(r.metrics_history) == 8]
    # Each decision at a rung follows the scores recorded there before it (arrival order varies).
    for milestone, recorded in asha.rungs[:-1]:
        order = list(recorded.items())
        for k, (trial_id, score) in enumerate(order):
            earlier = sorted(value for _, value in order[:k])
            (decision,) = [d for t, now, _, d in asha.decisions if t == trial_id and now == milestone]
            if earlier:
                position = 0.5 * (len(earlier) - 1)
                low, high = earlier[int(position)], earlier[min(int(position) + 1, len(earlier) - 1)]
                cutoff = low + (high - low) * (position - int(position))
                assert decision == ("STOP" if score < cutoff else "CONTINUE")
            else:
                assert decision == "CONTINUE"
    assert [m for m, _ in asha.rungs] == [1, 2, 4, 8]
    assert no_trial_actor_left()


def pbt_trainable(config):
    import tempfile

    flag = config["flag"]
    start = tune.get_checkpoint()
    restored = None
    score = 10.0 if config["role"] == "high" else 1.0
    if start is not None:
        with start.as_directory() as directory:
            saved = json.load(open(os.path.join(directory, "state.json")))
        restored, score = saved["owner"], saved["score"]
        if restored != tune.get_context().get_trial_id():
            open(flag, "w").close()  # tell the donor it may finish
    deadline = time.monotonic() + 30
    for i in range(12):
        with tempfile.TemporaryDirectory() as directory:
            json.dump(
                {"owner": tune.get_context().get_trial_id(), "score": score}, open(f"{directory}/state.json", "w")
            )
            tune.report(
                {"score": score, "restored_from": restored or ""}, checkpoint=tune.Checkpoint.from_directory(directory)
            )
        if config["role"] == "high" and i >= 2:
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.02)  # the donor stays alive, its score recorded, until the exploit happened
        elif config["role"] == "low":
            time.sleep(0.05)


def test_pbt_exploit_copies_the_donors_checkpoint(cluster, tmp_path):
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        metric="score",
        mode="max",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.1, 0.2, 0.4]},
        quantile_fraction=0.5,
        seed=0,
    )
    grid = tune.Tuner(
        pbt_trainable,
        param_space={"role": tune.grid_search(["low", "high"]), "lr": 0.1, "flag": str(tmp_path / "flag")},
        tune_config=tune.TuneConfig(scheduler=pbt, max_concurrent_trials=2),
        run_config=run_config(tmp_path),
    ).fit()
    low, high = grid
    high_id = high.metrics["trial_id"]
    assert pbt.exploits and pbt.exploits[0]["trial"] == low.metrics["trial_id"]
    assert pbt.exploits[0]["donor"] == high_id
    # After the exploit the low trial continued from its own copy of the donor's checkpoint.
    copies = [d for d in os.listdir(low.path) if d.startswith("checkpoint_exploit_")]
    assert copies
    saved = json.load(open(os.path.join(low.path, copies[0], "state.json")))
    assert saved == {"owner": high_id, "score": 10.0}
    assert low.metrics["restored_from"] == high_id and low.metrics["score"] == 10.0
    assert low.config["lr"] in (0.1, 0.2, 0.4) and low.config["role"] == "high"  # the donor's config, explored
    assert no_trial_actor_left()


def flaky(config):
    start = tune.get_checkpoint()
    begin = 0
    if start is not None:
        with start.as_directory() as directory:
            begin = int(open(os.path.join(directory, "step")).read()) + 1
    marker = os.path.join(config["dir"], f"failed-{config['kind']}")
    for step in range(begin, 4):
        if step == 2 and (config["kind"] == "always" or not os.path.exists(marker)):
            open(marker, "w").close()
            raise ValueError(f"trial {config['kind']} broke at step {step}")
        directory = os.path.join(config["dir"], f"ck-{config['kind']}-{step}")
        os.makedirs(directory)
        open(os.path.join(directory, "step"), "w").write(str(step))
        train.report({"step": step, "begin": begin}, checkpoint=tune.Checkpoint.from_directory(directory))


def test_a_failing_trial_retries_from_its_checkpoint_then_errors_with_the_traceback(cluster, tmp_path):
    grid = tune.Tuner(
        flaky,
        param_space={"kind": tune.grid_search(["once", "always"]), "dir": str(tmp_path)},
        run_config=run_config(tmp_path, failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    once, always = grid
    assert once.error is None and once.metrics["step"] == 3 and once.metrics["begin"] == 2
    assert once.metrics["training_iteration"] == 4
    assert [m["step"] for m in once.metrics_history] == [0, 1, 2, 3]
    assert isinstance(always.error, ValueError) and "trial always broke at step 2" in str(always.error)
    assert "flaky" in str(always.error)  # the user's frame, from the remote traceback
    assert grid.num_errors == 1 and grid.errors == [always.error] and grid.num_terminated == 1
    assert no_trial_actor_left()


class Counter(tune.Trainable):
    def setup(self, config, offset=0):
        self.value = config["start"] + offset

    def step(self):
        self.value += 1
        if self.value == 103 and not os.path.exists(self.config["marker"]):
            open(self.config["marker"], "w").close()
            raise RuntimeError("once")
        return {"value": self.value}

    def save_checkpoint(self, checkpoint_dir):
        return {"value": self.value}

    def load_checkpoint(self, checkpoint):
        self.value = checkpoint["value"]


def test_class_trainable_checkpoints_restores_and_stops(cluster, tmp_path):
    trainable = tune.with_parameters(Counter, offset=100)
    grid = tune.Tuner(
        trainable,
        param_space={"start": 0, "marker": str(tmp_path / "marker")},
        run_config=run_config(
            tmp_path,
            stop={"training_iteration": 5},
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2),
        ),
    ).fit()
    (result,) = grid
    # Failed at its 3rd step, resumed from the checkpoint of step 2 (value 102), stopped at 5.
    assert result.error is None and result.metrics["value"] == 105 and result.metrics["training_iteration"] == 5
    assert [m["value"] for m in result.metrics_history] == [101, 102, 103, 104, 105]
    assert result.checkpoint.path.endswith("checkpoint_000004")
    assert no_trial_actor_left()


def uses_parameters(config, data):
    context = tune.get_context()
    train.report(
        {
            "total": float(data.sum()),
            "cpus": context.get_trial_resources()["CPU"],
            "trial": context.get_trial_id(),
            "pid": os.getpid(),
        }
    )


def test_with_parameters_and_resources(cluster, tmp_path):
    data = np.ones(500_000)
    trainable = tune.with_resources(tune.with_parameters(uses_parameters, data=data), {"cpu": 2})
    grid = tune.Tuner(trainable, param_space={"i": tune.grid_search([0, 1, 2])}, run_config=run_config(tmp_path)).fit()
    assert [r.metrics["total"] for r in grid] == [500_000.0] * 3
    assert [r.metrics["cpus"] for r in grid] == [2.0] * 3
    assert [r.metrics["trial"] for r in grid] == [r.metrics["trial_id"] for r in grid]
    assert no_trial_actor_left()


def quadratic(config):
    tune.report({"loss": (config["x"] - 1) ** 2 + config["k"]})


def test_optuna_with_a_concurrency_limit_and_points_to_evaluate(cluster, tmp_path):
    from ember.tune.search.optuna import OptunaSearch

    search = ConcurrencyLimiter(OptunaSearch(points_to_evaluate=[{"x": 1.0, "k": 0}], seed=3), max_concurrent=2)
    grid = tune.Tuner(
        quadratic,
        param_space={"x": tune.uniform(-3, 3), "k": tune.randint(0, 4)},
        tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=search, num_samples=8),
        run_config=run_config(tmp_path),
    ).fit()
    assert len(grid) == 8 and grid[0].config == {"x": 1.0, "k": 0}
    assert grid.get_best_result().metrics["loss"] == 0
    assert len(search.searcher.study.trials) == 8
    with pytest.raises(ValueError, match="cannot search a grid_search"):
        tune.Tuner(
            quadratic,
            param_space={"x": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(metric="loss", mode="min", search_alg=OptunaSearch()),
            run_config=run_config(tmp_path, name="bad"),
        ).fit()
    assert no_trial_actor_left()


def test_time_budget_and_stop_function(cluster, tmp_path):
    def forever(config):
        i = 0
        while True:
            i += 1
            tune.report({"i": i})

    grid = tune.Tuner(
        forever,
        param_space={"a": tune.grid_search([1, 2])},
        run_config=run_config(tmp_path, stop=lambda trial_id, result: result["i"] >= 5),
    ).fit()
    assert [r.metrics["i"] for r in grid] == [5, 5]
    budget = tune.Tuner(
        forever,
        tune_config=tune.TuneConfig(time_budget_s=1.0, num_samples=-1),
        run_config=run_config(tmp_path, name="budget"),
    ).fit()
    assert budget.num_terminated == len(budget) >= 1
    wait_for(no_trial_actor_left, message="trial actors gone")


def reports_pid(config):
    tune.report({"pid": os.getpid()})
    if config["i"] % 2:
        tune.report({"pid": os.getpid()})  # stopped here by the stop criterion: a reused actor ends it


def test_reuse_actors_runs_trials_in_the_same_processes(cluster, tmp_path):
    grid = tune.Tuner(
        reports_pid,
        param_space={"i": tune.grid_search(list(range(8)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
        run_config=run_config(tmp_path, stop={"training_iteration": 1}),
    ).fit()
    assert grid.num_terminated == 8 and all(r.metrics["training_iteration"] == 1 for r in grid)
    assert len({r.metrics["pid"] for r in grid}) <= 2
    assert no_trial_actor_left()
