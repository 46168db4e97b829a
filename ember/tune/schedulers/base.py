"""The scheduler interface and FIFO (every trial runs to its end)."""

import math

from ember.tune.config import check_mode


class TrialScheduler:
    """Decides what happens to a trial after each of its results."""

    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"
    STOP = "STOP"
    NOOP = "NOOP"

    def __init__(self, metric: str | None = None, mode: str | None = None):
        check_mode(mode)
        self._metric = metric
        self._mode = mode

    @property
    def metric(self):
        return self._metric

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if self._metric is None:
            self._metric = metric
        if self._mode is None:
            self._mode = mode
        return True

    def on_trial_add(self, experiment, trial) -> None:
        pass

    def on_trial_result(self, experiment, trial, result: dict) -> str:
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, experiment, trial, result: dict | None) -> None:
        pass

    def on_trial_error(self, experiment, trial) -> None:
        pass

    def on_trial_remove(self, experiment, trial) -> None:
        pass

    def choose_trial_to_run(self, experiment):
        """The next PENDING or PAUSED trial to start, or None (FIFO: the oldest)."""
        for trial in experiment.trials:
            if trial.status in ("PENDING", "PAUSED"):
                return trial
        return None

    # ---- helpers for subclasses ------------------------------------------------------------------

    def _require(self, name: str) -> None:
        if self._metric is None or self._mode is None:
            raise ValueError(
                f"{name} needs a metric and a mode: pass them to the scheduler or to TuneConfig(metric=, mode=)."
            )

    def _score(self, result: dict, name: str):
        """The result's metric, signed so that larger is better; None when missing or NaN."""
        if self._metric not in result:
            raise ValueError(
                f"{name}: the metric {self._metric!r} is not in the trial's result (it has {sorted(result)})."
            )
        value = result[self._metric]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return None
        return value if self._mode == "max" else -value

    def _time(self, result: dict, time_attr: str, name: str):
        if time_attr not in result:
            raise ValueError(f"{name}: time_attr {time_attr!r} is not in the trial's result (it has {sorted(result)}).")
        return result[time_attr]


class FIFOScheduler(TrialScheduler):
    """Runs every trial to its end, in the order they were made."""
