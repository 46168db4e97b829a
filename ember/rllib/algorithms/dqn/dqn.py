"""DQN (RLlib's ``DQNConfig`` / ``DQN``): epsilon-greedy sampling into a replay buffer, double-Q
targets from a target network, a Huber TD loss, a dueling Q network by default."""

import time

import numpy as np
import torch

from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided, check_int, check_number
from ember.rllib.algorithms.ppo.ppo import clip_gradients
from ember.rllib.core.rl_module.rl_module import QTorchModule
from ember.rllib.utils import metrics as M
from ember.rllib.utils.replay_buffers import ReplayBuffer, piecewise_schedule


class DQNConfig(AlgorithmConfig):
    """DQN's settings; defaults follow RLlib's, except that the replay buffer is uniform (RLlib's
    default is prioritized) and a sample call takes 4 steps per env (RLlib: 1)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or DQN)
        self.lr = 5e-4
        self.train_batch_size_per_learner = 32
        self.replay_buffer_config = {"type": "EpisodeReplayBuffer", "capacity": 50000}
        self.num_steps_sampled_before_learning_starts = 1000
        self.target_network_update_freq = 500
        self.tau = 1.0
        self.double_q = True
        self.dueling = True
        self.n_step = 1
        self.epsilon = [(0, 1.0), (10000, 0.05)]
        self.training_intensity = None
        self.td_error_loss_fn = "huber"
        self.min_sample_timesteps_per_iteration = 1000
        self.grad_clip = 40.0

    def training(
        self,
        *,
        replay_buffer_config=NotProvided,
        num_steps_sampled_before_learning_starts=NotProvided,
        target_network_update_freq=NotProvided,
        tau=NotProvided,
        double_q=NotProvided,
        dueling=NotProvided,
        n_step=NotProvided,
        epsilon=NotProvided,
        training_intensity=NotProvided,
        td_error_loss_fn=NotProvided,
        **common,
    ):
        """DQN's settings, plus the common ones (``lr``, ``gamma``, ``train_batch_size_per_learner``...)."""
        super().training(**common)
        if replay_buffer_config is not NotProvided:
            replay_buffer_config = {**self.replay_buffer_config, **replay_buffer_config}
        return self._set(
            replay_buffer_config=replay_buffer_config,
            num_steps_sampled_before_learning_starts=num_steps_sampled_before_learning_starts,
            target_network_update_freq=target_network_update_freq,
            tau=tau,
            double_q=double_q,
            dueling=dueling,
            n_step=n_step,
            epsilon=epsilon,
            training_intensity=training_intensity,
            td_error_loss_fn=td_error_loss_fn,
        )

    def validate(self) -> None:
        capacity = self.replay_buffer_config.get("capacity")
        check_int("replay_buffer_config['capacity']", capacity, 1)
        if "Prioritized" in str(self.replay_buffer_config.get("type", "")):
            raise NotImplementedError("prioritized replay is not supported yet: use the default (uniform) buffer")
        check_int("num_steps_sampled_before_learning_starts", self.num_steps_sampled_before_learning_starts, 0)
        check_int("target_network_update_freq", self.target_network_update_freq, 1)
        check_number("tau", self.tau, 0.0, 1.0, open_low=True)
        if self.n_step != 1:
            raise NotImplementedError("n_step > 1 is not supported yet")
        if self.td_error_loss_fn not in ("huber", "mse"):
            raise ValueError(f"td_error_loss_fn={self.td_error_loss_fn!r}: use 'huber' or 'mse'")
        if self.training_intensity is not None:
            check_number("training_intensity", self.training_intensity, 0.0, open_low=True)
        if isinstance(self.epsilon, (list, tuple)):
            if not self.epsilon or not all(len(point) == 2 for point in self.epsilon):
                raise ValueError(f"epsilon must be a number or [(timestep, value), ...], got {self.epsilon!r}")
            values = [v for _, v in self.epsilon]
        else:
            values = [self.epsilon]
        for value in values:
            check_number("epsilon", value, 0.0, 1.0)
        super().validate()
        if self.is_multi_agent:
            raise NotImplementedError("DQN on a MultiAgentEnv is not supported yet; PPO trains multi-agent envs")
        if not self.model_config.fcnet_hiddens and not self.model_config.head_fcnet_hiddens and self.dueling:
            raise ValueError("a dueling Q network needs at least one hidden layer (model_config.fcnet_hiddens)")

    def validate_spaces(self, observation_space, action_space) -> None:
        import gymnasium as gym

        from ember.rllib.env.env_factory import obs_size

        obs_size(observation_space)
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"DQN needs a Discrete action space, got {action_space}")

    def get_rollout_fragment_length(self) -> int:
        if self.rollout_fragment_length != "auto":
            return self.rollout_fragment_length
        return 4


