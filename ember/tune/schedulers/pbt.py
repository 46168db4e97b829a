"""Population based training (Jaderberg et al.): every ``perturbation_interval``, a trial in the
bottom quantile of the population takes over the latest checkpoint of a trial in the top quantile
(exploit) and goes on with that trial's hyperparameters, perturbed (explore)."""

import copy
import math
import random
import warnings

from ember.tune.schedulers.base import TrialScheduler
from ember.tune.search.sample import Categorical, Domain, Function, Integer


class PopulationBasedTraining(TrialScheduler):
    """Ray's ``PopulationBasedTraining``. ``hyperparam_mutations`` maps config keys (nested dicts
    allowed) to a list of values, a search-space domain or a function returning a value; on explore
    each is resampled with ``resample_probability``, else a number is multiplied by one of
    ``perturbation_factors`` and a list value moves to a neighbouring entry. ``custom_explore_fn(config)``
    may change the new config further. Exploiting needs the donor to have reported a checkpoint.
    ``seed`` (Ember's addition) makes the choices repeatable."""

    def __init__(
        self,
        time_attr: str = "time_total_s",
        metric: str | None = None,
        mode: str | None = None,
        perturbation_interval: float = 60.0,
        burn_in_period: float = 0.0,
        hyperparam_mutations=None,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors=(1.2, 0.8),
        custom_explore_fn=None,
        log_config: bool = True,
        require_attrs: bool = True,
        synch: bool = False,
        seed=None,
    ):
        super().__init__(metric, mode)
        if not hyperparam_mutations and custom_explore_fn is None:
            raise ValueError("PopulationBasedTraining needs hyperparam_mutations or custom_explore_fn.")
        if hyperparam_mutations is not None and not isinstance(hyperparam_mutations, dict):
            raise TypeError("hyperparam_mutations must be a dict of config key to values, domain or function.")
        if not 0 < quantile_fraction <= 0.5:
            raise ValueError(f"quantile_fraction must be in (0, 0.5], got {quantile_fraction!r}.")
        if not 0 <= resample_probability <= 1:
            raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability!r}.")
        if isinstance(perturbation_interval, bool) or perturbation_interval <= 0:
            raise ValueError(f"perturbation_interval must be positive, got {perturbation_interval!r}.")
        _check_mutations(hyperparam_mutations or {})
        self.time_attr = time_attr
        self.perturbation_interval = perturbation_interval
        self.burn_in_period = burn_in_period
        self.mutations = hyperparam_mutations or {}
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.perturbation_factors = tuple(perturbation_factors)
        self.custom_explore_fn = custom_explore_fn
        self.rng = random.Random(seed)
        self.last_time: dict = {}  # trial_id -> time of its last perturbation check
        self.scores: dict = {}  # trial_id -> signed score at its last check
        self.exploits: list = []  # dicts: trial, donor, checkpoint, old and new config, time
        self._warned = False

    def on_trial_add(self, experiment, trial):
        self._require("PopulationBasedTraining")
        for path in _paths(self.mutations):
            if not _has(trial.config, path):
                raise ValueError(
                    f"hyperparam_mutations names {'/'.join(path)!r}, which is not in the trial's config; "
                    "add it to param_space."
                )

    def on_trial_result(self, experiment, trial, result):
        now = self._time(result, self.time_attr, "PopulationBasedTraining")
        if now < self.burn_in_period:
            return TrialScheduler.CONTINUE
        if now - self.last_time.get(trial.trial_id, 0) < self.perturbation_interval:
            return TrialScheduler.CONTINUE
        self.last_time[trial.trial_id] = now
        self.scores[trial.trial_id] = self._score(result, "PopulationBasedTraining")
        lower, upper = self._quantiles(experiment)
        if trial.trial_id not in lower or not upper:
            return TrialScheduler.CONTINUE
        donor = experiment.trial(self.rng.choice(upper))
        if donor.checkpoint is None:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "PopulationBasedTraining could not exploit: the top trials have not reported a checkpoint "
                    "(report one with tune.report(metrics, checkpoint=...)).",
                    stacklevel=2,
                )
            return TrialScheduler.CONTINUE
        new_config = self.explore(donor.config)
        self.exploits.append(
            {
                "trial": trial.trial_id,
                "donor": donor.trial_id,
                "checkpoint": donor.checkpoint,
                "iteration": donor.checkpoint_iteration,
                "old_config": copy.deepcopy(trial.config),
                "new_config": new_config,
                "time": now,
            }
        )
        trial.restart_from(new_config, donor.checkpoint, donor.checkpoint_iteration)
        # The donor's time counts from its checkpoint: don't perturb the copy again before an interval.
        self.last_time[trial.trial_id] = now
        return TrialScheduler.PAUSE

    def on_trial_complete(self, experiment, trial, result):
        self.scores.pop(trial.trial_id, None)

    def on_trial_error(self, experiment, trial):
        self.scores.pop(trial.trial_id, None)

    def _quantiles(self, experiment) -> tuple:
        live = {t.trial_id for t in experiment.trials if t.status in ("RUNNING", "PAUSED", "PENDING")}
        scored = sorted(
            (tid for tid, score in self.scores.items() if score is not None and tid in live),
            key=lambda tid: self.scores[tid],
        )
        if len(scored) <= 1:
            return [], []
        count = min(int(math.ceil(len(scored) * self.quantile_fraction)), len(scored) // 2)
        return scored[:count], scored[-count:]

    def explore(self, config: dict) -> dict:
        """A copy of ``config`` with the mutations applied (and ``custom_explore_fn``)."""
        new = copy.deepcopy(config)
        self._mutate(new, self.mutations)
        if self.custom_explore_fn is not None:
            new = self.custom_explore_fn(new)
            if not isinstance(new, dict):
                raise TypeError("custom_explore_fn must return the new config (a dict).")
        return new

    def _mutate(self, config: dict, mutations: dict) -> None:
        for key, spec in mutations.items():
            if isinstance(spec, dict):
                self._mutate(config[key], spec)
                continue
            resample = self.rng.random() < self.resample_probability
            if isinstance(spec, (list, tuple)) or isinstance(spec, Categorical):
                values = list(spec.categories if isinstance(spec, Categorical) else spec)
                if resample or config[key] not in values:
                    config[key] = self.rng.choice(values)
                else:
                    index = values.index(config[key]) + self.rng.choice((-1, 1))
                    config[key] = values[min(max(index, 0), len(values) - 1)]
                continue
            if resample:
                config[key] = spec.sample(self.rng) if isinstance(spec, Domain) else spec()
                continue
            value = config[key] * self.rng.choice(self.perturbation_factors)
            if isinstance(config[key], int) and not isinstance(config[key], bool) or isinstance(spec, Integer):
                value = int(round(value))
            config[key] = value


def _check_mutations(mutations: dict) -> None:
    for key, spec in mutations.items():
        if isinstance(spec, dict):
            _check_mutations(spec)
        elif isinstance(spec, Function) or not (isinstance(spec, (list, tuple, Domain)) or callable(spec)):
            raise TypeError(
                f"hyperparam_mutations[{key!r}] must be a list of values, a search-space domain or a function, "
                f"got {type(spec).__name__}."
            )


def _paths(mutations: dict, prefix=()) -> list:
    out = []
    for key, spec in mutations.items():
        out += _paths(spec, (*prefix, key)) if isinstance(spec, dict) else [(*prefix, key)]
    return out


def _has(config, path) -> bool:
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return False
        config = config[key]
    return True
