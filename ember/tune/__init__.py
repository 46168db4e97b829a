"""ember.tune: Ray Tune's API on Ember's core.

``Tuner(trainable, param_space=..., tune_config=..., run_config=...).fit()`` runs trials as actors
under a controller loop in the driver; searchers (``ember.tune.search``) suggest configs, schedulers
(``ember.tune.schedulers``) stop, pause or exploit trials, and the experiment state is written after
every change so ``Tuner.restore`` resumes it. ``Result`` and ``Checkpoint`` are Train's types.
"""

import importlib as _importlib
from typing import TYPE_CHECKING

# Names load from their modules on first use: a trial's fresh worker, which unpickles the trainable
# (``tune.report`` inside) and the trial actor, then imports the session and the trial actor alone, not
# the tuner, searchers, schedulers and progress display (~0.1 s a trial, most of a trial's start).
_LAZY = {
    "Checkpoint": "ember.train.checkpoint",
    "FailureConfig": "ember.train.config",
    "Result": "ember.train.result",
    "CheckpointConfig": "ember.tune.config",
    "RunConfig": "ember.tune.config",
    "TuneConfig": "ember.tune.config",
    "ResultGrid": "ember.tune.result_grid",
    "TuneError": "ember.tune.result_grid",
    "get_checkpoint": "ember.tune.session",
    "get_context": "ember.tune.session",
    "report": "ember.tune.session",
    "Stopper": "ember.tune.stopper",
    "Trainable": "ember.tune.trainable",
    "TuneContext": "ember.tune.trainable",
    "with_parameters": "ember.tune.trainable",
    "with_resources": "ember.tune.trainable",
    "Tuner": "ember.tune.tuner",
    **dict.fromkeys(
        (
            "choice",
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
            "sample_from",
            "uniform",
        ),
        "ember.tune.search.sample",
    ),
}

if TYPE_CHECKING:
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
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"ember.tune.{name}")
    raise AttributeError(f"module 'ember.tune' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
