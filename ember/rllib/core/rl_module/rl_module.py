"""RLModules: the torch networks the learner trains (RLlib's ``TorchRLModule`` API, default models).

``forward_inference`` / ``forward_exploration`` / ``forward_train`` take a dict with ``"obs"`` (a
tensor or array, [B, obs...]) and return a dict of tensors, as RLlib's modules do. Each module can
export its weights as a numpy policy (``numpy_policy``) for the env runners.
"""

import os
import pickle

import numpy as np
import torch
from torch import nn

from ember.rllib.algorithms.algorithm_config import DefaultModelConfig
from ember.rllib.core.rl_module.numpy_policy import PPOPolicy, QPolicy
from ember.rllib.env.env_factory import obs_size

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}
STATE_FILE = "module_state.pt"
SPEC_FILE = "module_spec.pkl"


class MLP(nn.Module):
    """Linear layers with an activation after each hidden one (and ``output_activation`` after the last)."""

    def __init__(self, sizes: list, activation, output_activation=None):
        super().__init__()
        self.activations = []
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            self.activations.append(activation if i < len(sizes) - 2 else output_activation)
        self.linears = nn.ModuleList(layers)
        self.torch_acts = [_ACTIVATIONS[a]() if a in _ACTIVATIONS else None for a in self.activations]

    @property
    def out_features(self) -> int:
        return self.linears[-1].out_features

    def forward(self, x):
        for linear, act in zip(self.linears, self.torch_acts):
            x = linear(x)
            if act is not None:
                x = act(x)
        return x

    def numpy_layers(self) -> list:
        return [
            (linear.weight.detach().cpu().numpy().copy(), linear.bias.detach().cpu().numpy().copy(), act)
            for linear, act in zip(self.linears, self.activations)
        ]


def _normc_(linear: nn.Linear, std: float) -> None:
    # Small last layers (as RLlib's normc initialiser does for heads) start the policy near uniform.
    with torch.no_grad():
        weight = torch.randn_like(linear.weight)
        linear.weight.copy_(weight * std / weight.norm(dim=1, keepdim=True))
        linear.bias.zero_()


