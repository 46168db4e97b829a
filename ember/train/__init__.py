"""ember.train: Ray Train's API on Ember's core.

A trainer's ``fit()`` starts a worker group (actors in a placement group), runs the training loop
in each, and gathers what the loops ``report``; checkpoints are directories persisted under
``RunConfig.storage_path/name``. ``ember.train.torch`` has ``TorchTrainer`` (torch.distributed),
``ember.train.lightgbm`` and ``ember.train.xgboost`` the boosting trainers (their libraries' own
distributed modes).
"""

import importlib as _importlib
from typing import TYPE_CHECKING

# Names load from their modules on first use: a worker that unpickles a training loop or a Tune trial
# (``train.report`` inside) then imports the session alone, not the trainers (tens of ms per fresh worker).
_LAZY = {
    "Checkpoint": "checkpoint",
    "CheckpointConfig": "config",
    "DataConfig": "config",
    "FailureConfig": "config",
    "RunConfig": "config",
    "ScalingConfig": "config",
    "Result": "result",
    "TrainContext": "session",
    "get_checkpoint": "session",
    "get_context": "session",
    "get_dataset_shard": "session",
    "report": "session",
    "Backend": "trainer",
    "DataParallelTrainer": "trainer",
}

if TYPE_CHECKING:
    from ember.train.checkpoint import Checkpoint
    from ember.train.config import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ember.train.result import Result
    from ember.train.session import TrainContext, get_checkpoint, get_context, get_dataset_shard, report
    from ember.train.trainer import Backend, DataParallelTrainer

__all__ = [
    "Backend",
    "Checkpoint",
    "CheckpointConfig",
    "DataConfig",
    "DataParallelTrainer",
    "FailureConfig",
    "Result",
    "RunConfig",
    "ScalingConfig",
    "TrainContext",
    "get_checkpoint",
    "get_context",
    "get_dataset_shard",
    "report",
]

_SUBPACKAGES = ("torch", "lightgbm", "xgboost")


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(f"ember.train.{module}"), name)
        globals()[name] = value
        return value
    # ``ray.train.torch.TorchTrainer`` after ``import ember as ray``: the framework's package (and
    # torch or lightgbm with it) loads on first use.
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"ember.train.{name}")
    raise AttributeError(f"module 'ember.train' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
