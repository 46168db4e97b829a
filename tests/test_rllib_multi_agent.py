"""ember.rllib's MultiAgentEnv: PPO trains one module per policy; mapping and space errors at build time."""

import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch

from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.dqn import DQNConfig
from ember.rllib.algorithms.ppo import PPOConfig
from ember.rllib.env.env_factory import EnvSpec, MultiAgentSpec
from ember.rllib.env.multi_agent_env import MultiAgentEnv
from ember.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ember.rllib.policy.policy import PolicySpec

EPISODE_LEN = 10


class MatchEnv(MultiAgentEnv):
    """Two agents with different spaces acting at once for 10 steps. "left" sees a Box(2) and earns 1
    for action (obs[0] > 0); "right" sees a Discrete(3) and earns 1 for repeating it. Random play
    returns about 5 + 3.3 a episode, perfect play 20."""

    def __init__(self, config=None):
        super().__init__()
        self.possible_agents = ["left", "right"]
        self.agents = list(self.possible_agents)
        self.observation_spaces = {"left": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "right": gym.spaces.Discrete(3)}
        self.action_spaces = {"left": gym.spaces.Discrete(2), "right": gym.spaces.Discrete(3)}
        self.rng = np.random.default_rng()

    def _obs(self):
        self.left = self.rng.uniform(-1, 1, 2).astype(np.float32)
        self.right = int(self.rng.integers(3))
        return {"left": self.left, "right": self.right}

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, actions):
        rewards = {
            "left": float(actions["left"] == int(self.left[0] > 0)),
            "right": float(actions["right"] == self.right),
        }
        self.t += 1
        done = self.t >= EPISODE_LEN
        return self._obs(), rewards, {"__all__": False}, {"__all__": done}, {}


class TurnEnv(MultiAgentEnv):
    """Agents take turns ("a" at even steps, "b" at odd ones); each one's reward for its move arrives
    with the other's move: a's move k earns 10 + k, b's move k earns 100 + k. Four moves each."""

    def __init__(self, config=None):
        super().__init__()
        self.possible_agents = ["a", "b"]
        self.observation_spaces = {a: gym.spaces.Box(-1.0, 1.0, (1,), np.float32) for a in self.possible_agents}
        self.action_spaces = {a: gym.spaces.Discrete(2) for a in self.possible_agents}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return {"a": np.zeros(1, np.float32)}, {}

    def step(self, actions):
        mover = "a" if self.t % 2 == 0 else "b"
        if set(actions) != {mover}:
            raise AssertionError(f"step {self.t}: expected only {mover!r} to act, got {sorted(actions)}")
        rewards = (
            {}
            if self.t == 0
            else {("b" if mover == "a" else "a"): (10.0 if mover == "b" else 100.0) + (self.t - 1) // 2}
        )
        self.t += 1
        done = self.t >= 8
        if done:
            rewards[mover] = (100.0 if mover == "b" else 10.0) + (self.t - 1) // 2
        nxt = "a" if self.t % 2 == 0 else "b"
        obs = {} if done else {nxt: np.full(1, self.t / 10, np.float32)}
        return obs, rewards, {"__all__": done}, {"__all__": False}, {}


def match_config(**multi_agent):
    return (
        PPOConfig()
        .environment(MatchEnv)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=4)
        .multi_agent(
            **{
                "policies": {"p_left", "p_right"},
                "policy_mapping_fn": lambda agent_id, episode, **kw: f"p_{agent_id}",
                **multi_agent,
            }
        )
        .training(lr=3e-3, gamma=0.5, lambda_=0.9, train_batch_size_per_learner=400, minibatch_size=100, num_epochs=4)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .reporting(progress=False)
        .debugging(seed=3)
    )


