"""The median stopping rule (Golovin et al., Google Vizier): a trial stops when its best result so
far is worse than the median of the other trials' running means at the same point in time."""

import statistics

from ember.tune.schedulers.base import TrialScheduler


class MedianStoppingRule(TrialScheduler):
    """Ray's ``MedianStoppingRule``: from ``grace_period`` (in ``time_attr``) on, with at least
    ``min_samples_required`` other trials that got as far, stop (``hard_stop``) or pause a trial whose
    best score is below the median of their mean scores up to that time. ``min_time_slice`` spaces
    the checks."""

    def __init__(
        self,
        time_attr: str = "time_total_s",
        metric: str | None = None,
        mode: str | None = None,
        grace_period: float = 60.0,
        min_samples_required: int = 3,
        min_time_slice: float = 0,
        hard_stop: bool = True,
    ):
        super().__init__(metric, mode)
        if (
            isinstance(min_samples_required, bool)
            or not isinstance(min_samples_required, int)
            or min_samples_required < 1
        ):
            raise ValueError(f"min_samples_required must be a positive int, got {min_samples_required!r}.")
        self.time_attr = time_attr
        self.grace_period = grace_period
        self.min_samples_required = min_samples_required
        self.min_time_slice = min_time_slice
        self.hard_stop = hard_stop
        self.history: dict = {}  # trial_id -> [(time, score)]
        self.last_check: dict = {}
        self.stopped: list = []

    def on_trial_add(self, experiment, trial):
        self._require("MedianStoppingRule")

    def on_trial_result(self, experiment, trial, result):
        now = self._time(result, self.time_attr, "MedianStoppingRule")
        score = self._score(result, "MedianStoppingRule")
        self.history.setdefault(trial.trial_id, []).append((now, score))
        if now < self.grace_period or now - self.last_check.get(trial.trial_id, -float("inf")) < self.min_time_slice:
            return TrialScheduler.CONTINUE
        self.last_check[trial.trial_id] = now
        means = []
        for other, points in self.history.items():
            if other == trial.trial_id or not points or points[-1][0] < now:
                continue
            upto = [s for t, s in points if t <= now and s is not None]
            if upto:
                means.append(sum(upto) / len(upto))
        if len(means) < self.min_samples_required:
            return TrialScheduler.CONTINUE
        own = [s for _, s in self.history[trial.trial_id] if s is not None]
        if own and max(own) >= statistics.median(means):
            return TrialScheduler.CONTINUE
        self.stopped.append(trial.trial_id)
        return TrialScheduler.STOP if self.hard_stop else TrialScheduler.PAUSE
