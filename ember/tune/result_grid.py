"""``ResultGrid``: what ``Tuner.fit()`` returns, one ``Result`` (Train's type) per trial."""

import math

from ember.tune.config import check_mode
from ember.tune.experiment import Metrics, leaves
from ember.util.nested import flatten

SCOPES = ("all", "last", "avg", "last-5-avg", "last-10-avg")


class TuneError(Exception):
    """A trial failed; the message holds the trial's remote traceback."""


class ResultGrid:
    """The results of an experiment: ``grid[i]`` / iteration give each trial's ``Result`` (in trial
    order), ``get_best_result`` picks one, ``get_dataframe`` tabulates them; ``errors`` are the errors
    of the trials that failed for good."""

    def __init__(self, results: list, experiment_path: str, metric=None, mode=None, statuses=None):
        self._results = list(results)
        self.experiment_path = experiment_path
        self._metric = metric
        self._mode = mode
        self._statuses = list(statuses or [])

    def __len__(self):
        return len(self._results)

    def __getitem__(self, index):
        return self._results[index]

    def __iter__(self):
        return iter(self._results)

    @property
    def errors(self) -> list:
        return [result.error for result in self._results if result.error is not None]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(1 for status in self._statuses if status == "TERMINATED")

    def get_best_result(
        self, metric: str | None = None, mode: str | None = None, scope: str = "last", filter_nan_and_inf: bool = True
    ):
        """The trial result best by ``metric`` (``mode`` "min" or "max"; default TuneConfig's), judged
        on its last result (``scope="last"``), the mean of all/last 5/last 10 ("avg", "last-5-avg",
        "last-10-avg") or its best result ever ("all")."""
        metric = metric or self._metric
        mode = mode or self._mode
        if metric is None or mode is None:
            raise ValueError(
                "get_best_result needs a metric and a mode: pass them here or to TuneConfig(metric=, mode=)."
            )
        if not isinstance(metric, str):
            raise TypeError(f"metric must be a metric name, got {metric!r}.")
        check_mode(mode, allow_none=False)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
        seen = set()
        best, best_value = None, None
        for result in self._results:
            history = [Metrics(m) for m in (result.metrics_history or ([result.metrics] if result.metrics else []))]
            seen.update(k for m in history for k, _ in leaves(m))
            values = [m[metric] for m in history if _number(m.get(metric))]
            if not values:
                continue
            value = _by_scope(values, scope, mode)
            if filter_nan_and_inf and not math.isfinite(value):
                continue
            if best is None or (value > best_value if mode == "max" else value < best_value):
                best, best_value = result, value
        if best is None:
            if metric not in seen:
                known = sorted(k for k in seen if k != "config")
                raise ValueError(
                    f"No trial reported the metric {metric!r}; the reported metrics are {known}."
                    if known
                    else f"No trial reported any result, so there is no best by {metric!r}."
                )
            raise ValueError(f"No trial reported a finite number for {metric!r}.")
        return best

    def get_dataframe(self, filter_metric: str | None = None, filter_mode: str | None = None):
        """A pandas DataFrame, one row per trial: its last result (or, with ``filter_metric`` and
        ``filter_mode``, its best), flattened with ``config/...`` columns."""
        import pandas as pd

        if (filter_metric is None) != (filter_mode is None):
            raise ValueError("get_dataframe needs both filter_metric and filter_mode, or neither.")
        if filter_mode is not None:
            check_mode(filter_mode, allow_none=False)
        rows = []
        for result in self._results:
            row = result.metrics or {}
            if filter_metric is not None:
                candidates = [Metrics(m) for m in result.metrics_history]
                candidates = [m for m in candidates if _number(m.get(filter_metric))]
                if candidates:
                    pick = max if filter_mode == "max" else min
                    row = pick(candidates, key=lambda m: m[filter_metric])
            flat = flatten({k: v for k, v in row.items() if k != "config"})
            flat.update(flatten(row.get("config") or {}, "config/"))
            flat["logdir"] = result.path
            rows.append(flat)
        return pd.DataFrame(rows)

    def __repr__(self):
        return f"ResultGrid<{len(self)} results, {self.num_errors} errors, path={self.experiment_path!r}>"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _by_scope(values: list, scope: str, mode: str) -> float:
    if scope == "last":
        return values[-1]
    if scope == "all":
        return max(values) if mode == "max" else min(values)
    window = {"avg": len(values), "last-5-avg": 5, "last-10-avg": 10}[scope]
    tail = values[-window:]
    return sum(tail) / len(tail)
