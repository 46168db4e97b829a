"""PPO (RLlib's ``PPOConfig`` / ``PPO``): GAE, the clipped surrogate, a clipped value loss, an
entropy bonus and RLlib's adaptive KL penalty, over minibatch epochs on a local torch learner."""

import time

import numpy as np
import torch

from ember.rllib.algorithms.algorithm import Algorithm
from ember.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided, check_int, check_number
from ember.rllib.core.learner.learner import writable
from ember.rllib.core.rl_module.rl_module import PPOTorchModule
from ember.rllib.utils import metrics as M
from ember.rllib.utils.postprocessing import compute_gae, explained_variance


class PPOConfig(AlgorithmConfig):
    """PPO's settings; defaults are RLlib's (``num_env_runners=2``, ``lr=5e-5``, ...)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or PPO)
        self.num_env_runners = 2
        self.lr = 5e-5
        self.train_batch_size_per_learner = 4000
        self.minibatch_size = 128
        self.num_epochs = 30
        self.shuffle_batch_per_epoch = True
        self.lambda_ = 1.0
        self.use_gae = True
        self.use_critic = True
        self.use_kl_loss = True
        self.kl_coeff = 0.2
        self.kl_target = 0.01
        self.clip_param = 0.3
        self.vf_clip_param = 10.0
        self.vf_loss_coeff = 1.0
        self.entropy_coeff = 0.0

    def training(
        self,
        *,
        lambda_=NotProvided,
        use_gae=NotProvided,
        use_critic=NotProvided,
        use_kl_loss=NotProvided,
        kl_coeff=NotProvided,
        kl_target=NotProvided,
        clip_param=NotProvided,
        vf_clip_param=NotProvided,
        vf_loss_coeff=NotProvided,
        entropy_coeff=NotProvided,
        minibatch_size=NotProvided,
        num_epochs=NotProvided,
        shuffle_batch_per_epoch=NotProvided,
        **common,
    ):
        """PPO's settings, plus the common ones (``lr``, ``gamma``, ``train_batch_size_per_learner``...)."""
        super().training(**common)
        return self._set(
            lambda_=lambda_,
            use_gae=use_gae,
            use_critic=use_critic,
            use_kl_loss=use_kl_loss,
            kl_coeff=kl_coeff,
            kl_target=kl_target,
            clip_param=clip_param,
            vf_clip_param=vf_clip_param,
            vf_loss_coeff=vf_loss_coeff,
            entropy_coeff=entropy_coeff,
            minibatch_size=minibatch_size,
            num_epochs=num_epochs,
            shuffle_batch_per_epoch=shuffle_batch_per_epoch,
        )

    def validate(self) -> None:
        check_number("lambda_", self.lambda_, 0.0, 1.0)
        check_number("kl_coeff", self.kl_coeff, 0.0)
        check_number("kl_target", self.kl_target, 0.0, open_low=True)
        check_number("clip_param", self.clip_param, 0.0, open_low=True)
        check_number("vf_clip_param", self.vf_clip_param, 0.0, open_low=True)
        check_number("vf_loss_coeff", self.vf_loss_coeff, 0.0)
        check_number("entropy_coeff", self.entropy_coeff, 0.0)
        check_int("num_epochs", self.num_epochs, 1)
        check_int("minibatch_size", self.minibatch_size, 1)
        if not (self.use_gae and self.use_critic):
            raise NotImplementedError("PPO without GAE or without a critic is not supported yet")
        super().validate()
        if self.minibatch_size > self.train_batch_size_per_learner:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must be <= train_batch_size_per_learner "
                f"({self.train_batch_size_per_learner})"
            )

    def validate_spaces(self, observation_space, action_space) -> None:
        import gymnasium as gym

        from ember.rllib.env.env_factory import obs_size

        obs_size(observation_space)
        if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise ValueError(f"PPO supports Discrete and Box action spaces, not {action_space}")
        if isinstance(action_space, gym.spaces.Box) and not (
            np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))
        ):
            raise ValueError(f"PPO needs a bounded Box action space, got {action_space}")


# ---- the loss (pure: tensors in, tensors out) ----------------------------------------------------


