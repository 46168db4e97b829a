"""Stop criteria for trials and experiments (``RunConfig(stop=...)``), as Ray Tune's ``Stopper``s.

A dict ``{"training_iteration": 10, "mean_accuracy": 0.98}`` stops a trial once any named metric
reaches its value; a function ``(trial_id, result) -> bool`` stops a trial when it returns True; a
``Stopper`` can also end the whole experiment (``stop_all``).
"""

import time


class Stopper:
    """Decides after each result whether its trial stops (``__call__``) and whether every trial
    stops (``stop_all``)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return False


class NoopStopper(Stopper):
    pass


class FunctionStopper(Stopper):
    """Stops a trial when ``function(trial_id, result)`` is true."""

    def __init__(self, function):
        if not callable(function):
            raise TypeError(f"FunctionStopper needs a function, got {type(function).__name__}.")
        self._function = function

    def __call__(self, trial_id, result):
        return bool(self._function(trial_id, result))


class DictStopper(Stopper):
    """Stops a trial once ``result[key] >= value`` for any of the criteria (Ray's dict form); a key
    of a nested result is slash-joined, as ``"env_runners/episode_return_mean"``."""

    def __init__(self, criteria: dict):
        for key, value in criteria.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"stop criteria must map metric names to numbers, got {key!r}: {value!r}.")
        self.criteria = dict(criteria)

    def __call__(self, trial_id, result):
        for key, value in self.criteria.items():
            if key not in result:
                raise KeyError(
                    f"stop criterion {key!r} is not among the metrics the trial reported ({_names(result)})."
                )
            if result[key] >= value:
                return True
        return False


def _names(result: dict) -> list:
    from ember.tune.experiment import leaves

    return sorted(name for name, _ in leaves(result))


class MaximumIterationStopper(Stopper):
    """Stops each trial after ``max_iter`` results."""

    def __init__(self, max_iter: int):
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}.")
        self._max_iter = max_iter

    def __call__(self, trial_id, result):
        return result.get("training_iteration", 0) >= self._max_iter


class TimeoutStopper(Stopper):
    """Ends the experiment ``timeout`` seconds after it started."""

    def __init__(self, timeout: float):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self._timeout = float(timeout)
        self._deadline = None

    def stop_all(self):
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout
        return time.monotonic() >= self._deadline


class CombinedStopper(Stopper):
    """Stops when any of ``stoppers`` does."""

    def __init__(self, *stoppers: Stopper):
        self._stoppers = stoppers

    def __call__(self, trial_id, result):
        return any(stopper(trial_id, result) for stopper in self._stoppers)

    def stop_all(self):
        return any(stopper.stop_all() for stopper in self._stoppers)


def make_stopper(stop) -> Stopper:
    """The ``Stopper`` for ``RunConfig.stop`` (None, dict, function or Stopper)."""
    if stop is None:
        return NoopStopper()
    if isinstance(stop, Stopper):
        return stop
    if isinstance(stop, dict):
        return DictStopper(stop)
    if callable(stop):
        return FunctionStopper(stop)
    raise TypeError(f"RunConfig.stop must be a dict, a function or a Stopper, got {type(stop).__name__}.")