def test_ppo_trains_one_module_per_policy_and_checkpoints(cluster, tmp_path):
    algo = match_config().build_algo()
    try:
        assert set(algo.modules) == {"p_left", "p_right"}
        assert algo.get_module("p_left").observation_space.shape == (2,)
        assert algo.get_module("p_right").action_space.n == 3
        first = algo.train()
        assert {"p_left", "p_right"} <= set(first["learners"])
        for _ in range(30):
            result = algo.train()
            if result["env_runners/episode_return_mean"] >= 17:
                break
        runners = result["env_runners"]
        assert runners["episode_return_mean"] >= 17, runners
        # Both modules learned (random play: 5 for left, 3.3 for right).
        assert runners["module_episode_returns_mean"]["p_left"] > 8
        assert runners["module_episode_returns_mean"]["p_right"] > 8
        greedy = algo.evaluate()["env_runners"]["episode_return_mean"]
        assert greedy >= 17
        with pytest.raises(KeyError, match="p_left"):
            algo.get_module("default_policy")
        path = algo.save_to_path(tmp_path / "ckpt")
        obs = {"obs": torch.eye(3)}
        before = algo.get_module("p_right").forward_inference(obs)["action_dist_inputs"]
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        after = restored.get_module("p_right").forward_inference(obs)["action_dist_inputs"]
        assert torch.equal(before, after)
        assert restored.iteration == result["training_iteration"]
    finally:
        restored.stop()


def test_policies_to_train_freezes_the_others():
    config = match_config(policies_to_train=["p_left"]).env_runners(num_env_runners=0)
    algo = config.build_algo()
    try:
        frozen = {k: v.clone() for k, v in algo.get_module("p_right").state_dict().items()}
        result = algo.train()
        assert "p_left" in result["learners"] and "p_right" not in result["learners"]
        for key, value in algo.get_module("p_right").state_dict().items():
            assert torch.equal(value, frozen[key])
    finally:
        algo.stop()


def test_turn_taking_rewards_reach_the_move_that_earned_them():
    spec = EnvSpec(
        "TurnEnv",
        TurnEnv,
        None,
        None,
        MultiAgentSpec(
            lambda agent_id, episode: f"p{agent_id}",
            {f"p{a}": (gym.spaces.Box(-1.0, 1.0, (1,), np.float32), gym.spaces.Discrete(2)) for a in "ab"},
            {},
        ),
    )
    runner = MultiAgentEnvRunner(spec, {}, num_envs=1, seed=0)
    from ember.rllib.algorithms.algorithm_config import DefaultModelConfig
    from ember.rllib.core.rl_module.rl_module import PPOTorchModule

    module = PPOTorchModule(*spec.multi_agent.module_spaces["pa"], DefaultModelConfig(fcnet_hiddens=[4]))
    policies = {"pa": module.numpy_policy(), "pb": module.numpy_policy()}
    out = runner.sample(policies, 8)  # one episode: 4 moves each
    assert out["num_env_steps"] == 8
    assert list(out["episode_returns"]) == [sum(10 + k for k in range(4)) + sum(100 + k for k in range(4))]
    a, b = out["modules"]["pa"], out["modules"]["pb"]
    assert list(a["rewards"]) == [10, 11, 12, 13] and list(b["rewards"]) == [100, 101, 102, 103]
    # The last move of each ends with the episode (terminated): no bootstrap value.
    assert list(a["terminateds"]) == [False, False, False, True] and a["next_vf"][-1] == 0
    assert list(a["seq_lens"]) == [4] and list(b["seq_lens"]) == [4]
    # a's observations are those it saw at its turns (steps 0, 2, 4, 6).
    assert np.allclose(a["obs"][:, 0], [0.0, 0.2, 0.4, 0.6])
    assert out["module_episode_returns"] == {"pa": [46.0], "pb": [406.0]}
    runner.stop()


def test_an_unknown_policy_from_the_mapping_fails_at_build_time():
    config = match_config(policy_mapping_fn=lambda agent_id, episode, **kw: "p_" + agent_id.upper())
    with pytest.raises(ValueError, match="mapped agent 'left' to 'p_LEFT', which is not one of the policies"):
        config.build_algo()


