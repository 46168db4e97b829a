"""ember.rllib's DQN: its pure parts (replay buffer, epsilon schedule, double-Q loss) and learning
CartPole on an env runner actor of the shared cluster, with a checkpoint round trip."""

import numpy as np
import pytest
import torch

from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.dqn import DQNConfig
from ember.rllib.algorithms.dqn.dqn import dqn_loss
from ember.rllib.utils.replay_buffers import ReplayBuffer, piecewise_schedule


def test_replay_buffer_ring_and_uniform_sampling():
    buffer = ReplayBuffer(5)
    for start in (0, 3):
        n = 3
        buffer.add(
            {
                "obs": np.arange(start, start + n, dtype=np.float32)[:, None],
                "next_obs": np.zeros((n, 1), np.float32),
                "actions": np.zeros(n, np.int64),
                "rewards": np.arange(start, start + n, dtype=np.float32),
                "terminateds": np.zeros(n, bool),
            }
        )
    assert len(buffer) == 5
    # Six added to a capacity of five: the oldest (0) was overwritten by 5.
    assert sorted(buffer.columns["rewards"].tolist()) == [1, 2, 3, 4, 5]
    sample = buffer.sample(2000, np.random.default_rng(0))
    counts = np.bincount(sample["rewards"].astype(int), minlength=6)
    assert counts[0] == 0 and all(300 < c < 500 for c in counts[1:])
    np.testing.assert_array_equal(sample["obs"][:, 0], sample["rewards"])  # rows stay together
    with pytest.raises(ValueError):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3).sample(1, np.random.default_rng(0))


def test_epsilon_schedule():
    points = [(0, 1.0), (100, 0.1), (200, 0.05)]
    assert [piecewise_schedule(points, t) for t in (0, 50, 100, 150, 200, 10**6)] == pytest.approx(
        [1.0, 0.55, 0.1, 0.075, 0.05, 0.05]
    )
    assert piecewise_schedule(0.3, 12345) == 0.3


def test_double_q_target_uses_the_online_argmax():
    q = torch.tensor([[1.0, 2.0]], requires_grad=True)
    next_online = torch.tensor([[5.0, 0.0]])  # online prefers action 0
    next_target = torch.tensor([[1.0, 9.0]])  # the target network prefers action 1
    batch = {"actions": torch.tensor([1]), "rewards": torch.tensor([1.0]), "terminateds": torch.tensor([False])}
    _, td_double = dqn_loss(q, next_online, next_target, batch, 0.5, double_q=True)
    _, td_plain = dqn_loss(q, next_online, next_target, batch, 0.5, double_q=False)
    assert td_double.item() == pytest.approx(2.0 - (1 + 0.5 * 1.0))
    assert td_plain.item() == pytest.approx(2.0 - (1 + 0.5 * 9.0))
    batch["terminateds"] = torch.tensor([True])
    loss, td = dqn_loss(q, next_online, next_target, batch, 0.5, double_q=True, loss_fn="mse")
    assert td.item() == pytest.approx(1.0) and loss.item() == pytest.approx(1.0)


def test_dqn_config_validation():
    config = DQNConfig().environment("CartPole-v1").env_runners(num_env_runners=0).reporting(progress=False)
    with pytest.raises(ValueError, match="DQN needs a Discrete action space"):
        config.copy().environment("Pendulum-v1").build_algo()
    with pytest.raises(NotImplementedError, match="prioritized"):
        config.copy().training(replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer"}).build_algo()
    with pytest.raises(ValueError, match="epsilon"):
        config.copy().training(epsilon=[(0, 1.5)]).build_algo()
    with pytest.raises(ValueError, match="tau"):
        config.copy().training(tau=0).build_algo()


def test_dqn_learns_cartpole_and_round_trips(cluster, tmp_path):
    config = (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1)
        .training(lr=1e-3, epsilon=[(0, 1.0), (4000, 0.02)], num_steps_sampled_before_learning_starts=500)
        .rl_module(model_config={"fcnet_hiddens": [64, 64], "fcnet_activation": "relu"})
        .reporting(progress=False)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        returns = []
        for _ in range(15):
            result = algo.train()
            returns.append(result["env_runners"]["episode_return_mean"])
            if returns[-1] >= 60:
                break
        assert returns[-1] >= 60 and returns[-1] > 2 * returns[0], returns
        learner = result["learners"]["default_policy"]
        assert learner["num_target_updates"] >= 2 and learner["curr_epsilon"] < 1.0
        assert result["num_env_steps_sampled_lifetime"] >= 1000 * len(returns)
        path = algo.save_to_path(tmp_path / "dqn")
        restored = Algorithm.from_checkpoint(path)
        try:
            obs = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
            assert torch.equal(
                algo.get_module().forward_inference({"obs": obs})["q_values"],
                restored.get_module().forward_inference({"obs": obs})["q_values"],
            )
            assert len(restored.buffer) == len(algo.buffer) and restored.epsilon() == algo.epsilon()
            assert algo.evaluate() == restored.evaluate()
        finally:
            restored.stop()
    finally:
        algo.stop()