def action_logp_entropy(dist_inputs: torch.Tensor, actions: torch.Tensor, discrete: bool) -> tuple:
    """Log-probability of ``actions`` and the entropy under the distribution the module's outputs define."""
    if discrete:
        dist = torch.distributions.Categorical(logits=dist_inputs)
        return dist.log_prob(actions.long()), dist.entropy()
    mean, log_std = dist_inputs.chunk(2, dim=-1)
    dist = torch.distributions.Normal(mean, log_std.clamp(-20.0, 2.0).exp())
    return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)


def kl_divergence(old_inputs: torch.Tensor, new_inputs: torch.Tensor, discrete: bool) -> torch.Tensor:
    """KL(old || new) per row."""
    if discrete:
        old = torch.distributions.Categorical(logits=old_inputs)
        new = torch.distributions.Categorical(logits=new_inputs)
        return torch.distributions.kl_divergence(old, new)
    (old_mean, old_log_std), (new_mean, new_log_std) = old_inputs.chunk(2, -1), new_inputs.chunk(2, -1)
    old = torch.distributions.Normal(old_mean, old_log_std.clamp(-20.0, 2.0).exp())
    new = torch.distributions.Normal(new_mean, new_log_std.clamp(-20.0, 2.0).exp())
    return torch.distributions.kl_divergence(old, new).sum(-1)


def ppo_loss(
    outputs: dict,
    batch: dict,
    discrete: bool,
    *,
    clip_param: float,
    vf_clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
    kl_coeff: float,
    use_kl_loss: bool,
) -> tuple:
    """PPO's total loss for one minibatch and its parts (as floats).

    ``outputs``: the module's ``action_dist_inputs`` and ``vf_preds``; ``batch``: ``actions``,
    ``action_logp`` and ``action_dist_inputs`` at sampling time, ``advantages``, ``value_targets``.
    The surrogate is min(r A, clip(r, 1 - eps, 1 + eps) A) with r the probability ratio; the value
    loss is the squared error clipped at ``vf_clip_param`` (as RLlib does, against huge returns).
    """
    logp, entropy = action_logp_entropy(outputs["action_dist_inputs"], batch["actions"], discrete)
    ratio = torch.exp(logp - batch["action_logp"])
    advantages = batch["advantages"]
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_param, 1 + clip_param) * advantages)
    vf_error = (outputs["vf_preds"] - batch["value_targets"]) ** 2
    vf_loss = vf_error.clamp(0, vf_clip_param)
    mean_entropy = entropy.mean()
    total = -surrogate.mean() + vf_loss_coeff * vf_loss.mean() - entropy_coeff * mean_entropy
    mean_kl = kl_divergence(batch["action_dist_inputs"], outputs["action_dist_inputs"], discrete).mean()
    if use_kl_loss:
        total = total + kl_coeff * mean_kl
    stats = {
        "policy_loss": -surrogate.mean().item(),
        "vf_loss": vf_loss.mean().item(),
        "vf_loss_unclipped": vf_error.mean().item(),
        "entropy": mean_entropy.item(),
        "mean_kl_loss": mean_kl.item(),
    }
    return total, stats


def update_kl_coeff(kl_coeff: float, sampled_kl: float, kl_target: float) -> float:
    """RLlib's adaptive KL coefficient: x1.5 when the KL overshoots twice the target, x0.5 under half."""
    if sampled_kl > 2.0 * kl_target:
        return kl_coeff * 1.5
    if sampled_kl < 0.5 * kl_target:
        return kl_coeff * 0.5
    return kl_coeff


def postprocess(batches: list, gamma: float, lambda_: float) -> dict:
    """Per-runner [T, N] batches to one flat train batch with GAE advantages (standardised) and value targets."""
    parts: dict = {}
    for batch in batches:
        advantages, targets = compute_gae(
            batch["rewards"],
            batch["vf_preds"],
            batch["next_vf"],
            batch["terminateds"],
            batch["truncateds"],
            gamma,
            lambda_,
        )
        flat = {"advantages": advantages, "value_targets": targets}
        for key in ("obs", "actions", "action_logp", "action_dist_inputs", "vf_preds"):
            flat[key] = batch[key]
        for key, value in flat.items():
            steps = value.shape[0] * value.shape[1]
            parts.setdefault(key, []).append(value.reshape(steps, *value.shape[2:]))
    train = {key: np.concatenate(values) for key, values in parts.items()}
    adv = train["advantages"]
    train["advantages"] = ((adv - adv.mean()) / max(float(adv.std()), 1e-4)).astype(np.float32)
    return train


