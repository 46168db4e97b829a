"""ember.tune: Ray Tune's API on Ember's core.

``Tuner(trainable, param_space=..., tune_config=..., run_config=...).fit()`` runs trials as actors
under a controller loop in the driver; searchers (``ember.tune.search``) suggest configs, schedulers
(``ember.tune.schedulers``) stop, pause or exploit trials, and the experiment state is written after
every change so ``Tuner.restore`` resumes it. ``Result`` and ``Checkpoint`` are Train's types.
"""

import importlib as _importlib

from ember.train.checkpoint import Checkpoint
from ember.train.config import FailureConfig
from ember.train.result import Result
from ember.tune.config import CheckpointConfig, RunConfig, TuneConfig
from ember.tune.result_grid import ResultGrid, TuneError
from ember.tune.search.sample import (
    choice,
    grid_search,
    lograndint,
    loguniform,
    qlograndint,
    qloguniform,
    qrandint,
    qrandn,
    quniform,
    randint,
    randn,
    sample_from,
    uniform,
)
from ember.tune.session import get_checkpoint, get_context, report
from ember.tune.stopper import Stopper
from ember.tune.trainable import Trainable, TuneContext, with_parameters, with_resources
from ember.tune.tuner import Tuner

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "FailureConfig",
    "Result",
    "ResultGrid",
    "RunConfig",
    "Stopper",
    "Trainable",
    "TuneConfig",
    "TuneContext",
    "TuneError",
    "Tuner",
    "choice",
    "get_checkpoint",
    "get_context",
    "grid_search",
    "lograndint",
    "loguniform",
    "qlograndint",
    "qloguniform",
    "qrandint",
    "qrandn",
    "quniform",
    "randint",
    "randn",
    "report",
    "sample_from",
    "uniform",
    "with_parameters",
    "with_resources",
]

_SUBPACKAGES = ("registry", "schedulers", "search", "stopper")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"ember.tune.{name}")
    raise AttributeError(f"module 'ember.tune' has no attribute {name!r}")
