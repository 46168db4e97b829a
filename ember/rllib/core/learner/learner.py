"""``Learner``: one replica of an algorithm's RLModules and their optimizers (RLlib's name), as a
learner actor holds it when ``num_learners >= 1``.

Each module is wrapped in torch's DistributedDataParallel, so a backward pass all-reduces (averages)
the gradients over every learner of the group; with identical starting weights, identical averaged
gradients and the same optimizer, every replica holds the same weights after each step. What a
gradient step is belongs to the algorithm: it ships a module-level function
``fn(learner, module_id, batch, **kwargs) -> stats`` that uses ``learner.forward(module_id)``.
"""

import numpy as np
import torch
from torch import nn


class _TrainForward(nn.Module):
    """DDP hooks the gradient all-reduce onto ``forward``; RLModules train through ``forward_train``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch: dict) -> dict:
        return self.module.forward_train(batch)


def writable(array) -> np.ndarray:
    """A C-contiguous, writable view or copy: arrays from the object store are read-only, and torch
    warns about (and must not write to) tensors made from those."""
    return np.require(array, requirements=["C", "W"])


def to_cpu(value):
    """``value`` with every tensor in it (nested dicts/lists, as in an optimizer's state) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


class Learner:
    """The modules, their DDP wrappers and Adam optimizers of one learner (``rank`` of ``world_size``).

    ``extras``: other torch modules the algorithm's update needs (DQN's target network); they are
    not trained through DDP and every learner updates its own copy the same way.
    """

    def __init__(self, modules: dict, extras: dict, config, rank: int, world_size: int, device=None):
        from torch.nn.parallel import DistributedDataParallel

        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.modules = {mid: module.to(self.device) for mid, module in modules.items()}
        self.extras = {name: extra.to(self.device) for name, extra in extras.items()}
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Constructing DDP broadcasts rank 0's weights, a collective: every learner builds at once.
        self.train_modules = {
            mid: DistributedDataParallel(_TrainForward(module), device_ids=device_ids)
            for mid, module in self.modules.items()
        }
        self.optimizers = {mid: torch.optim.Adam(m.parameters(), lr=config.lr) for mid, m in self.modules.items()}
        # Each learner shuffles its own shard; seeded per rank so that runs repeat.
        self.rng = np.random.default_rng(None if config.seed is None else [config.seed, rank])

    def forward(self, module_id):
        """The callable a training step's forward pass goes through (its backward all-reduces)."""
        return self.train_modules[module_id]

    def to_device(self, batch: dict) -> dict:
        """A numpy batch as tensors on this learner's device."""
        return {k: torch.from_numpy(writable(v)).to(self.device) for k, v in batch.items()}

    def get_weights(self) -> dict:
        return {mid: module.get_state() for mid, module in self.modules.items()}

    def set_weights(self, weights: dict) -> None:
        for mid, state in weights.items():
            self.modules[mid].load_state_dict(state)

    def get_state(self) -> dict:
        """Weights, optimizer states and extras' weights, all on the CPU (what a checkpoint holds)."""
        return {
            "modules": self.get_weights(),
            "optimizers": {mid: to_cpu(opt.state_dict()) for mid, opt in self.optimizers.items()},
            "extras": {name: to_cpu(extra.state_dict()) for name, extra in self.extras.items()},
        }

    def set_state(self, state: dict) -> None:
        """Load any of ``modules``, ``optimizers``, ``extras`` (as ``get_state`` returns them)."""
        self.set_weights(state.get("modules", {}))
        for mid, opt_state in state.get("optimizers", {}).items():
            self.optimizers[mid].load_state_dict(opt_state)
        for name, extra_state in state.get("extras", {}).items():
            self.extras[name].load_state_dict(extra_state)
