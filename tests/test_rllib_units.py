"""ember.rllib's pure parts and its config validation: no cluster (everything here runs in-process)."""

import io
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from ember.rllib.algorithms.algorithm_config import DefaultModelConfig
from ember.rllib.algorithms.ppo import PPOConfig
from ember.rllib.algorithms.ppo.ppo import postprocess, ppo_loss, update_kl_coeff
from ember.rllib.env.env_factory import EnvContext, resolve_env
from ember.rllib.progress import TextReporter, summary_line
from ember.rllib.utils.metrics import ResultDict
from ember.rllib.utils.postprocessing import EpisodeStats, compute_gae, explained_variance


def local_ppo(**training):
    """A PPO config that samples in this process (no actors), quiet."""
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .training(**{"train_batch_size_per_learner": 64, "minibatch_size": 32, "num_epochs": 1, **training})
        .rl_module(model_config={"fcnet_hiddens": [8]})
        .reporting(progress=False)
        .debugging(seed=0)
    )


# ---- GAE -----------------------------------------------------------------------------------------------


def reference_gae(rewards, values, next_values, terminateds, truncateds, gamma, lam):
    """GAE for one env, step by step from its definition (the test's independent computation)."""
    n = len(rewards)
    adv = np.zeros(n)
    for t in range(n):
        total, discount = 0.0, 1.0
        for k in range(t, n):
            next_value = 0.0 if terminateds[k] else next_values[k]
            total += discount * (rewards[k] + gamma * next_value - values[k])
            if terminateds[k] or truncateds[k]:
                break
            discount *= gamma * lam
        adv[t] = total
    return adv


def test_gae_matches_its_definition_across_episode_ends():
    rng = np.random.default_rng(3)
    steps, envs = 12, 3
    rewards = rng.normal(size=(steps, envs))
    values = rng.normal(size=(steps, envs))
    next_values = rng.normal(size=(steps, envs))
    terminateds = np.zeros((steps, envs), bool)
    truncateds = np.zeros((steps, envs), bool)
    terminateds[4, 0] = terminateds[9, 1] = True
    truncateds[6, 2] = True
    adv, targets = compute_gae(rewards, values, next_values, terminateds, truncateds, 0.9, 0.8)
    for env in range(envs):
        expected = reference_gae(
            rewards[:, env], values[:, env], next_values[:, env], terminateds[:, env], truncateds[:, env], 0.9, 0.8
        )
        np.testing.assert_allclose(adv[:, env], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, adv + values, rtol=1e-5, atol=1e-5)


def test_gae_special_cases():
    # lambda=1, values 0, no bootstrap: advantages are the discounted returns to the episode end.
    rewards = np.ones((4, 1))
    zeros = np.zeros((4, 1))
    term = np.array([[False], [False], [False], [True]])
    adv, _ = compute_gae(rewards, zeros, zeros, term, np.zeros_like(term), 0.5, 1.0)
    np.testing.assert_allclose(adv[:, 0], [1.875, 1.75, 1.5, 1.0])
    # A truncated step bootstraps from the final observation's value; a terminated one does not.
    next_values = np.full((1, 2), 10.0)
    adv, _ = compute_gae(
        np.ones((1, 2)), np.zeros((1, 2)), next_values, np.array([[True, False]]), np.array([[False, True]]), 0.5, 0.9
    )
    np.testing.assert_allclose(adv[0], [1.0, 6.0])
    with pytest.raises(ValueError, match="time-major"):
        compute_gae(np.ones(3), np.ones(3), np.ones(3), np.zeros(3, bool), np.zeros(3, bool), 0.9, 0.9)


def test_postprocess_flattens_and_standardises():
    rng = np.random.default_rng(0)
    batch = {
        "obs": rng.normal(size=(5, 2, 4)).astype(np.float32),
        "actions": rng.integers(0, 2, size=(5, 2)),
        "action_logp": np.full((5, 2), -0.69, np.float32),
        "action_dist_inputs": np.zeros((5, 2, 2), np.float32),
        "vf_preds": rng.normal(size=(5, 2)).astype(np.float32),
        "next_vf": rng.normal(size=(5, 2)).astype(np.float32),
        "rewards": np.ones((5, 2), np.float32),
        "terminateds": np.zeros((5, 2), bool),
        "truncateds": np.zeros((5, 2), bool),
    }
    train = postprocess([batch, batch], 0.99, 0.95)
    assert train["obs"].shape == (20, 4) and train["action_dist_inputs"].shape == (20, 2)
    assert abs(train["advantages"].mean()) < 1e-5 and abs(train["advantages"].std() - 1) < 1e-3
    # Targets are not standardised: they are what the value function should predict.
    _, targets = compute_gae(
        batch["rewards"], batch["vf_preds"], batch["next_vf"], batch["terminateds"], batch["truncateds"], 0.99, 0.95
    )
    np.testing.assert_allclose(train["value_targets"][:10], targets.reshape(10), rtol=1e-6)


