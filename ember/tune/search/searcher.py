"""Searchers: what suggests the next trial's config. ``Searcher`` is Ray's interface (``suggest``,
``on_trial_result``, ``on_trial_complete``); ``BasicVariantGenerator`` is the default (every grid
point ``num_samples`` times, random domains sampled with a seeded generator); ``ConcurrencyLimiter``
caps how many of a searcher's trials run at once. All are plain objects, pickled into the
experiment state so that a restored experiment goes on suggesting where it stopped."""

import copy
import random

from ember.tune.search import sample


class Searcher:
    """Suggests configs: ``suggest(trial_id)`` returns a config, None (nothing right now) or
    ``Searcher.FINISHED`` (nothing any more)."""

    FINISHED = "FINISHED"

    def __init__(self, metric: str | None = None, mode: str | None = None):
        from ember.tune.config import check_mode

        check_mode(mode)
        self._metric = metric
        self._mode = mode

    @property
    def metric(self):
        return self._metric

    @property
    def mode(self):
        return self._mode

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """Called by the Tuner with TuneConfig's metric/mode and the param_space; returns False
        when the searcher already has a space of its own (so ``config`` is not used)."""
        if self._metric is None and metric is not None:
            self._metric = metric
        if self._mode is None and mode is not None:
            self._mode = mode
        return True

    def suggest(self, trial_id: str):
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    # Ray's names for the experiment-level limits; the Tuner sets them.
    total_samples = None


class BasicVariantGenerator(Searcher):
    """The default searcher: for each of ``num_samples`` repetitions, every combination of the
    space's ``grid_search`` values, with the other domains sampled anew for each trial.
    ``points_to_evaluate`` (partial configs) come first and count as samples; ``random_state``
    seeds the sampling."""

    def __init__(
        self, points_to_evaluate=None, max_concurrent: int = 0, constant_grid_search: bool = False, random_state=None
    ):
        super().__init__()
        if points_to_evaluate is not None and not isinstance(points_to_evaluate, (list, tuple)):
            raise TypeError("points_to_evaluate must be a list of dicts.")
        for point in points_to_evaluate or []:
            if not isinstance(point, dict):
                raise TypeError(f"points_to_evaluate must hold dicts, got {type(point).__name__}.")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 0:
            raise ValueError(f"max_concurrent must be an int >= 0, got {max_concurrent!r}.")
        self.points = [copy.deepcopy(p) for p in points_to_evaluate or []]
        self.max_concurrent = max_concurrent
        self.constant_grid_search = constant_grid_search
        self.rng = random.Random(random_state)
        self.space: dict = {}
        self.num_samples = 1
        self.queue: list = []  # (space, grid point) still to make, for the current sample
        self.samples_started = 0
        self.live: set = set()

    def set_search_properties(self, metric, mode, config, num_samples: int = 1, **spec) -> bool:
        super().set_search_properties(metric, mode, config)
        self.space = config or {}
        self.num_samples = num_samples
        return True

    @property
    def total_samples(self):
        if self.num_samples == -1:
            return None
        return self.num_samples * sample.grid_size(self.space)

    def suggest(self, trial_id):
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        if not self.queue:
            if self.num_samples != -1 and self.samples_started >= self.num_samples:
                return Searcher.FINISHED
            space = self.space
            if self.samples_started < len(self.points):
                space = sample.merge_point(space, self.points[self.samples_started])
            self.samples_started += 1
            points = sample.grid_points(space)
            if self.constant_grid_search:
                shared = sample.resolve({k: v for k, v in space.items()}, self.rng, points[0])
                self.queue = [(space, {**_constants(space, shared), **point}) for point in points]
            else:
                self.queue = [(space, point) for point in points]
        space, point = self.queue.pop(0)
        self.live.add(trial_id)
        return sample.resolve(space, self.rng, point)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.live.discard(trial_id)


def _constants(space, resolved) -> dict:
    """{path: value} of ``resolved`` for the space's random domains (not its grids)."""
    fixed = {}
    for path, leaf in sample.walk(space):
        if not sample.is_grid(leaf):
            value = resolved
            for key in path:
                value = value[key]
            fixed[path] = value
    return fixed


class ConcurrencyLimiter(Searcher):
    """Lets ``searcher`` have at most ``max_concurrent`` trials running at once."""

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False):
        if not isinstance(searcher, Searcher):
            raise TypeError(f"ConcurrencyLimiter wraps a Searcher, got {type(searcher).__name__}.")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a positive int, got {max_concurrent!r}.")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.batch = batch
        self.live: set = set()
        self.batch_open = True

    @property
    def total_samples(self):
        return self.searcher.total_samples

    def set_search_properties(self, metric, mode, config, **spec):
        super().set_search_properties(metric, mode, config)
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id):
        if len(self.live) >= self.max_concurrent or (self.batch and not self.batch_open):
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.live.add(trial_id)
            if self.batch and len(self.live) >= self.max_concurrent:
                self.batch_open = False
        return config

    def on_trial_result(self, trial_id, result):
        if trial_id in self.live:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self.live:
            self.live.discard(trial_id)
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            if not self.live:
                self.batch_open = True
