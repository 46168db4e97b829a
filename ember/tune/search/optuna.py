"""``OptunaSearch``: Optuna's samplers (TPE by default) as a Tune searcher, through Optuna's
ask-and-tell interface. Tune's domains become Optuna distributions; a space Optuna cannot express
(``grid_search``, ``randn``, ``sample_from``) is refused with a clear error."""

from ember.tune.search import sample
from ember.tune.search.searcher import Searcher


def _distribution(path, domain):
    import optuna.distributions as od

    where = "/".join(map(str, path))
    if isinstance(domain, sample.Float):
        if domain.log_base is not None and domain.q is not None:
            raise ValueError(f"OptunaSearch cannot sample {where}: Optuna has no quantized log-uniform float.")
        return od.FloatDistribution(domain.lower, domain.upper, log=domain.log_base is not None, step=domain.q)
    if isinstance(domain, sample.Integer):
        high = domain.upper if domain.inclusive else domain.upper - 1
        if domain.log_base is not None and domain.q not in (None, 1):
            raise ValueError(f"OptunaSearch cannot sample {where}: Optuna has no quantized log-spaced int.")
        return od.IntDistribution(
            domain.lower,
            high,
            log=domain.log_base is not None,
            step=1 if domain.log_base is not None else (domain.q or 1),
        )
    if isinstance(domain, sample.Categorical):
        return od.CategoricalDistribution(domain.categories)
    kind = "grid_search" if sample.is_grid(domain) else type(domain).__name__
    raise ValueError(
        f"OptunaSearch cannot search {where} ({kind}): it takes uniform/quniform/loguniform, randint/qrandint/"
        "lograndint and choice spaces."
    )


class OptunaSearch(Searcher):
    """Ray's ``OptunaSearch``: ``space`` (a Tune search space; default the Tuner's param_space),
    ``metric``/``mode`` (default TuneConfig's), ``points_to_evaluate`` (configs tried first),
    ``sampler`` (an Optuna sampler; default TPE with ``seed``), ``evaluated_rewards`` (the results
    of ``points_to_evaluate`` already known: they are told to Optuna instead of run)."""

    def __init__(
        self,
        space: dict | None = None,
        metric: str | None = None,
        mode: str | None = None,
        points_to_evaluate=None,
        sampler=None,
        seed=None,
        evaluated_rewards=None,
    ):
        super().__init__(metric, mode)
        import optuna

        if space is not None and not isinstance(space, dict):
            raise TypeError("OptunaSearch's space must be a Tune search space (a dict).")
        if evaluated_rewards is not None and len(evaluated_rewards) != len(points_to_evaluate or []):
            raise ValueError("evaluated_rewards needs one reward per point of points_to_evaluate.")
        self._optuna = optuna
        self.sampler = sampler or optuna.samplers.TPESampler(seed=seed)
        self.points = list(points_to_evaluate or [])
        self.evaluated_rewards = evaluated_rewards
        self.space = None
        self.distributions: dict = {}
        self.constants: dict = {}
        self.study = None
        self.live: dict = {}  # trial_id -> optuna trial
        if space is not None:
            self._set_space(space)

    def set_search_properties(self, metric, mode, config, **spec):
        super().set_search_properties(metric, mode, config)
        if self.space is None:
            self._set_space(config or {})
            return True
        return False

    def _set_space(self, space: dict) -> None:
        if not space:
            raise ValueError("OptunaSearch needs a search space: pass space= or a Tuner param_space.")
        self.space = space
        self.distributions = {}
        for path, leaf in sample.walk(space):
            self.distributions[path] = _distribution(path, leaf)

    def _study(self):
        if self.study is None:
            if self._metric is None or self._mode is None:
                raise ValueError("OptunaSearch needs a metric and a mode (here or in TuneConfig).")
            self._optuna.logging.set_verbosity(self._optuna.logging.WARNING)
            direction = "maximize" if self._mode == "max" else "minimize"
            self.study = self._optuna.create_study(sampler=self.sampler, direction=direction)
            for index, point in enumerate(self.points):
                flat = {_key(p): v for p, v in _flatten(point)}
                if self.evaluated_rewards is not None:
                    known = {_key(p): d for p, d in self.distributions.items() if _key(p) in flat}
                    self.study.add_trial(
                        self._optuna.trial.create_trial(
                            params=flat, distributions=known, value=self.evaluated_rewards[index]
                        )
                    )
                else:
                    self.study.enqueue_trial(flat)
        return self.study

    def suggest(self, trial_id):
        study = self._study()
        trial = study.ask({_key(path): dist for path, dist in self.distributions.items()})
        self.live[trial_id] = trial
        config = sample.resolve(self.space, None, {path: trial.params[_key(path)] for path in self.distributions})
        return config

    def on_trial_complete(self, trial_id, result=None, error=False):
        trial = self.live.pop(trial_id, None)
        if trial is None:
            return
        states = self._optuna.trial.TrialState
        value = (result or {}).get(self._metric)
        if error or not isinstance(value, (int, float)) or isinstance(value, bool):
            self.study.tell(trial, state=states.FAIL)
        else:
            self.study.tell(trial, float(value))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_optuna"] = None
        return state

    def __setstate__(self, state):
        import optuna

        self.__dict__.update(state)
        self._optuna = optuna


def _key(path) -> str:
    return "/".join(map(str, path))


def _flatten(values: dict, prefix=()):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value