def postprocess_sequences(parts: list, config) -> dict:
    """A module's multi-agent batches (sequences back to back, see MultiAgentEnvRunner.sample) to one
    flat train batch: GAE within each agent's sequence, advantages standardised over the module."""
    batch = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key not in ("seq_lens", "next_obs")}
    seq_lens = np.concatenate([p["seq_lens"] for p in parts])
    advantages, targets = [], []
    start = 0
    for length in seq_lens:
        piece = slice(start, start + length)
        adv, target = compute_gae(
            *(batch[key][piece, None] for key in ("rewards", "vf_preds", "next_vf", "terminateds", "truncateds")),
            config.gamma,
            config.lambda_,
        )
        advantages.append(adv[:, 0])
        targets.append(target[:, 0])
        start += length
    train = {key: batch[key] for key in ("obs", "actions", "action_logp", "action_dist_inputs", "vf_preds")}
    train["obs"] = train["obs"].astype(np.float32)
    adv = np.concatenate(advantages)
    train["advantages"] = ((adv - adv.mean()) / max(float(adv.std()), 1e-4)).astype(np.float32)
    train["value_targets"] = np.concatenate(targets)
    return train


# ---- the algorithm ------------------------------------------------------------------------------------


class PPO(Algorithm):
    """Proximal Policy Optimization; build it with ``PPOConfig().environment(...).build_algo()``."""

    def build_module(self, observation_space, action_space):
        return PPOTorchModule(observation_space, action_space, self.config.model_config)

    def setup_learner(self) -> None:
        self.optimizers = {mid: torch.optim.Adam(m.parameters(), lr=self.config.lr) for mid, m in self.modules.items()}
        self.kl_coeffs = {mid: self.config.kl_coeff for mid in self.modules}

    @property
    def optimizer(self):
        """The optimizer of "default_policy" (single-agent algorithms have only it)."""
        return self.optimizers[M.DEFAULT_MODULE_ID]

    @property
    def kl_coeff(self) -> float:
        return self.kl_coeffs[M.DEFAULT_MODULE_ID]

    def learner_state(self) -> dict:
        # With learner actors the optimizers that step are theirs (learner 0's, as every one's).
        if self.learner_group is not None:
            optimizers = self.learner_group.get_state()["optimizers"]
        else:
            optimizers = {mid: opt.state_dict() for mid, opt in self.optimizers.items()}
        return {"optimizers": optimizers, "kl_coeffs": dict(self.kl_coeffs)}

    def set_learner_state(self, state: dict) -> None:
        for mid, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][mid])
        if self.learner_group is not None:
            self.learner_group.set_state({"optimizers": state["optimizers"]})
        self.kl_coeffs = dict(state["kl_coeffs"])

    def training_step(self) -> dict:
        config = self.config
        started = time.perf_counter()
        policy = self.acting_policy(True)
        synched = time.perf_counter()
        batches, _, _ = self.sample(policy, config.total_train_batch_size)
        sampled = time.perf_counter()
        if config.is_multi_agent:
            trains = {
                mid: postprocess_sequences([b["modules"][mid] for b in batches if mid in b["modules"]], config)
                for mid in self.modules
                if config.module_is_trained(mid) and any(mid in b["modules"] for b in batches)
            }
        else:
            trains = {M.DEFAULT_MODULE_ID: postprocess(batches, config.gamma, config.lambda_)}
        if self.learner_group is not None:
            stats = self.update_on_learners(trains)
        else:
            threads = torch.get_num_threads()
            # A small MLP's minibatch steps are slower on several threads (and much slower on a busy
            # machine, where each step waits for every thread); one is the fast choice here.
            torch.set_num_threads(1)
            try:
                stats = {mid: self.update(train, mid) for mid, train in trains.items()}
            finally:
                torch.set_num_threads(threads)
        trained = sum(int(module_stats["num_module_steps_trained"]) for module_stats in stats.values())
        self.num_env_steps_trained_lifetime += trained
        return {
            M.LEARNER_RESULTS: {
                **stats,
                M.ALL_MODULES: {
                    M.NUM_ENV_STEPS_TRAINED: trained,
                    M.NUM_ENV_STEPS_TRAINED_LIFETIME: self.num_env_steps_trained_lifetime,
                },
            },
            M.TIMERS: {
                M.SYNCH_WORKER_WEIGHTS_TIMER: synched - started,
                M.ENV_RUNNER_SAMPLING_TIMER: sampled - synched,
                M.LEARNER_UPDATE_TIMER: time.perf_counter() - sampled,
            },
        }

    def update(self, train: dict, module_id: str = M.DEFAULT_MODULE_ID) -> dict:
        """``num_epochs`` passes of minibatch gradient steps over one module's train batch; then its
        KL coefficient adapts."""
        module = self.modules[module_id]
        kl_coeff = self.kl_coeffs[module_id]
        result = ppo_update(
            module, module.forward_train, self.optimizers[module_id], train, self.config, kl_coeff, self.rng
        )
        self.adapt_kl_coeff(module_id, result)
        return result

    def adapt_kl_coeff(self, module_id, result: dict) -> None:
        if self.config.use_kl_loss:
            kl = result.get("mean_kl_loss", 0.0)
            self.kl_coeffs[module_id] = update_kl_coeff(self.kl_coeffs[module_id], kl, self.config.kl_target)

    def update_on_learners(self, trains: dict) -> dict:
        """One update on the learner actors (each on its shard of every module's batch); the KL
        coefficients adapt to the KL averaged over learners, so all learners keep using the same."""
        # A module with fewer rows than learners (a rare agent) would give some learner nothing to step on.
        trains = {mid: t for mid, t in trains.items() if len(t["advantages"]) >= self.config.num_learners}
        kwargs = {mid: {"kl_coeff": self.kl_coeffs[mid]} for mid in trains}
        stats, weights = self.learner_group.update(learner_update, trains, kwargs)
        self.set_weights_from_learner(weights)
        for mid, result in stats.items():
            self.adapt_kl_coeff(mid, result)
        return stats