# ---- the PPO loss ---------------------------------------------------------------------------------------


def loss_inputs(new_logits, old_logits, actions, advantages, values, targets):
    old = torch.log_softmax(torch.tensor(old_logits, dtype=torch.float32), -1)
    actions = torch.tensor(actions)
    batch = {
        "actions": actions,
        "action_logp": old[torch.arange(len(actions)), actions],
        "action_dist_inputs": torch.tensor(old_logits, dtype=torch.float32),
        "advantages": torch.tensor(advantages, dtype=torch.float32),
        "value_targets": torch.tensor(targets, dtype=torch.float32),
    }
    outputs = {
        "action_dist_inputs": torch.tensor(new_logits, dtype=torch.float32, requires_grad=True),
        "vf_preds": torch.tensor(values, dtype=torch.float32),
    }
    return outputs, batch


KW = dict(clip_param=0.2, vf_clip_param=10.0, vf_loss_coeff=0.5, entropy_coeff=0.0, kl_coeff=0.0, use_kl_loss=False)


def test_ppo_loss_clips_the_ratio():
    # New policy: p(a=0) = 0.9 against an old 0.5, so the ratio is 1.8.
    new = [[math.log(0.9), math.log(0.1)]] * 2
    old = [[0.0, 0.0]] * 2
    outputs, batch = loss_inputs(new, old, [0, 0], [1.0, -1.0], [0.0, 0.0], [0.0, 0.0])
    loss, stats = ppo_loss(outputs, batch, True, **KW)
    # Positive advantage: min(1.8, 1.2) * 1 = 1.2. Negative: min(-1.8, -1.2) = -1.8. Mean 0.3 -> loss -(-0.3).
    assert stats["policy_loss"] == pytest.approx(0.3, abs=1e-5)
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    loss.backward()
    grad = outputs["action_dist_inputs"].grad
    assert torch.all(grad[0] == 0)  # clipped: the row with positive advantage gives no gradient
    assert torch.any(grad[1] != 0)


def test_ppo_loss_value_entropy_and_kl_terms():
    logits = [[0.0, 0.0]]
    outputs, batch = loss_inputs(logits, logits, [1], [0.0], [3.0], [1.0])
    _, stats = ppo_loss(outputs, batch, True, **{**KW, "vf_clip_param": 10.0})
    assert stats["vf_loss"] == pytest.approx(4.0) and stats["policy_loss"] == pytest.approx(0.0)
    assert stats["entropy"] == pytest.approx(math.log(2), rel=1e-5)
    assert stats["mean_kl_loss"] == pytest.approx(0.0, abs=1e-7)
    _, clipped = ppo_loss(outputs, batch, True, **{**KW, "vf_clip_param": 1.5})
    assert clipped["vf_loss"] == pytest.approx(1.5) and clipped["vf_loss_unclipped"] == pytest.approx(4.0)
    total, _ = ppo_loss(outputs, batch, True, **{**KW, "entropy_coeff": 0.1})
    assert total.item() == pytest.approx(0.5 * 4.0 - 0.1 * math.log(2), rel=1e-5)
    outputs, batch = loss_inputs([[1.0, 0.0]], logits, [1], [0.0], [0.0], [0.0])
    total, stats = ppo_loss(outputs, batch, True, **{**KW, "kl_coeff": 2.0, "use_kl_loss": True})
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    kl = float(np.sum(0.5 * np.log(0.5 / p)))
    assert stats["mean_kl_loss"] == pytest.approx(kl, rel=1e-5)
    assert total.item() == pytest.approx(2.0 * kl - stats["policy_loss"] * -1, rel=1e-4)


def test_kl_coefficient_adapts_as_rllib():
    assert update_kl_coeff(0.2, 0.05, 0.01) == pytest.approx(0.3)
    assert update_kl_coeff(0.2, 0.001, 0.01) == pytest.approx(0.1)
    assert update_kl_coeff(0.2, 0.01, 0.01) == 0.2


# ---- episode statistics, results, text ---------------------------------------------------------------


