"""Tune's configuration: ``TuneConfig`` (what to search and how), and Train's ``RunConfig`` and
``CheckpointConfig`` grown by what only Tune uses (``stop``; a class trainable's checkpoint
frequency). Arguments are checked when the object is made."""

from dataclasses import dataclass

from ember.train import config as train_config
from ember.train.config import FailureConfig  # noqa: F401 - re-exported as ember.tune.FailureConfig
from ember.tune.stopper import make_stopper

MODES = ("min", "max")


def check_mode(mode, allow_none: bool = True) -> None:
    if mode is None and allow_none:
        return
    if mode not in MODES:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")


@dataclass
class CheckpointConfig(train_config.CheckpointConfig):
    """Train's ``CheckpointConfig`` plus, for class trainables, ``checkpoint_frequency`` (save every
    N iterations; 0: never) and ``checkpoint_at_end`` (save when the trial ends)."""

    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None

    def __post_init__(self):
        super().__post_init__()
        train_config._check_int("CheckpointConfig.checkpoint_frequency", self.checkpoint_frequency, 0)


@dataclass
class RunConfig(train_config.RunConfig):
    """Train's ``RunConfig`` plus ``stop``: a dict of metric thresholds, a function
    ``(trial_id, result) -> bool`` or a ``Stopper``."""

    stop: object = None

    def __post_init__(self):
        super().__post_init__()
        make_stopper(self.stop)  # fail here on a bad value


@dataclass
class TuneConfig:
    """How to search: ``metric``/``mode`` for the schedulers, searchers and ``get_best_result``;
    ``search_alg`` (default: grid and random variants), ``scheduler`` (default FIFO);
    ``num_samples`` (-1: until stopped); ``max_concurrent_trials`` (default: as many as the cluster's
    resources hold); ``time_budget_s`` for the whole experiment; ``reuse_actors`` to keep a finished
    trial's actor for the next trial with the same resources."""

    metric: str | None = None
    mode: str | None = None
    search_alg: object = None
    scheduler: object = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = False
    trial_name_creator: object = None
    trial_dirname_creator: object = None

    def __post_init__(self):
        if self.metric is not None and not isinstance(self.metric, str):
            raise TypeError(f"TuneConfig.metric must be a metric name, got {self.metric!r}.")
        check_mode(self.mode)
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples == 0:
            raise ValueError(f"TuneConfig.num_samples must be a positive int or -1, got {self.num_samples!r}.")
        if self.num_samples < -1:
            raise ValueError(f"TuneConfig.num_samples must be a positive int or -1, got {self.num_samples!r}.")
        train_config._check_int("TuneConfig.max_concurrent_trials", self.max_concurrent_trials, 1, allow_none=True)
        budget = self.time_budget_s
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
            raise ValueError(f"TuneConfig.time_budget_s must be a positive number of seconds, got {budget!r}.")
        if not isinstance(self.reuse_actors, bool):
            raise TypeError(f"TuneConfig.reuse_actors must be a bool, got {self.reuse_actors!r}.")
