"""ember.rllib's PPO on the shared cluster: learning, checkpoints, evaluation, env runner faults."""

import os
import signal

import gymnasium as gym
import numpy as np
import psutil
import pytest
import torch
from conftest import wait_for

import ember
from ember.exceptions import TaskError
from ember.rllib import register_env
from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.ppo import PPOConfig


def cartpole_ppo(num_env_runners: int = 2, batch: int = 1000, **training):
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=4)
        .training(
            **{
                "lr": 3e-4,
                "train_batch_size_per_learner": batch,
                "minibatch_size": 250,
                "num_epochs": 10,
                "lambda_": 0.95,
                "vf_clip_param": 1e4,
                "vf_loss_coeff": 0.5,
                "use_kl_loss": False,
                "grad_clip": 0.5,
                **training,
            }
        )
        .rl_module(model_config={"fcnet_hiddens": [64, 64], "vf_share_layers": False})
        .debugging(seed=1)
    )


class KillOnceCartPole(gym.Env):
    """CartPole whose env runner SIGKILLs its own process once, at its 30th step in this run (the
    file ``kill_file`` records that it happened, so the replacement runner does not do it again)."""

    def __init__(self, config):
        self.env = gym.make("CartPole-v1")
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space
        self.kill_file = config["kill_file"]
        self.armed = config.worker_index == 1 and config.vector_index == 0
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed)

    def step(self, action):
        self.steps += 1
        if self.armed and self.steps == 30 and not os.path.exists(self.kill_file):
            open(self.kill_file, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.env.step(action)


class FaultyEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config):
        self.fail_at = config.get("fail_at", 5)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps >= self.fail_at:
            raise ZeroDivisionError("the faulty env divided by zero")
        return np.zeros(3, np.float32), 1.0, False, False, {}


def runner_pids(algo) -> list:
    return algo.env_runner_group.foreach_env_runner(lambda runner: os.getpid())


def test_ppo_learns_cartpole(cluster, capfd):
    algo = cartpole_ppo(batch=2000).build_algo()
    try:
        returns = []
        for _ in range(25):
            result = algo.train()
            returns.append(result["env_runners"]["episode_return_mean"])
            if returns[-1] >= 150:
                break
        assert returns[-1] >= 150, returns
        assert returns[-1] > returns[0] + 100
        assert result["num_env_steps_sampled_lifetime"] == 2000 * len(returns)
        assert result["env_runners/num_env_steps_sampled"] == 2000
        learner = result["learners"]["default_policy"]
        assert {"policy_loss", "vf_loss", "entropy", "mean_kl_loss", "vf_explained_var", "total_loss"} <= set(learner)
        assert result["fault_tolerance"] == {"num_healthy_workers": 2, "num_remote_worker_restarts": 0}
        assert result["training_iteration"] == len(returns) and result["time_total_s"] > 0
        # Greedy evaluation of the learnt policy does at least as well as the noisy training episodes.
        evaluation = algo.evaluate()["env_runners"]
        assert evaluation["num_episodes"] == 10 and evaluation["episode_return_mean"] >= 150
        # Outside a notebook: exactly one compact line per iteration.
        lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ember.rllib: PPO")]
        assert len(lines) == len(returns) and "return" in lines[-1]
    finally:
        algo.stop()


def test_same_seed_same_results(cluster):
    results = []
    for _ in range(2):
        algo = cartpole_ppo(batch=400, num_epochs=2).reporting(progress=False).build_algo()
        try:
            results.append([algo.train()["learners"]["default_policy"]["total_loss"] for _ in range(2)])
        finally:
            algo.stop()
    assert results[0] == results[1]


def test_checkpoint_round_trip_acts_identically(cluster, tmp_path):
    config = cartpole_ppo(num_env_runners=1, batch=500, num_epochs=2).reporting(progress=False)
    algo = config.build_algo()
    try:
        for _ in range(2):
            algo.train()
        path = algo.save_to_path(tmp_path / "ckpt")
        restored = Algorithm.from_checkpoint(path)
    finally:
        pass
    try:
        assert type(restored).__name__ == "PPO" and restored.iteration == 2
        obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        before = algo.get_module().forward_inference({"obs": torch.from_numpy(obs)})["action_dist_inputs"]
        after = restored.get_module().forward_inference({"obs": obs})["action_dist_inputs"]
        assert torch.equal(before, after)
        # Same greedy actions, so the same evaluation episodes (evaluation envs are seeded alike).
        assert algo.evaluate() == restored.evaluate()
        assert restored.metrics.num_env_steps_lifetime == algo.metrics.num_env_steps_lifetime == 1000
        # Training goes on from the saved optimizer state and counters.
        assert restored.train()["training_iteration"] == 3
        # The module alone, from its RLlib path inside the checkpoint.
        from ember.rllib.core.rl_module.rl_module import RLModule

        module = RLModule.from_checkpoint(os.path.join(path, "learner_group", "learner", "rl_module", "default_policy"))
        assert torch.equal(module.forward_inference({"obs": obs})["action_dist_inputs"], before)
        # Restoring into an existing algorithm puts its weights back.
        algo.train()
        algo.restore_from_path(path)
        assert algo.iteration == 2
        assert torch.equal(algo.get_module().forward_inference({"obs": obs})["action_dist_inputs"], before)
    finally:
        algo.stop()
        restored.stop()
    with pytest.raises(FileNotFoundError, match="not an algorithm checkpoint"):
        Algorithm.from_checkpoint(tmp_path)


