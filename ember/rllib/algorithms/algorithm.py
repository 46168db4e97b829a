"""``Algorithm``: env runners + a learner, driven one ``train()`` iteration at a time (RLlib's API).

Each algorithm implements ``setup_learner`` and ``training_step``; this class owns what they share:
the env runner group (sampling, fault tolerance), episode metrics, the result dict, evaluation,
checkpoints and the live view of training.
"""

import os
import tempfile
import time
from collections import deque

import cloudpickle
import numpy as np
import torch

from ember.rllib.core.learner.learner_group import LearnerGroup
from ember.rllib.env.env_factory import EnvSpec, MultiAgentSpec, env_name, make_creator
from ember.rllib.env.env_runner_group import EnvRunnerGroup
from ember.rllib.utils import metrics as M
from ember.rllib.utils.postprocessing import EpisodeStats

STATE_FILE = "algorithm_state.pkl"
MODULES_DIR = os.path.join("learner_group", "learner", "rl_module")
MODULE_DIR = os.path.join(MODULES_DIR, M.DEFAULT_MODULE_ID)
LEARNER_FILE = os.path.join("learner_group", "learner", "learner_state.pt")
EVAL_SEED_OFFSET = 7919  # evaluation envs never replay the training envs' seeds


class Algorithm:
    """An RL algorithm built from an AlgorithmConfig by ``config.build_algo()``."""

    def __init__(self, config):
        self.config = config
        multi = MultiAgentSpec(config.policy_mapping_fn, config.module_spaces, {}) if config.is_multi_agent else None
        self.env_spec = EnvSpec(
            env_name(config.env), make_creator(config.env), config.observation_space, config.action_space, multi
        )
        if config.seed is not None:
            torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.iteration = 0
        self.time_total_s = 0.0
        self.num_env_steps_trained_lifetime = 0
        self.metrics = EpisodeStats(config.metrics_num_episodes_for_smoothing)
        # Multi-agent: one module per policy id; ``self.module`` is "default_policy" when there is one.
        if config.is_multi_agent:
            self.modules = {mid: self.build_module(obs, act) for mid, (obs, act) in config.module_spaces.items()}
            self.module = self.modules.get(M.DEFAULT_MODULE_ID)
        else:
            self.module = self.build_module(config.observation_space, config.action_space)
            self.modules = {M.DEFAULT_MODULE_ID: self.module}
        self.module_returns = {mid: deque(maxlen=config.metrics_num_episodes_for_smoothing) for mid in self.modules}
        self.setup_learner()
        self._progress = None
        self.eval_env_runner_group = self.env_runner_group = None
        # num_learners >= 1: learner actors hold the replicas that train; self.modules mirror learner 0.
        self.learner_group = LearnerGroup(config, self.modules, self.learner_extras()) if config.num_learners else None
        try:
            self.env_runner_group = EnvRunnerGroup(self.env_spec, config, config.num_env_runners)
        except BaseException:
            self.stop()
            raise

    # ---- what each algorithm provides ----------------------------------------------------------

    def build_module(self, observation_space, action_space):
        """The torch RLModule of one policy with these spaces."""
        raise NotImplementedError

    def setup_learner(self) -> None:
        raise NotImplementedError

    def training_step(self) -> dict:
        """One iteration's sampling and updates; returns {"learners": ..., "timers": ..., ...}."""
        raise NotImplementedError

    def acting_policy(self, explore: bool):
        """The numpy policy env runners act with (evaluation uses it with explore=False); for a
        multi-agent env a dict of them by module id."""
        if self.config.is_multi_agent:
            return {mid: module.numpy_policy() for mid, module in self.modules.items()}
        return self.module.numpy_policy()

    def learner_extras(self) -> dict:
        """Torch modules besides the RLModules that each learner actor needs a copy of (DQN's target)."""
        return {}

    def set_weights_from_learner(self, weights: dict) -> None:
        """Load the weights learner 0 returned into the algorithm's modules (what env runners act with)."""
        for mid, state in weights.items():
            self.modules[mid].load_state_dict(state)

    def learner_state(self) -> dict:
        return {}

    def set_learner_state(self, state: dict) -> None:
        pass

    # ---- sampling helpers ------------------------------------------------------------------------

    def sample(self, policy, min_steps: int) -> tuple:
        """Sample rounds from every runner until ``min_steps`` env steps; returns (batches, steps, episodes)."""
        per_call = self.config.get_rollout_fragment_length()
        batches, steps, episodes = [], 0, 0
        while steps < min_steps:
            for batch in self.env_runner_group.sample(policy, per_call, self.config.explore):
                batches.append(batch)
                batch_steps = int(batch["num_env_steps"] if "num_env_steps" in batch else batch["rewards"].size)
                for mid, returns in batch.get("module_episode_returns", {}).items():
                    self.module_returns[mid].extend(returns)
                steps += batch_steps
                episodes += self.metrics.add(batch["episode_returns"], batch["episode_lengths"], batch_steps)
        return batches, steps, episodes

    # ---- the public API ------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run one training iteration; returns RLlib's result dict (nested, also answering
        flattened keys such as ``"env_runners/episode_return_mean"``)."""
        if self.env_runner_group is None:
            raise RuntimeError("this Algorithm was stopped")
        started = time.perf_counter()
        steps_before = self.metrics.num_env_steps_lifetime
        episodes_before = self.metrics.num_episodes_lifetime
        step = self.training_step()
        self.iteration += 1
        elapsed = time.perf_counter() - started
        self.time_total_s += elapsed
        sampled = self.metrics.num_env_steps_lifetime - steps_before
        env_runners = {
            **self.metrics.summary(),
            M.NUM_EPISODES: self.metrics.num_episodes_lifetime - episodes_before,
            M.NUM_ENV_STEPS_SAMPLED: sampled,
            M.NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.num_env_steps_lifetime,
            M.NUM_EPISODES_LIFETIME: self.metrics.num_episodes_lifetime,
        }
        if self.config.is_multi_agent:
            env_runners["module_episode_returns_mean"] = {
                mid: float(np.mean(r)) if r else float("nan") for mid, r in self.module_returns.items()
            }
        timers = step.pop(M.TIMERS, {})
        sample_time = timers.get(M.ENV_RUNNER_SAMPLING_TIMER)
        if sample_time:
            env_runners["num_env_steps_sampled_per_s"] = sampled / sample_time
        result = M.ResultDict(
            {
                M.ENV_RUNNER_RESULTS: env_runners,
                M.LEARNER_RESULTS: step.pop(M.LEARNER_RESULTS, {}),
                M.NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.num_env_steps_lifetime,
                M.NUM_EPISODES_LIFETIME: self.metrics.num_episodes_lifetime,
                M.NUM_ENV_STEPS_TRAINED_LIFETIME: self.num_env_steps_trained_lifetime,
                "training_iteration": self.iteration,
                "time_this_iter_s": elapsed,
                "time_total_s": self.time_total_s,
                M.TIMERS: timers,
                M.FAULT_TOLERANCE_STATS: {
                    "num_healthy_workers": self.env_runner_group.num_healthy_env_runners(),
                    "num_remote_worker_restarts": self.env_runner_group.num_restarts,
                },
                "timestamp": int(time.time()),
                "done": False,
                **step,
            }
        )
        interval = self.config.evaluation_interval
        if interval and self.iteration % interval == 0:
            result[M.EVALUATION_RESULTS] = self.evaluate()
        self._show(result)
        return result

    def evaluate(self) -> dict:
        """Run ``evaluation_duration`` episodes with the current weights (greedy unless
        ``evaluation_config={"explore": True}``); returns {"env_runners": {episode stats...}}."""
        config = self.config
        if self.eval_env_runner_group is None:
            eval_config = config.copy()
            for name, value in config.evaluation_config.items():
                if name not in ("explore", "env_config"):
                    raise ValueError(f"evaluation_config: only 'explore' and 'env_config' are supported, got {name!r}")
                setattr(eval_config, name, value)
            self.eval_env_runner_group = EnvRunnerGroup(
                self.env_spec, eval_config, config.evaluation_num_env_runners, seed_offset=EVAL_SEED_OFFSET
            )
        explore = bool(config.evaluation_config.get("explore", False))
        parts = self.eval_env_runner_group.evaluate(
            self.acting_policy(explore), config.evaluation_duration, config.evaluation_duration_unit, explore
        )
        stats = EpisodeStats(window=max(1, sum(len(p["episode_returns"]) for p in parts)))
        for part in parts:
            stats.add(part["episode_returns"], part["episode_lengths"], part["num_env_steps"])
        return {
            M.ENV_RUNNER_RESULTS: {
                **stats.summary(),
                M.NUM_EPISODES: stats.num_episodes_lifetime,
                M.NUM_ENV_STEPS_SAMPLED: stats.num_env_steps_lifetime,
            }
        }

    def get_module(self, module_id: str = M.DEFAULT_MODULE_ID):
        """The learner's RLModule (torch) of ``module_id``: ``forward_inference({"obs": ...})`` acts with it."""
        if module_id not in self.modules:
            raise KeyError(f"no module {module_id!r}: this algorithm has {sorted(map(str, self.modules))}")
        return self.modules[module_id]

    def stop(self) -> None:
        """Kill the env runner and learner actors and close the envs; the Algorithm cannot train afterwards."""
        for group in (self.env_runner_group, self.eval_env_runner_group, self.learner_group):
            if group is not None:
                group.stop()
        self.env_runner_group = self.eval_env_runner_group = self.learner_group = None
        if self._progress is not None:
            self._progress.close()

    # ---- checkpoints ---------------------------------------------------------------------------------

    def get_state(self) -> dict:
        return {
            "iteration": self.iteration,
            "time_total_s": self.time_total_s,
            "num_env_steps_trained_lifetime": self.num_env_steps_trained_lifetime,
            "metrics": self.metrics.get_state(),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.time_total_s = state["time_total_s"]
        self.num_env_steps_trained_lifetime = state["num_env_steps_trained_lifetime"]
        self.metrics.set_state(state["metrics"])
        self.rng.bit_generator.state = state["rng"]

    def save_to_path(self, path=None) -> str:
        """Write a checkpoint directory (config, counters, module weights, optimizer) and return its path."""
        path = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="ember-rllib-checkpoint-")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, STATE_FILE), "wb") as out:
            cloudpickle.dump({"class": type(self), "config": self.config, "state": self.get_state()}, out)
        for mid, module in self.modules.items():
            module.save_to_path(os.path.join(path, MODULES_DIR, str(mid)))
        torch.save(self.learner_state(), os.path.join(path, LEARNER_FILE))
        return path

    def restore_from_path(self, path) -> None:
        """Load a checkpoint written by ``save_to_path`` into this algorithm (same algorithm and
        spaces); ``path`` may also be a Tune/Train ``Checkpoint`` (a trial's ``result.checkpoint``)."""
        if hasattr(path, "as_directory"):
            with path.as_directory() as directory:
                return self.restore_from_path(directory)
        path = os.fspath(path)
        saved = _load_state(path)
        if saved["class"] is not type(self):
            raise ValueError(f"{path} holds a {saved['class'].__name__} checkpoint, not a {type(self).__name__} one")
        self.set_state(saved["state"])
        from ember.rllib.core.rl_module.rl_module import STATE_FILE as MODULE_STATE

        for mid, module in self.modules.items():
            module.set_state(torch.load(os.path.join(path, MODULES_DIR, str(mid), MODULE_STATE), weights_only=True))
        self.set_learner_state(torch.load(os.path.join(path, LEARNER_FILE), weights_only=False))
        if self.learner_group is not None:
            self.learner_group.set_state({"modules": {mid: m.get_state() for mid, m in self.modules.items()}})

    @classmethod
    def from_checkpoint(cls, path) -> "Algorithm":
        """Build the checkpoint's algorithm from its saved config and restore its state; ``path``
        is a directory or a Tune/Train ``Checkpoint`` (a trial's ``result.checkpoint``)."""
        if hasattr(path, "as_directory"):
            with path.as_directory() as directory:
                return cls.from_checkpoint(directory)
        saved = _load_state(os.fspath(path))
        algo = saved["config"].build_algo()
        try:
            algo.restore_from_path(path)
        except BaseException:
            algo.stop()
            raise
        return algo

    # ---- the live view --------------------------------------------------------------------------------

    def _show(self, result: dict) -> None:
        if not self.config.progress:
            return
        if self._progress is None:
            from ember.rllib.progress import reporter

            self._progress = reporter(f"{type(self).__name__} {self.env_spec.name}")
        self._progress.report(result)

    def __repr__(self):
        return f"{type(self).__name__}(env={self.env_spec.name!r}, iteration={self.iteration})"


def _load_state(path: str) -> dict:
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.exists(state_file):
        raise FileNotFoundError(f"{path} is not an algorithm checkpoint: it has no {STATE_FILE}")
    with open(state_file, "rb") as source:
        return cloudpickle.load(source)