def test_episode_stats_window_and_lifetime():
    stats = EpisodeStats(window=3)
    assert math.isnan(stats.summary()["episode_return_mean"])
    stats.add([1, 2], [10, 20], 100)
    stats.add([3, 4], [30, 40], 50)
    summary = stats.summary()
    assert summary == {
        "episode_return_mean": 3.0,
        "episode_return_min": 2.0,
        "episode_return_max": 4.0,
        "episode_len_mean": 30.0,
    }
    assert stats.num_episodes_lifetime == 4 and stats.num_env_steps_lifetime == 150
    copy = EpisodeStats()
    copy.set_state(stats.get_state())
    assert copy.summary() == summary and copy.num_episodes_lifetime == 4
    with pytest.raises(ValueError):
        stats.add([1], [], 1)


def test_result_dict_answers_flattened_keys_and_text_line():
    result = ResultDict(
        {
            "env_runners": {
                "episode_return_mean": 42.5,
                "episode_return_min": 9.0,
                "episode_return_max": 100.0,
                "num_env_steps_sampled_per_s": 12345.0,
            },
            "learners": {"default_policy": {"policy_loss": -0.01, "vf_loss": 3.0}},
            "num_env_steps_sampled_lifetime": 4000,
            "training_iteration": 2,
            "time_this_iter_s": 0.5,
        }
    )
    assert result["env_runners/episode_return_mean"] == 42.5
    assert "env_runners/episode_return_mean" in result and "env_runners/nothing" not in result
    assert result.get("learners/default_policy/vf_loss") == 3.0 and result.get("a/b", 7) == 7
    assert result.flatten()["learners/default_policy/policy_loss"] == -0.01
    line = summary_line("PPO CartPole-v1", result)
    assert line == (
        "ember.rllib: PPO CartPole-v1 iter 2 | 4,000 steps | return 42.5 [9, 100] | 12.3k steps/s | "
        "policy_loss -0.01 | vf_loss 3 | 0.50 s"
    )
    stream = io.StringIO()
    TextReporter("X", stream).report(result)
    assert stream.getvalue().count("\n") == 1
    assert explained_variance(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 1.0


def test_training_view_plots_return_and_band():
    pytest.importorskip("ipywidgets")
    from ember.rllib.progress import training_view

    view = training_view("PPO CartPole-v1")
    for i, (mean, low, high) in enumerate([(20.0, 9.0, 40.0), (35.0, 10.0, 90.0)], start=1):
        view.report_result(
            {
                "env_runners": {"episode_return_mean": mean, "episode_return_min": low, "episode_return_max": high},
                "num_env_steps_sampled_lifetime": 1000 * i,
                "training_iteration": i,
            }
        )
    source = view.sources[("return_mean", "PPO CartPole-v1")]
    assert source.data["x"] == [1000, 2000] and source.data["y"] == [20.0, 35.0]
    assert view.band.data["low"] == [9.0, 10.0] and view.band.data["high"] == [40.0, 90.0]
    assert "<td>35</td>" in view.table.value and "<td>2</td>" in view.table.value
    # A saved notebook shows the snapshot: the same table and the curve as an inline SVG.
    snapshot = view.snapshot_html()
    assert view.table.value in snapshot and "<svg class='ember-rl-curve'" in snapshot
    assert "2,000 env steps" in snapshot


def test_curve_svg_spans_the_band_and_skips_nan():
    from ember.rllib.progress import curve_svg

    assert curve_svg([(1000, math.nan, math.nan, math.nan)]) == ""
    svg = curve_svg([(0, math.nan, math.nan, math.nan), (1000, 20.0, 10.0, 30.0), (3000, 50.0, 20.0, 80.0)])
    line = svg.split("<polyline points='")[1].split("'")[0].split()
    assert len(line) == 2  # the NaN point is left out
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in line)
    assert x0 < x1 and y1 < y0  # later and higher: right and up (SVG's y grows downwards)
    assert ">80</text>" in svg and ">10</text>" in svg and "3,000 env steps" in svg


# ---- config validation (RLlib's builder, checked at build time) ----------------------------------------