def dqn_loss(
    q_values: torch.Tensor,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    batch: dict,
    gamma: float,
    double_q: bool,
    loss_fn: str = "huber",
) -> tuple:
    """TD loss for a minibatch; returns (loss, TD errors).

    The target is r + gamma * (1 - terminated) * Q_target(s', a'), with a' chosen by the online
    network (double Q) or by the target network itself (plain DQN).
    """
    actions = batch["actions"].long()
    chosen = q_values.gather(1, actions[:, None]).squeeze(1)
    with torch.no_grad():
        best = (next_q_online if double_q else next_q_target).argmax(-1)
        next_value = next_q_target.gather(1, best[:, None]).squeeze(1)
        target = batch["rewards"] + gamma * (1.0 - batch["terminateds"].float()) * next_value
    td_error = chosen - target
    if loss_fn == "huber":
        loss = torch.nn.functional.huber_loss(chosen, target, delta=1.0)
    else:
        loss = (td_error**2).mean()
    return loss, td_error.detach()


def flat_transitions(batch: dict) -> dict:
    steps = batch["rewards"].size
    return {key: batch[key].reshape(steps, *batch[key].shape[2:]) for key in ReplayBuffer.KEYS}


class DQN(Algorithm):
    """Deep Q-Network; build it with ``DQNConfig().environment(...).build_algo()``."""

    def build_module(self, observation_space, action_space):
        config = self.config
        return QTorchModule(observation_space, action_space, config.model_config, config.dueling)

    def setup_learner(self) -> None:
        config = self.config
        self.target = QTorchModule(config.observation_space, config.action_space, config.model_config, config.dueling)
        self.target.load_state_dict(self.module.state_dict())
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=config.lr)
        self.buffer = ReplayBuffer(config.replay_buffer_config["capacity"])
        self.last_target_update = 0
        self.num_target_updates = 0

    def acting_policy(self, explore: bool):
        return self.module.numpy_policy(self.epsilon() if explore else 0.0)

    def epsilon(self) -> float:
        return piecewise_schedule(self.config.epsilon, self.metrics.num_env_steps_lifetime)

    def learner_extras(self) -> dict:
        return {"target": self.target}

    def learner_state(self) -> dict:
        optimizer, target = self.optimizer.state_dict(), self.target.state_dict()
        if self.learner_group is not None:
            # The optimizer and target network that change are the learner actors' (learner 0's).
            state = self.learner_group.get_state()
            optimizer, target = state["optimizers"][M.DEFAULT_MODULE_ID], state["extras"]["target"]
        return {
            "optimizer": optimizer,
            "target": target,
            "buffer": self.buffer.get_state(),
            "last_target_update": self.last_target_update,
            "num_target_updates": self.num_target_updates,
        }

    def set_learner_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.target.load_state_dict(state["target"])
        if self.learner_group is not None:
            self.learner_group.set_state(
                {"optimizers": {M.DEFAULT_MODULE_ID: state["optimizer"]}, "extras": {"target": state["target"]}}
            )
        self.buffer.set_state(state["buffer"])
        self.last_target_update = state["last_target_update"]
        self.num_target_updates = state["num_target_updates"]

    def training_step(self) -> dict:
        """Sample, store, update, until ``min_sample_timesteps_per_iteration`` steps were sampled."""
        config = self.config
        sample_time = update_time = 0.0
        sampled = 0
        totals: dict = {}
        updates = 0
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as PPO's: a small network's steps are fastest on one thread
        try:
            while sampled < max(1, config.min_sample_timesteps_per_iteration):
                started = time.perf_counter()
                batches, steps, _ = self.sample(self.acting_policy(True), 1)
                sample_time += time.perf_counter() - started
                sampled += steps
                for batch in batches:
                    self.buffer.add(flat_transitions(batch))
                started = time.perf_counter()
                if self.metrics.num_env_steps_lifetime >= config.num_steps_sampled_before_learning_starts:
                    for _ in range(self._updates_for(steps)):
                        for key, value in self.update().items():
                            totals[key] = totals.get(key, 0.0) + value
                        updates += 1
                if self.metrics.num_env_steps_lifetime - self.last_target_update >= config.target_network_update_freq:
                    self.sync_target()
                update_time += time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)
        stats = {key: value / updates for key, value in totals.items()} if updates else {}
        stats.update(
            {
                "curr_epsilon": self.epsilon(),
                "num_target_updates": self.num_target_updates,
                "replay_buffer_size": len(self.buffer),
            }
        )
        return {
            M.LEARNER_RESULTS: {
                M.DEFAULT_MODULE_ID: stats,
                M.ALL_MODULES: {
                    M.NUM_ENV_STEPS_TRAINED: updates * config.total_train_batch_size,
                    M.NUM_ENV_STEPS_TRAINED_LIFETIME: self.num_env_steps_trained_lifetime,
                },
            },
            M.TIMERS: {M.ENV_RUNNER_SAMPLING_TIMER: sample_time, M.LEARNER_UPDATE_TIMER: update_time},
        }

    def _updates_for(self, sampled_steps: int) -> int:
        """Gradient steps after sampling: one per sample round, or as many as keep the ratio of
        trained to sampled steps at ``training_intensity``."""
        intensity = self.config.training_intensity
        if intensity is None:
            return 1
        return max(1, round(sampled_steps * intensity / self.config.total_train_batch_size))

    def update(self) -> dict:
        """One gradient step on a batch drawn from the replay buffer (split over the learner actors
        when there are some: each steps on its shard, DDP averaging the gradients)."""
        config = self.config
        batch = self.buffer.sample(config.total_train_batch_size, self.rng)
        self.num_env_steps_trained_lifetime += config.total_train_batch_size
        if self.learner_group is not None:
            stats, weights = self.learner_group.update(learner_update, {M.DEFAULT_MODULE_ID: batch})
            self.set_weights_from_learner(weights)
            return stats[M.DEFAULT_MODULE_ID]
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        return dqn_update(self.module, self.module.forward_train, self.target, self.optimizer, tensors, config)

    def sync_target(self) -> None:
        """Copy (tau = 1) or blend (tau < 1) the online weights into the target network."""
        blend_target(self.target, self.module, self.config.tau)
        if self.learner_group is not None:
            self.learner_group.foreach_learner(learner_sync_target, self.config.tau)
        self.last_target_update = self.metrics.num_env_steps_lifetime
        self.num_target_updates += 1


