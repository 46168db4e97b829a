"""RLlib's algorithms under ember.tune on the shared cluster: ``Tuner("PPO", param_space=config)``
with search spaces inside the builder's values, nested metrics as stop criteria and metric,
checkpoints that ``Algorithm.from_checkpoint`` and ``Tuner.restore`` use, env runner actors freed
when a trial ends, and the trainable registry."""

import os
import subprocess
import sys

import gymnasium as gym
import pytest

from ember import tune
from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.ppo import PPO, PPOConfig
from ember.tune.algorithm_trainable import as_trainable
from ember.tune.registry import _unregister_trainable, get_trainable_cls, register_trainable
from tests.conftest import wait_for

BATCH = 200
RETURN = "env_runners/episode_return_mean"
STEPS = "env_runners/num_env_steps_sampled_lifetime"


def small_ppo(num_env_runners: int = 0, **training):
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=2)
        .training(train_batch_size_per_learner=BATCH, minibatch_size=100, num_epochs=2, **training)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .debugging(seed=3)
    )


class ClosingCartPole(gym.Env):
    """CartPole that leaves a file behind when it is closed: ``algo.stop()`` closes a trial's envs."""

    def __init__(self, config):
        self.env = gym.make("CartPole-v1")
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space
        self.marker = config["marker"]

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed)

    def step(self, action):
        return self.env.step(action)

    def close(self):
        with open(self.marker, "a") as out:
            out.write(f"{os.getpid()}\n")


def run_config(tmp_path, name, **kwargs):
    return tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0, **kwargs)


def nothing_left_running() -> bool:
    """No trial actor and no env runner actor alive (a trial's ``algo.stop()`` ran)."""
    from ember.util.state import list_actors

    names = ("TrialActor", "EnvRunner", "MultiAgentEnvRunner")
    return not [a for a in list_actors() if a.class_name in names and a.state != "DEAD"]


def test_ppo_by_name_with_a_grid_inside_the_config(cluster, tmp_path):
    config = small_ppo(num_env_runners=1, lr=tune.grid_search([1e-3, 3e-4]))
    grid = tune.Tuner(
        "PPO",
        param_space=config,
        tune_config=tune.TuneConfig(metric=RETURN, mode="max"),
        run_config=run_config(
            tmp_path,
            "grid",
            stop={"training_iteration": 2},
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
        ),
    ).fit()
    assert len(grid) == 2 and grid.num_errors == 0 and grid.num_terminated == 2
    assert sorted(result.config["lr"] for result in grid) == [3e-4, 1e-3]
    for result in grid:
        # Each trial's config is concrete: the grid resolved, the rest of the builder's values kept.
        assert result.config["train_batch_size_per_learner"] == BATCH and result.config["num_env_runners"] == 1
        metrics = result.metrics
        assert metrics["training_iteration"] == 2
        assert metrics["env_runners"]["num_env_steps_sampled_lifetime"] == 2 * BATCH
        assert metrics[STEPS] == 2 * BATCH
        assert isinstance(metrics[RETURN], float)
        assert "learners" in metrics and "default_policy" in metrics["learners"]
        assert [m["training_iteration"] for m in result.metrics_history] == [1, 2]
        assert list(result.metrics_dataframe[STEPS]) == [BATCH, 2 * BATCH]
        assert os.path.exists(os.path.join(result.checkpoint.path, "algorithm_state.pkl"))
        assert os.path.basename(result.path).startswith("PPO_")
    best = grid.get_best_result()
    assert best.metrics[RETURN] == max(result.metrics[RETURN] for result in grid)
    wait_for(nothing_left_running, message="the trials' env runner actors to be stopped")

    restored = Algorithm.from_checkpoint(best.checkpoint)
    try:
        assert isinstance(restored, PPO) and restored.iteration == 2
        assert restored.config.lr == best.config["lr"]
        assert restored.train()["env_runners"]["num_env_steps_sampled_lifetime"] == 3 * BATCH
    finally:
        restored.stop()


def test_a_stop_criterion_on_a_nested_metric_ends_the_trial_early(cluster, tmp_path):
    marker = tmp_path / "closed"
    config = small_ppo(lr=1e-3).environment(ClosingCartPole, env_config={"marker": str(marker)})
    grid = tune.Tuner(
        PPO,  # the Algorithm class, as well as its name
        param_space=config,
        run_config=run_config(tmp_path, "nested", stop={STEPS: 3 * BATCH, "training_iteration": 20}),
    ).fit()
    (result,) = grid
    assert result.error is None
    assert result.metrics["training_iteration"] == 3
    assert result.metrics[STEPS] == 3 * BATCH
    # The trial's algo.stop() ran in its actor (sampling there, num_env_runners=0): it closed both of its
    # envs, after the one the config's validation made to read the spaces.
    assert len(marker.read_text().split()) == 3
    wait_for(nothing_left_running, message="the trial's actors to be released")


