"""HyperBandScheduler: its brackets' shapes worked by hand, its rounds (pause at the milestone,
keep the best 1/eta, stop the rest) on the plain experiment, and on the real runtime with trials
paused and resumed from their checkpoints; and ember.tune.registry's register_env."""

import json
import os
import tempfile

import pytest

from ember import tune
from ember.tune.experiment import TERMINATED
from ember.tune.schedulers import HyperBandScheduler
from tests.test_tune_run import no_trial_actor_left, run_config
from tests.test_tune_state import experiment, run_all


def test_bracket_shapes_follow_the_paper():
    hb = HyperBandScheduler(metric="score", mode="max", max_t=81, reduction_factor=3)
    assert hb.s_max_1 == 5
    shapes = [hb.bracket_shape(s) for s in (4, 3, 2, 1, 0)]
    assert [capacity for capacity, _ in shapes] == [81, 34, 15, 8, 5]
    assert [milestones for _, milestones in shapes] == [[1, 3, 9, 27, 81], [3, 9, 27, 81], [9, 27, 81], [27, 81], [81]]


@pytest.mark.parametrize(
    "kwargs, error",
    [({"max_t": 0}, "max_t"), ({"reduction_factor": 1}, "reduction_factor"), ({"mode": "up"}, "mode")],
)
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(ValueError, match=error):
        HyperBandScheduler(metric="score", **{"mode": "max", **kwargs})


def test_rounds_pause_at_the_milestone_then_keep_the_best():
    hb = HyperBandScheduler(metric="score", mode="max", max_t=4, reduction_factor=2)
    # Bracket 0: 4 trials judged at 1, 2 and 4; bracket 1 (capacity 3, milestones 2 and 4) gets the
    # fifth trial only, and judges it alone once the grid has run out.
    exp = experiment({"a": tune.grid_search([1, 3, 0, 2, 9])}, scheduler=hb, max_concurrent=2)
    decisions = run_all(exp, lambda trial, i: trial.config["a"], iterations=100)
    assert all(t.status == TERMINATED for t in exp.trials)
    ran = {t.config["a"]: t.iteration for t in exp.trials}
    # Round 1 keeps 3 and 2 (ceil(4/2)); round 2 keeps 3; 3 runs to max_t. 9 is alone in its bracket.
    assert ran == {1: 1, 0: 1, 2: 2, 3: 4, 9: 4}
    assert [m for m in hb.brackets[0].milestones] == [1, 2, 4] and hb.brackets[1].milestones == [2, 4]
    by_id = {t.trial_id: t.config["a"] for t in exp.trials}
    # Every trial but the last to reach a milestone paused there; nothing ran past max_t.
    paused = sorted((by_id[tid], i) for tid, i, d in decisions if d == "PAUSE")
    assert (1, 1) in paused and (3, 1) in paused and all(i < 4 for _, i in paused)
    assert max(i for _, i, _ in decisions) == 4


def checkpointed(config):
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as path:
            with open(os.path.join(path, "step.json")) as f:
                start = json.load(f)
    for step in range(start + 1, 9):
        with tempfile.TemporaryDirectory() as path:
            with open(os.path.join(path, "step.json"), "w") as f:
                json.dump(step, f)
            tune.report({"score": config["a"], "step": step}, checkpoint=tune.Checkpoint.from_directory(path))


def test_hyperband_on_the_runtime_resumes_paused_trials_from_checkpoints(cluster, tmp_path):
    hb = HyperBandScheduler(metric="score", mode="max", max_t=4, reduction_factor=2)
    grid = tune.Tuner(
        checkpointed,
        param_space={"a": tune.grid_search([1, 3, 0, 2])},
        tune_config=tune.TuneConfig(scheduler=hb, max_concurrent_trials=2),
        run_config=run_config(tmp_path),
    ).fit()
    assert len(grid) == 4 and grid.num_terminated == 4 and grid.num_errors == 0
    steps = {r.config["a"]: [m["step"] for m in r.metrics_history] for r in grid}
    # Paused trials went on from their checkpoints: no step was run twice.
    assert steps == {1: [1], 0: [1], 2: [1, 2], 3: [1, 2, 3, 4]}
    assert no_trial_actor_left()


def test_register_env_forwards_to_rllib():
    from ember.rllib.env.registry import registered_creator
    from ember.tune.registry import register_env

    def creator(env_config):
        return env_config

    register_env("tune-registry-test-env", creator)
    assert registered_creator("tune-registry-test-env") is creator
    assert tune.registry.register_env is register_env
    with pytest.raises(TypeError, match="callable"):
        register_env("tune-registry-test-env", 3)