def test_env_runner_killed_mid_iteration_is_replaced(cluster, tmp_path):
    kill_file = str(tmp_path / "killed")
    register_env("kill-once-cartpole", lambda config: KillOnceCartPole(config))
    config = (
        cartpole_ppo(batch=400, num_epochs=1)
        .environment("kill-once-cartpole", env_config={"kill_file": kill_file})
        .reporting(progress=False)
    )
    algo = config.build_algo()
    try:
        old = runner_pids(algo)
        result = algo.train()  # runner 1 kills itself 30 steps into this iteration's sampling
        assert os.path.exists(kill_file)
        assert result["env_runners"]["num_env_steps_sampled"] == 400
        assert result["fault_tolerance"] == {"num_healthy_workers": 2, "num_remote_worker_restarts": 1}
        new = runner_pids(algo)
        assert new[0] != old[0] and new[1] == old[1] and not psutil.pid_exists(old[0])
        # Killed from outside between iterations: the next iteration replaces it as well.
        os.kill(new[1], signal.SIGKILL)
        result = algo.train()
        assert result["fault_tolerance"]["num_remote_worker_restarts"] == 2
        assert result["num_env_steps_sampled_lifetime"] == 800
    finally:
        algo.stop()


def test_env_error_reaches_the_caller_with_its_type_and_env_name(cluster):
    algo = (
        cartpole_ppo(num_env_runners=1, batch=100, num_epochs=1, minibatch_size=50)
        .environment(FaultyEnv, env_config={"fail_at": 7})
        .reporting(progress=False)
        .build_algo()
    )
    try:
        with pytest.raises(ZeroDivisionError) as info:
            algo.train()
        assert isinstance(info.value, TaskError)
        text = str(info.value)
        assert "the faulty env divided by zero" in text
        assert "raised by env 'FaultyEnv' (env runner 1, sub-env 0) while stepping" in text
        assert "in step" in text  # the user's frame
        # An env error is not a runner death: nothing was restarted.
        assert algo.env_runner_group.num_restarts == 0
    finally:
        algo.stop()


class NoSimulatorOnWorkers(FaultyEnv):
    """Can be made in the driver (for its spaces) but not on a runner, as an env whose simulator is
    installed on the driver's machine only."""

    def __init__(self, config):
        if config.worker_index > 0:
            raise ImportError("no simulator on this machine")
        super().__init__(config)


def test_a_runner_that_cannot_start_is_not_restarted_for_ever(cluster):
    algo = (
        cartpole_ppo(num_env_runners=1, batch=100, num_epochs=1, minibatch_size=50)
        .environment(NoSimulatorOnWorkers)
        .reporting(progress=False)
        .build_algo()
    )
    try:
        with pytest.raises(RuntimeError, match="env runner 1 died again right after being replaced") as info:
            algo.train()
        assert "no simulator on this machine" in str(info.value)
        assert algo.env_runner_group.num_restarts == 1
    finally:
        algo.stop()


def test_stop_kills_the_env_runners(cluster):
    algo = (
        cartpole_ppo(batch=200, num_epochs=1, minibatch_size=100)
        .reporting(progress=False)
        .evaluation(evaluation_num_env_runners=1, evaluation_duration=2)
        .build_algo()
    )
    pids = runner_pids(algo)
    assert algo.evaluate()["env_runners"]["num_episodes"] == 2
    pids += algo.eval_env_runner_group.foreach_env_runner(lambda runner: os.getpid())
    assert len(set(pids)) == 3
    algo.stop()
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in pids), message="the env runners to exit")
    with pytest.raises(RuntimeError, match="stopped"):
        algo.train()
    assert ember.is_initialized()


def test_train_calls_in_a_kernel_feed_one_widget():
    pytest.importorskip("ipykernel")
    from conftest import ember_processes, shared_cluster_pids
    from kernel_session import KernelSession

    kernel = KernelSession()
    try:
        kernel.execute(
            "import ember\nfrom ember.rllib.algorithms.ppo import PPOConfig\nember.init(num_cpus=2)\n"
            "algo = (PPOConfig().environment('CartPole-v1').env_runners(num_env_runners=1)"
            ".training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1).build_algo())"
        )
        first = kernel.execute("result = algo.train()")
        second = kernel.execute("for _ in range(2): result = algo.train()\nresult['training_iteration']")
        view = kernel.execute(
            "v = algo._progress.view\n"
            "(v.sources[('return_mean', v.name)].data['x'], v.history.rows[v.name][-1]['iter'])"
        )
        kernel.execute("algo.stop(); ember.shutdown()")
    finally:
        kernel.shutdown()
    wait_for(
        lambda: not [p for p in ember_processes() if p.pid not in shared_cluster_pids()],
        timeout=15,
        message="the kernel's cluster to go",
    )

    def widgets(cell) -> list:
        # Widget views only: bokeh's JavaScript loader is displayed once beside the first plot.
        return [
            m
            for m in cell.messages()
            if m["msg_type"] == "display_data" and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
        ]

    assert len(widgets(first)) == 1
    # Later iterations, in another cell, grow the same widget: nothing new is displayed, no text lines.
    assert not [m for m in second.messages() if m["msg_type"] == "display_data"]
    assert second.result()["text/plain"] == "3"
    assert "ember.rllib:" not in first.stderr() + second.stderr()
    assert view.result()["text/plain"] == "([200, 400, 600], 3)"