def test_an_interrupted_run_resumes_from_the_algorithms_checkpoint(cluster, tmp_path):
    flag = tmp_path / "interrupted"

    def stop(trial_id, result):
        # The first time iteration 2 is reached the "kernel" is interrupted; after the restore,
        # three iterations end the trial.
        if result["training_iteration"] == 2 and not flag.exists():
            flag.touch()
            raise KeyboardInterrupt
        return result["training_iteration"] >= 3

    tuner = tune.Tuner(
        "PPO",
        param_space=small_ppo(lr=tune.grid_search([1e-3])),
        run_config=run_config(
            tmp_path, "resume", stop=stop, checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1)
        ),
    )
    with pytest.raises(KeyboardInterrupt):
        tuner.fit()
    wait_for(nothing_left_running, message="the interrupted trial's actors to be released")
    path = str(tmp_path / "resume")
    assert tune.Tuner.can_restore(path)

    (result,) = tune.Tuner.restore(path, "PPO").fit()
    assert result.error is None
    assert result.metrics["training_iteration"] == 3
    # The algorithm's own counters came back from the checkpoint of iteration 2.
    assert result.metrics[STEPS] == 3 * BATCH
    # (The interrupt came inside iteration 2's handling, before its line reached result.json.)
    assert [m["training_iteration"] for m in result.metrics_history] == [1, 3]
    assert result.checkpoint.path.endswith("checkpoint_000003")
    wait_for(nothing_left_running, message="the restored trial's actors to be released")


def test_the_trainable_restores_under_its_own_config_as_pbt_needs(cluster, tmp_path):
    trainable_class = as_trainable(PPO)
    donor = trainable_class(small_ppo(lr=1e-3).to_dict())
    try:
        first = donor.train()
        assert first["training_iteration"] == 1 and first["env_runners"]["num_env_steps_sampled_lifetime"] == BATCH
        checkpoint = donor.save(str(tmp_path / "donor"))
    finally:
        donor.stop()
    exploiting = trainable_class(small_ppo(lr=2e-4).to_dict())
    try:
        exploiting.restore(checkpoint)
        assert exploiting.algorithm.iteration == 1
        # The donor's weights and optimizer state, the mutated learning rate.
        assert exploiting.algorithm.optimizer.param_groups[0]["lr"] == 2e-4
        assert exploiting.train()["env_runners"]["num_env_steps_sampled_lifetime"] == 2 * BATCH
    finally:
        exploiting.stop()


def test_dqn_by_name_with_a_plain_dict_of_rllib_settings(cluster, tmp_path):
    space = {
        "env": "CartPole-v1",
        "num_env_runners": 0,
        "lr": tune.choice([1e-3, 5e-4]),
        "model_config": {"fcnet_hiddens": [16]},
        "seed": 0,
    }
    grid = tune.Tuner(
        "DQN",
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=2, metric=STEPS, mode="max"),
        run_config=run_config(tmp_path, "dqn", stop={"training_iteration": 2}),
    ).fit()
    assert len(grid) == 2 and grid.num_errors == 0
    for result in grid:
        assert result.config["lr"] in (1e-3, 5e-4) and result.config["model_config"] == {"fcnet_hiddens": [16]}
        assert result.metrics["training_iteration"] == 2 and result.metrics[STEPS] > 0
        assert os.path.basename(result.path).startswith("DQN_")
    wait_for(nothing_left_running, message="the trials' actors to be released")


def test_a_trial_that_cannot_fit_the_cluster_is_refused_before_it_starts(cluster, tmp_path):
    with pytest.raises(ValueError, match="num_env_runners"):
        tune.Tuner("PPO", param_space=small_ppo(num_env_runners=8), run_config=run_config(tmp_path, "big")).fit()


def test_the_registry_resolves_names_and_lists_the_known_ones_for_an_unknown_one(cluster, tmp_path):
    assert get_trainable_cls("PPO") is PPO
    with pytest.raises(tune.TuneError, match=r"Unknown trainable: 'PP0'.*'DQN', 'PPO'"):
        get_trainable_cls("PP0")
    with pytest.raises(tune.TuneError, match="Unknown trainable"):
        tune.Tuner("PP0")

    def scored(config):
        tune.report({"score": config["x"] * 2})

    register_trainable("scored", scored)
    try:
        assert get_trainable_cls("scored") is scored
        with pytest.raises(tune.TuneError, match="'PPO', 'scored'"):
            get_trainable_cls("nope")
        grid = tune.Tuner(
            "scored", param_space={"x": tune.grid_search([1, 2])}, run_config=run_config(tmp_path, "fn")
        ).fit()
        assert sorted(result.metrics["score"] for result in grid) == [2, 4]
    finally:
        _unregister_trainable("scored")


def test_importing_tune_loads_neither_rllib_nor_torch():
    code = (
        "import sys, ember.tune, ember.tune.registry\n"
        "loaded = [m for m in sys.modules if m.startswith('ember.rllib') or m == 'torch']\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_a_trial_reserves_its_env_runners_and_learner_actors():
    from ember.rllib.algorithms.ppo import PPO
    from ember.tune.algorithm_trainable import trial_needs

    assert trial_needs(PPO, {"num_env_runners": 0}) == {"CPU": 1.0}
    assert trial_needs(PPO, {"num_env_runners": tune.grid_search([1, 3]), "num_learners": 2}) == {"CPU": 6.0}
    two_halves = {"num_env_runners": 0, "num_learners": 2, "num_cpus_per_learner": 0.5}
    assert trial_needs(PPO, two_halves) == {"CPU": 2.0}
