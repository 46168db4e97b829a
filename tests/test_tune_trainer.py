"""A Train trainer as a Tune trainable: each trial runs the trainer with the trial's
``train_loop_config`` merged into the trainer's own, every training result reaches Tune with its
checkpoint, the worker groups bound how many trials run at once, and a bad param_space is an error."""

import json
import os
import tempfile

from ember import train, tune
from tests.test_tune_run import no_trial_actor_left, run_config


def make_loop():
    """The training loop, made in a function so that it is pickled by value: the trial actor ships
    it on to the trainer's workers, which cannot import this test module by name."""

    def loop(config):
        context = train.get_context()
        for epoch in range(config["epochs"]):
            checkpoint = None
            with tempfile.TemporaryDirectory() as path:
                if context.get_world_rank() == 0:
                    with open(os.path.join(path, "state.json"), "w") as f:
                        json.dump({"epoch": epoch, "lr": config["lr"]}, f)
                    checkpoint = train.Checkpoint.from_directory(path)
                train.report(
                    {"loss": config["lr"] * (epoch + 1), "epoch": epoch, "world": context.get_world_size()},
                    checkpoint=checkpoint,
                )

    return loop


def test_torch_trainer_as_a_trainable(cluster, tmp_path):
    from ember.train.torch import TorchTrainer

    trainer = TorchTrainer(
        make_loop(),
        train_loop_config={"epochs": 3, "lr": 99.0},
        scaling_config=train.ScalingConfig(num_workers=2),
    )
    tuner = tune.Tuner(
        trainer,
        param_space={"train_loop_config": {"lr": tune.grid_search([0.1, 0.3, 0.2])}},
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=run_config(tmp_path),
    )
    grid = tuner.fit()
    assert not grid.errors, grid.errors[0]
    assert len(grid) == 3 and grid.num_terminated == 3
    assert [r.config["train_loop_config"]["lr"] for r in grid] == [0.1, 0.3, 0.2]
    for result in grid:
        lr = result.config["train_loop_config"]["lr"]
        assert [m["epoch"] for m in result.metrics_history] == [0, 1, 2]
        assert all(m["world"] == 2 for m in result.metrics_history)
        assert result.metrics["loss"] == lr * 3
        with result.checkpoint.as_directory() as path:
            with open(os.path.join(path, "state.json")) as f:
                assert json.load(f) == {"epoch": 2, "lr": lr}
    best = grid.get_best_result()
    assert best.config["train_loop_config"]["lr"] == 0.1
    # Two workers of one CPU each on a 4-CPU cluster: two trials at a time (the trial actors hold no CPU).
    assert tuner._experiment.max_concurrent == 2
    assert no_trial_actor_left()


def test_a_trainer_param_space_outside_train_loop_config_is_an_error(cluster, tmp_path):
    from ember.train.torch import TorchTrainer

    trainer = TorchTrainer(make_loop(), train_loop_config={"epochs": 1, "lr": 1.0})
    grid = tune.Tuner(trainer, param_space={"lr": tune.grid_search([0.1])}, run_config=run_config(tmp_path)).fit()
    assert grid.num_errors == 1
    assert "train_loop_config" in str(grid.errors[0])
    assert no_trial_actor_left()