class RLModule(nn.Module):
    """Base of the default modules: spaces, model config, state and checkpoints."""

    def __init__(self, observation_space, action_space, model_config: DefaultModelConfig):
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        self.model_config = model_config

    def _obs(self, batch) -> torch.Tensor:
        obs = batch["obs"]
        if not isinstance(obs, torch.Tensor):
            obs = torch.as_tensor(np.asarray(obs, np.float32))
        return obs.float().reshape(obs.shape[0], -1)

    def forward_exploration(self, batch: dict) -> dict:
        return self.forward_inference(batch)

    def extra_args(self) -> dict:
        """Constructor arguments beyond the spaces and model config (saved with a checkpoint)."""
        return {"dueling": self.dueling} if hasattr(self, "dueling") else {}

    def get_state(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def set_state(self, state: dict) -> None:
        self.load_state_dict(state)

    def save_to_path(self, path) -> str:
        """Write this module's weights and the spec to rebuild it under the directory ``path``."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        torch.save(self.get_state(), os.path.join(path, STATE_FILE))
        spec = (type(self), self.observation_space, self.action_space, self.model_config, self.extra_args())
        with open(os.path.join(path, SPEC_FILE), "wb") as out:
            pickle.dump(spec, out)
        return path

    @classmethod
    def from_checkpoint(cls, path) -> "RLModule":
        """Rebuild a module saved by ``save_to_path`` (e.g. a checkpoint's
        ``learner_group/learner/rl_module/default_policy``)."""
        path = os.fspath(path)
        with open(os.path.join(path, SPEC_FILE), "rb") as spec_file:
            module_class, observation_space, action_space, model_config, extra = pickle.load(spec_file)
        module = module_class(observation_space, action_space, model_config, **extra)
        module.set_state(torch.load(os.path.join(path, STATE_FILE), weights_only=True))
        return module


class PPOTorchModule(RLModule):
    """Policy and value networks: a shared encoder (``vf_share_layers``) or one each, then heads.

    Discrete actions: the policy head gives logits. Box actions: means and log-stds, side by side.
    """

    def __init__(self, observation_space, action_space, model_config: DefaultModelConfig):
        import gymnasium as gym

        super().__init__(observation_space, action_space, model_config)
        mc = model_config
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        action_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        dist_dim = action_dim if self.discrete else 2 * action_dim
        in_dim = obs_size(observation_space)
        hidden = [in_dim, *mc.fcnet_hiddens]
        feature = hidden[-1]
        act = mc.fcnet_activation
        self.encoder = MLP(hidden, act, act) if mc.fcnet_hiddens else MLP([in_dim], act)
        self.vf_encoder = None if mc.vf_share_layers else MLP(hidden, act, act)
        head = list(mc.head_fcnet_hiddens)
        self.pi = MLP([feature, *head, dist_dim], mc.head_fcnet_activation)
        self.vf = MLP([feature, *head, 1], mc.head_fcnet_activation)
        _normc_(self.pi.linears[-1], 0.01)
        _normc_(self.vf.linears[-1], 1.0)

    def _forward(self, obs: torch.Tensor) -> tuple:
        features = self.encoder(obs) if len(self.encoder.linears) else obs
        vf_features = features if self.vf_encoder is None else self.vf_encoder(obs)
        return self.pi(features), self.vf(vf_features).squeeze(-1)

    def forward_inference(self, batch: dict) -> dict:
        """{"action_dist_inputs": logits (or mean and log-std)} for ``batch["obs"]``."""
        with torch.no_grad():
            return {"action_dist_inputs": self._forward(self._obs(batch))[0]}

    def forward_train(self, batch: dict) -> dict:
        dist_inputs, values = self._forward(self._obs(batch))
        return {"action_dist_inputs": dist_inputs, "vf_preds": values}

    def compute_values(self, batch: dict) -> torch.Tensor:
        return self._forward(self._obs(batch))[1]

    def numpy_policy(self) -> PPOPolicy:
        """The acting copy for env runners: when the value function shares the encoder, the
        encoder runs once and feeds both heads."""
        encoder = self.encoder.numpy_layers()
        if self.vf_encoder is None:
            shared, pi, vf = encoder, self.pi.numpy_layers(), self.vf.numpy_layers()
        else:
            shared, pi, vf = (
                [],
                encoder + self.pi.numpy_layers(),
                self.vf_encoder.numpy_layers() + self.vf.numpy_layers(),
            )
        low = high = None
        if not self.discrete:
            low = np.asarray(self.action_space.low, np.float32)
            high = np.asarray(self.action_space.high, np.float32)
        return PPOPolicy(pi, vf, shared, self.discrete, low, high)


class QTorchModule(RLModule):
    """A Q network for discrete actions (DQN): an encoder, then a Q head or, with ``dueling``, a
    value and an advantage head combined as V + A - mean(A)."""

    def __init__(self, observation_space, action_space, model_config: DefaultModelConfig, dueling: bool = True):
        super().__init__(observation_space, action_space, model_config)
        mc = model_config
        self.dueling = dueling
        in_dim = obs_size(observation_space)
        act = mc.fcnet_activation
        self.encoder = MLP([in_dim, *mc.fcnet_hiddens], act, act)
        feature = mc.fcnet_hiddens[-1] if mc.fcnet_hiddens else in_dim
        head = list(mc.head_fcnet_hiddens)
        self.advantages = MLP([feature, *head, int(action_space.n)], mc.head_fcnet_activation)
        self.value = MLP([feature, *head, 1], mc.head_fcnet_activation) if dueling else None

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.encoder(obs) if len(self.encoder.linears) else obs
        advantages = self.advantages(features)
        if self.value is None:
            return advantages
        return self.value(features) + advantages - advantages.mean(-1, keepdim=True)

    def forward_inference(self, batch: dict) -> dict:
        """{"q_values": ..., "actions": greedy actions} for ``batch["obs"]``."""
        with torch.no_grad():
            q = self.q_values(self._obs(batch))
        return {"q_values": q, "actions": q.argmax(-1)}

    def forward_train(self, batch: dict) -> dict:
        return {"q_values": self.q_values(self._obs(batch))}

    def numpy_policy(self, epsilon: float = 0.0) -> QPolicy:
        value = self.value.numpy_layers() if self.value is not None else None
        return QPolicy(self.encoder.numpy_layers(), self.advantages.numpy_layers(), value, epsilon)
