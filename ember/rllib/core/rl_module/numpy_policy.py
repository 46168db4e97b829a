"""The acting side of a module, in numpy: what env runners run.

An env runner acts on a few observations at a time, where a small numpy matmul beats a torch call
and, above all, the runner process never imports torch (a second or more per process and ~300 MB
saved on a small machine). The learner exports its module's weights into one of these policies once
per iteration; the policy is what goes through the object store to every runner.
"""

import numpy as np

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def activate(x: np.ndarray, name) -> np.ndarray:
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    if name in ("swish", "silu"):
        return x / (1.0 + np.exp(-x))
    return x


def mlp_forward(layers: list, x: np.ndarray) -> np.ndarray:
    """``layers``: [(weight [out, in], bias [out], activation name or None), ...] as torch's Linear."""
    for weight, bias, activation in layers:
        x = activate(x @ weight.T + bias, activation)
    return x


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class PPOPolicy:
    """Acts with a categorical (Discrete) or diagonal Gaussian (Box) distribution and reports the
    value estimate of each observation, as PPO's env runners must."""

    def __init__(self, pi_layers: list, vf_layers: list, shared_layers: list, discrete: bool, low=None, high=None):
        self.pi_layers, self.vf_layers, self.shared_layers = pi_layers, vf_layers, shared_layers
        self.discrete = discrete
        self.low, self.high = low, high

    def _heads(self, obs: np.ndarray) -> tuple:
        features = mlp_forward(self.shared_layers, obs)
        return mlp_forward(self.pi_layers, features), mlp_forward(self.vf_layers, features)[:, 0]

    def value(self, obs: np.ndarray) -> np.ndarray:
        return mlp_forward(self.vf_layers, mlp_forward(self.shared_layers, obs))[:, 0]

    def compute_actions(self, obs: np.ndarray, explore: bool, rng: np.random.Generator) -> tuple:
        """(actions for the env, {actions, action_logp, action_dist_inputs, vf_preds}) for a batch."""
        dist_inputs, values = self._heads(obs)
        if self.discrete:
            logp_all = log_softmax(dist_inputs)
            if explore:
                # Gumbel-max: one categorical draw per row without a Python loop.
                actions = np.argmax(logp_all - np.log(-np.log(rng.random(logp_all.shape))), axis=-1)
            else:
                actions = np.argmax(logp_all, axis=-1)
            logp = logp_all[np.arange(len(actions)), actions]
            env_actions = actions
        else:
            mean, log_std = np.split(dist_inputs, 2, axis=-1)
            log_std = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
            std = np.exp(log_std)
            actions = mean + std * rng.standard_normal(mean.shape) if explore else mean
            logp = (-0.5 * ((actions - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
            env_actions = np.clip(actions, self.low, self.high)
        extra = {
            "actions": actions,
            "action_logp": logp.astype(np.float32),
            "action_dist_inputs": dist_inputs.astype(np.float32),
            "vf_preds": values.astype(np.float32),
        }
        return env_actions, extra


class QPolicy:
    """Epsilon-greedy on a Q network (DQN's env runners); ``value_layers`` set for a dueling network."""

    def __init__(self, encoder_layers: list, advantage_layers: list, value_layers, epsilon: float):
        self.encoder_layers, self.advantage_layers, self.value_layers = encoder_layers, advantage_layers, value_layers
        self.epsilon = epsilon

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        features = mlp_forward(self.encoder_layers, obs)
        advantages = mlp_forward(self.advantage_layers, features)
        if self.value_layers is None:
            return advantages
        return mlp_forward(self.value_layers, features) + advantages - advantages.mean(-1, keepdims=True)

    def compute_actions(self, obs: np.ndarray, explore: bool, rng: np.random.Generator) -> tuple:
        q = self.q_values(obs)
        actions = np.argmax(q, axis=-1)
        if explore and self.epsilon > 0:
            random = rng.random(len(actions)) < self.epsilon
            actions = np.where(random, rng.integers(0, q.shape[-1], len(actions)), actions)
        return actions, {"actions": actions}