def test_mismatched_spaces_and_misuse_fail_at_build_time():
    one_policy = match_config(policies={"shared"}, policy_mapping_fn=lambda agent_id, episode, **kw: "shared")
    with pytest.raises(ValueError, match="agent 'right' maps to policy 'shared' but its observation space"):
        one_policy.build_algo()
    unused = match_config(policies={"p_left", "p_right", "spare"})
    with pytest.raises(ValueError, match=r"policies \['spare'\]: no agent"):
        unused.build_algo()
    with pytest.raises(ValueError, match="policies_to_train names unknown policies"):
        match_config(policies_to_train=["p_middle"]).build_algo()
    with pytest.raises(ValueError, match="needs a MultiAgentEnv"):
        PPOConfig().environment("CartPole-v1").multi_agent(policies={"a", "b"}).build_algo()
    with pytest.raises(NotImplementedError, match="DQN on a MultiAgentEnv"):
        DQNConfig().environment(MatchEnv).multi_agent(
            policies={"p_left", "p_right"}, policy_mapping_fn=lambda agent_id, episode, **kw: f"p_{agent_id}"
        ).build_algo()
    with pytest.raises(TypeError, match="policy_mapping_fn must be callable"):
        PPOConfig().multi_agent(policy_mapping_fn="p0")


def test_a_policy_spec_gives_spaces_to_an_unmapped_policy():
    spare = PolicySpec(
        observation_space=gym.spaces.Box(-1.0, 1.0, (5,), np.float32), action_space=gym.spaces.Discrete(4)
    )
    config = match_config(policies={"p_left": None, "p_right": PolicySpec(), "spare": spare}).env_runners(
        num_env_runners=0
    )
    algo = config.build_algo()
    try:
        assert algo.get_module("spare").observation_space.shape == (5,)
        result = algo.train()
        assert "spare" not in result["learners"]  # no agent acted with it: nothing to learn from
    finally:
        algo.stop()


class KillOnceMatchEnv(MatchEnv):
    """MatchEnv whose first env runner SIGKILLs its own process at its 5th step, once in a run
    (``kill_file`` records it); with ``raise_at`` it raises instead."""

    def __init__(self, config):
        super().__init__(config)
        self.kill_file = config.get("kill_file")
        self.raise_at = config.get("raise_at")
        self.armed = config.worker_index == 1 and config.vector_index == 0
        self.steps = 0

    def step(self, actions):
        self.steps += 1
        if self.armed and self.steps == self.raise_at:
            raise KeyError("the two-agent env lost an agent")
        if self.armed and self.kill_file and self.steps == 5 and not os.path.exists(self.kill_file):
            open(self.kill_file, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(actions)


def test_a_killed_multi_agent_runner_is_replaced_and_env_errors_name_the_env(cluster, tmp_path):
    kill_file = str(tmp_path / "killed")
    config = (
        match_config()
        .environment(KillOnceMatchEnv, env_config={"kill_file": kill_file})
        .env_runners(num_env_runners=2, num_envs_per_env_runner=2)
    )
    algo = config.build_algo()
    try:
        result = algo.train()  # runner 1 kills itself 5 steps into this iteration
        assert os.path.exists(kill_file)
        assert result["fault_tolerance"] == {"num_healthy_workers": 2, "num_remote_worker_restarts": 1}
        assert result["env_runners"]["num_env_steps_sampled"] == 400
    finally:
        algo.stop()
    failing = match_config().environment(KillOnceMatchEnv, env_config={"raise_at": 3})
    algo = failing.build_algo()
    try:
        with pytest.raises(KeyError, match="lost an agent") as info:
            algo.train()
        assert any("KillOnceMatchEnv" in note and "stepping" in note for note in getattr(info.value, "__notes__", []))
    finally:
        algo.stop()