def test_builder_chains_and_keeps_rllib_names():
    config = (
        PPOConfig()
        .environment("CartPole-v1", env_config={})
        .env_runners(num_env_runners=3)
        .training(lr=1e-3, clip_param=0.1, lambda_=0.9)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32], fcnet_activation="relu"))
        .debugging(seed=5)
        .framework("torch")
    )
    assert (config.num_env_runners, config.lr, config.clip_param, config.lambda_, config.seed) == (3, 1e-3, 0.1, 0.9, 5)
    assert config.model_config.fcnet_hiddens == [32]
    assert config.to_dict()["framework"] == "torch"
    copy = config.copy().training(lr=0.5)
    assert config.lr == 1e-3 and copy.lr == 0.5
    assert config.get_rollout_fragment_length() == math.ceil(4000 / 3)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda c: c.environment("CartPol-v1"), ValueError, "unknown environment 'CartPol-v1'.*CartPole-v1"),
        (lambda c: c.training(lr=0), ValueError, "lr must be > 0"),
        (lambda c: c.training(lr="fast"), TypeError, "lr must be a number"),
        (lambda c: c.training(gamma=1.5), ValueError, "gamma"),
        (lambda c: c.training(minibatch_size=128), ValueError, "minibatch_size .128. must be <="),
        (lambda c: c.training(num_epochs=0), ValueError, "num_epochs must be >= 1"),
        (lambda c: c.training(clip_param=-0.1), ValueError, "clip_param"),
        (lambda c: c.env_runners(num_env_runners=-1), ValueError, "num_env_runners must be >= 0"),
        (lambda c: c.env_runners(num_envs_per_env_runner=1.5), TypeError, "num_envs_per_env_runner must be an int"),
        (lambda c: c.env_runners(rollout_fragment_length=0), ValueError, "rollout_fragment_length"),
        (lambda c: c.framework("tf2"), ValueError, "supports 'torch' only"),
        (lambda c: c.learners(num_learners=-1), ValueError, "num_learners must be >= 0"),
        (lambda c: c.learners(num_learners=2, num_cpus_per_learner=-1), ValueError, "num_cpus_per_learner"),
        (lambda c: c.learners(num_learners=2, num_cpus_per_learner=0), ValueError, "both 0"),
        (lambda c: c.rl_module(model_config={"fcnet_activation": "sigmoid"}), ValueError, "fcnet_activation"),
        (lambda c: c.rl_module(model_config={"fcnet_hiddens": [0]}), ValueError, "positive ints"),
        (lambda c: c.evaluation(evaluation_duration_unit="hours"), ValueError, "evaluation_duration_unit"),
        (lambda c: c.environment(env=None), ValueError, "no environment"),
        (lambda c: c.environment("MountainCarContinuous-v0", env_config={"not_an_arg": 1}), TypeError, "not_an_arg"),
    ],
)
def test_bad_configs_fail_at_build_time(change, error, match):
    with pytest.raises(error, match=match):
        change(local_ppo()).build_algo()


def test_config_errors_at_the_call():
    with pytest.raises(ValueError, match="unknown keys \\['fcnet_hidden'\\]"):
        PPOConfig().rl_module(model_config={"fcnet_hidden": [8]})
    with pytest.raises(TypeError, match="env_config must be a dict"):
        PPOConfig().environment("CartPole-v1", env_config=[1])
    with pytest.raises(TypeError):
        PPOConfig().training(no_such_setting=1)
    with pytest.raises(ValueError, match="new API stack only"):
        PPOConfig().api_stack(enable_rl_module_and_learner=False)


class TextSpaceEnv(gym.Env):
    observation_space = gym.spaces.Text(5)
    action_space = gym.spaces.Discrete(2)


class MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def __init__(self, config):
        pass


def test_unsupported_spaces_fail_at_build_time():
    with pytest.raises(ValueError, match="observation space .* not supported"):
        local_ppo().environment(lambda config: TextSpaceEnv()).build_algo()
    with pytest.raises(ValueError, match="PPO supports Discrete and Box action spaces"):
        local_ppo().environment(MultiDiscreteEnv).build_algo()


def test_env_creator_gets_an_env_context():
    seen = []

    def creator(config):
        seen.append((type(config), dict(config), config.worker_index))
        return gym.make("CartPole-v1")

    spec = resolve_env(creator, {"size": 3})
    assert seen == [(EnvContext, {"size": 3}, 0)] and spec.action_space == gym.spaces.Discrete(2)


def test_local_ppo_trains_without_a_cluster():
    algo = local_ppo().build_algo()
    try:
        result = algo.train()
        assert result["training_iteration"] == 1
        assert result["env_runners"]["num_env_steps_sampled"] == 64
        assert result["learners"]["default_policy"]["num_module_steps_trained"] == 64
        out = algo.get_module().forward_inference({"obs": np.zeros((3, 4), np.float32)})
        assert out["action_dist_inputs"].shape == (3, 2)
    finally:
        algo.stop()
