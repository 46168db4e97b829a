"""ember.rllib with learner actors (``num_learners >= 1``): DDP replicas stay identical, PPO learns
and DQN runs on sharded batches, checkpoints round-trip, a SIGKILLed learner fails clearly, stop frees all."""

import os
import signal

import numpy as np
import psutil
import pytest
import torch
from conftest import wait_for

from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.dqn import DQNConfig
from ember.rllib.algorithms.ppo import PPOConfig
from ember.rllib.core.learner import LearnerDiedError
from ember.rllib.core.learner.learner_group import reduce_stats, shard


def cartpole_ppo(num_learners: int, total_batch: int = 1000, **training):
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
        .learners(num_learners=num_learners, num_cpus_per_learner=0.5)
        .training(
            **{
                "lr": 3e-4,
                "train_batch_size_per_learner": total_batch // max(1, num_learners),
                "minibatch_size": 125,
                "num_epochs": 6,
                "lambda_": 0.95,
                "vf_clip_param": 1e4,
                "vf_loss_coeff": 0.5,
                "use_kl_loss": False,
                "grad_clip": 0.5,
                **training,
            }
        )
        .rl_module(model_config={"fcnet_hiddens": [64, 64], "vf_share_layers": False})
        .reporting(progress=False)
        .debugging(seed=1)
    )


def assert_replicas_identical(algo) -> None:
    """Every learner holds the weights of learner 0, and so does the algorithm's module."""
    replicas = algo.learner_group.get_weights_of_all()
    assert len(replicas) == algo.config.num_learners
    for mid, module in algo.modules.items():
        for name, value in module.state_dict().items():
            for replica in replicas:
                assert torch.equal(replica[mid][name], value), (mid, name)


def test_shard_cuts_equal_pieces_and_stats_reduce_as_rllib():
    batch = {"obs": np.arange(22).reshape(11, 2), "rewards": np.arange(11.0)}
    pieces = shard(batch, 3)
    assert [len(p["rewards"]) for p in pieces] == [3, 3, 3]
    assert np.array_equal(np.concatenate([p["obs"] for p in pieces]), batch["obs"][:9])
    with pytest.raises(ValueError, match="num_shards"):
        shard(batch, 0)
    reduced = reduce_stats(
        [{"vf_loss": 1.0, "num_module_steps_trained": 500}, {"vf_loss": 3.0, "num_module_steps_trained": 500}]
    )
    assert reduced == {"vf_loss": 2.0, "num_module_steps_trained": 1000}


def test_bad_learner_settings_fail_at_build():
    with pytest.raises(ValueError, match="num_learners must be >= 0"):
        cartpole_ppo(1).learners(num_learners=-1).build_algo()
    with pytest.raises(TypeError, match="num_gpus_per_learner must be a number"):
        cartpole_ppo(2).learners(num_gpus_per_learner="one").build_algo()


@pytest.mark.parametrize("num_learners", [1, 2])
def test_ppo_on_learner_actors_learns_with_identical_replicas(cluster, num_learners):
    algo = cartpole_ppo(num_learners).build_algo()
    try:
        returns = []
        for _ in range(20):
            result = algo.train()
            returns.append(result["env_runners"]["episode_return_mean"])
            if returns[-1] >= 100:
                break
        assert returns[-1] >= 100 and returns[-1] > returns[0] + 50, returns
        learner = result["learners"]["default_policy"]
        assert {"policy_loss", "vf_loss", "entropy", "total_loss", "vf_explained_var"} <= set(learner)
        # Each learner trained on its shard: together, the whole batch.
        assert learner["num_module_steps_trained"] == 1000
        assert result["num_env_steps_trained_lifetime"] == 1000 * len(returns)
        assert_replicas_identical(algo)
    finally:
        algo.stop()


def test_checkpoint_round_trip_with_learner_actors(cluster, tmp_path):
    algo = cartpole_ppo(2, total_batch=500, num_epochs=2).build_algo()
    try:
        for _ in range(2):
            algo.train()
        path = algo.save_to_path(tmp_path / "ppo")
        restored = Algorithm.from_checkpoint(path)
        try:
            assert restored.learner_group is not None and restored.iteration == 2
            obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
            assert torch.equal(
                algo.get_module().forward_inference({"obs": obs})["action_dist_inputs"],
                restored.get_module().forward_inference({"obs": obs})["action_dist_inputs"],
            )
            assert_replicas_identical(restored)
            # The learners' optimizer state came back too: the next update is the same on both.
            saved, loaded = algo.learner_group.get_state(), restored.learner_group.get_state()
            for a, b in zip(
                saved["optimizers"]["default_policy"]["state"].values(),
                loaded["optimizers"]["default_policy"]["state"].values(),
            ):
                assert torch.equal(a["exp_avg"], b["exp_avg"])
            restored.train()
            assert_replicas_identical(restored)
        finally:
            restored.stop()
    finally:
        algo.stop()


def test_dqn_on_two_learners_runs_and_stop_frees_them(cluster):
    config = (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=2, num_cpus_per_learner=0.5)
        .training(
            lr=1e-3,
            train_batch_size_per_learner=16,
            num_steps_sampled_before_learning_starts=200,
            target_network_update_freq=200,
        )
        .rl_module(model_config={"fcnet_hiddens": [32], "fcnet_activation": "relu"})
        .reporting(min_sample_timesteps_per_iteration=400, progress=False)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        learner = result["learners"]["default_policy"]
        assert {"qf_loss", "qf_mean", "td_error_mean"} <= set(learner) and learner["num_target_updates"] >= 2
        # Each gradient step trains on 16 rows per learner.
        assert result["num_env_steps_trained_lifetime"] > 0 and result["num_env_steps_trained_lifetime"] % 32 == 0
        assert_replicas_identical(algo)
        targets = algo.learner_group.foreach_learner(lambda learner: learner.extras["target"].state_dict())
        for name, value in algo.target.state_dict().items():
            assert all(torch.equal(t[name], value) for t in targets)
        pids = list(algo.learner_group.pids)
    finally:
        algo.stop()
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), message="stop() to end the learners")
    with pytest.raises(RuntimeError, match="stopped"):
        algo.train()


def test_sigkilled_learner_fails_the_next_train_naming_it(cluster):
    algo = cartpole_ppo(2, total_batch=500, num_epochs=1).build_algo()
    pids = list(algo.learner_group.pids)
    try:
        algo.train()
        os.kill(pids[1], signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(pids[1]), message="the learner to die")
        with pytest.raises(LearnerDiedError, match=rf"learner 1 of 2 \(pid {pids[1]}\) died"):
            algo.train()
        # The group stays failed: no call waits on the dead learner's peers.
        with pytest.raises(LearnerDiedError, match="learner 1"):
            algo.train()
    finally:
        algo.stop()
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), message="stop() to end the learners")


def test_multi_agent_ppo_on_two_learners_keeps_every_module_identical(cluster):
    from test_rllib_multi_agent import match_config

    algo = match_config().learners(num_learners=2, num_cpus_per_learner=0.5).training(train_batch_size_per_learner=200)
    algo = algo.build_algo()
    try:
        for _ in range(3):
            result = algo.train()
        assert {"p_left", "p_right"} <= set(result["learners"])
        assert_replicas_identical(algo)
    finally:
        algo.stop()