def blend_target(target, online, tau: float) -> None:
    with torch.no_grad():
        for target_param, online_param in zip(target.parameters(), online.parameters()):
            target_param.mul_(1.0 - tau).add_(online_param, alpha=tau)


def dqn_update(module, forward, target, optimizer, batch: dict, config) -> dict:
    """One TD step on ``batch`` (tensors): ``forward`` is the module's training forward pass (DDP's
    on a learner actor). Returns the step's stats."""
    q_values = forward(batch)["q_values"]
    with torch.no_grad():
        next_online = module.q_values(batch["next_obs"])
        next_target = target.q_values(batch["next_obs"])
    loss, td_error = dqn_loss(
        q_values, next_online, next_target, batch, config.gamma, config.double_q, config.td_error_loss_fn
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        clip_gradients(module.parameters(), config.grad_clip, config.grad_clip_by)
    optimizer.step()
    return {
        "qf_loss": loss.item(),
        "qf_mean": q_values.mean().item(),
        "qf_max": q_values.max().item(),
        "td_error_mean": td_error.mean().item(),
    }


def learner_update(learner, module_id, batch: dict) -> dict:
    """DQN's step as a learner actor runs it on its shard of the replay sample."""
    module = learner.modules[module_id]
    tensors = learner.to_device(batch)
    return dqn_update(
        module,
        learner.forward(module_id),
        learner.extras["target"],
        learner.optimizers[module_id],
        tensors,
        learner.config,
    )


def learner_sync_target(learner, tau: float) -> None:
    blend_target(learner.extras["target"], learner.modules[M.DEFAULT_MODULE_ID], tau)