def ppo_update(module, forward, optimizer, train: dict, config, kl_coeff: float, rng, device=None) -> dict:
    """``num_epochs`` passes of minibatch steps over ``train`` (numpy arrays): ``forward(minibatch)``
    is the module's training forward pass (DDP's, on a learner actor). Returns the mean stats."""
    discrete = module.discrete
    tensors = {key: torch.from_numpy(writable(value)).to(device) for key, value in train.items()}
    size = len(train["advantages"])
    # A module that saw fewer steps than a minibatch (a rare agent) still learns from what it has.
    minibatch_size = min(config.minibatch_size, size)
    totals: dict = {}
    steps = 0
    for _ in range(config.num_epochs):
        order = rng.permutation(size) if config.shuffle_batch_per_epoch else np.arange(size)
        for start in range(0, size - minibatch_size + 1, minibatch_size):
            index = torch.from_numpy(order[start : start + minibatch_size]).to(device)
            minibatch = {key: value[index] for key, value in tensors.items()}
            outputs = forward(minibatch)
            loss, stats = ppo_loss(
                outputs,
                minibatch,
                discrete,
                clip_param=config.clip_param,
                vf_clip_param=config.vf_clip_param,
                vf_loss_coeff=config.vf_loss_coeff,
                entropy_coeff=config.entropy_coeff,
                kl_coeff=kl_coeff,
                use_kl_loss=config.use_kl_loss,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                clip_gradients(module.parameters(), config.grad_clip, config.grad_clip_by)
            optimizer.step()
            stats["total_loss"] = loss.item()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
    result = {key: value / max(1, steps) for key, value in totals.items()}
    result["curr_kl_coeff"] = kl_coeff
    with torch.no_grad():
        values = module.compute_values({"obs": tensors["obs"]}).cpu().numpy()
    result["vf_explained_var"] = explained_variance(train["value_targets"], values)
    result["num_module_steps_trained"] = size
    result["num_trainable_parameters"] = sum(p.numel() for p in module.parameters())
    return result


def learner_update(learner, module_id, train: dict, kl_coeff: float) -> dict:
    """PPO's update as a learner actor runs it on its shard (see ``LearnerGroup.update``)."""
    module = learner.modules[module_id]
    return ppo_update(
        module,
        learner.forward(module_id),
        learner.optimizers[module_id],
        train,
        learner.config,
        kl_coeff,
        learner.rng,
        learner.device,
    )


def clip_gradients(parameters, grad_clip: float, grad_clip_by: str) -> None:
    parameters = [p for p in parameters if p.grad is not None]
    if grad_clip_by == "value":
        torch.nn.utils.clip_grad_value_(parameters, grad_clip)
    elif grad_clip_by == "norm":
        for p in parameters:
            torch.nn.utils.clip_grad_norm_([p], grad_clip)
    else:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
