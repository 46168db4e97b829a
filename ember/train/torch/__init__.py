"""ember.train.torch: ``TorchTrainer`` and the loop helpers, as ``ray.train.torch``.

Each worker joins one ``torch.distributed`` process group (gloo on CPU, nccl on GPUs) before the
loop starts; ``prepare_model`` wraps the model in DistributedDataParallel and
``prepare_data_loader`` shards a DataLoader between the workers.
"""

import importlib as _importlib

from ember.train.torch.config import TorchConfig
from ember.train.torch.trainer import TorchTrainer

__all__ = ["TorchConfig", "TorchTrainer", "get_device", "get_devices", "prepare_data_loader", "prepare_model"]

_LOOP_HELPERS = ("get_device", "get_devices", "prepare_data_loader", "prepare_model")


def __getattr__(name: str):
    # The loop helpers import torch: a driver that only builds a TorchTrainer never needs it there
    # (its import is seconds of CPU, and hundreds of MB, beside the workers' own).
    if name in _LOOP_HELPERS:
        return getattr(_importlib.import_module("ember.train.torch.train_loop_utils"), name)
    raise AttributeError(f"module 'ember.train.torch' has no attribute {name!r}")
