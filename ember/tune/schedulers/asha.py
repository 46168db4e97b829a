"""ASHA, asynchronous successive halving (Li et al.): a trial reaching a rung (``grace_period *
reduction_factor**k`` of ``time_attr``) stops unless its result is in the top ``1/reduction_factor``
of what the trials that reached that rung before it recorded there."""

import math

from ember.tune.schedulers.base import TrialScheduler


def _check_positive(name, value, integer=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")


class _Bracket:
    """One bracket's rungs: milestone -> {trial_id: score}, largest milestone first."""

    def __init__(self, min_t, max_t, reduction_factor, stop_last_trials, offset=0):
        self.rf = reduction_factor
        count = int(math.log(max_t / min_t, reduction_factor) + 1e-9) + 1 - offset
        self.rungs = [(min_t * reduction_factor ** (k + offset), {}) for k in reversed(range(max(count, 0)))]
        self.max_t = max_t
        self.stop_last_trials = stop_last_trials

    def cutoff(self, recorded: dict):
        values = [v for v in recorded.values() if v is not None]
        if not values:
            return None
        values.sort()
        # The (1 - 1/rf) quantile, linear between order statistics.
        position = (1 - 1 / self.rf) * (len(values) - 1)
        low = math.floor(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)

    def on_result(self, trial_id, now, score) -> str:
        action = TrialScheduler.CONTINUE
        for milestone, recorded in self.rungs:
            if now < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            if cutoff is not None and (score is None or score < cutoff):
                action = TrialScheduler.STOP
            recorded[trial_id] = score
            break
        if self.stop_last_trials and now >= self.max_t:
            action = TrialScheduler.STOP
        return action


class AsyncHyperBandScheduler(TrialScheduler):
    """Ray's ``AsyncHyperBandScheduler`` / ``ASHAScheduler``: ``time_attr`` counts progress,
    ``max_t`` ends every trial, ``grace_period`` is the first rung, ``reduction_factor`` the rungs'
    spacing and selectivity, ``brackets`` how many brackets trials are spread over (round-robin)."""

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
    ):
        super().__init__(metric, mode)
        _check_positive("max_t", max_t)
        _check_positive("grace_period", grace_period)
        if grace_period > max_t:
            raise ValueError(f"grace_period ({grace_period}) must not exceed max_t ({max_t}).")
        if (
            isinstance(reduction_factor, bool)
            or not isinstance(reduction_factor, (int, float))
            or reduction_factor <= 1
        ):
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor!r}.")
        if isinstance(brackets, bool) or not isinstance(brackets, int) or brackets < 1:
            raise ValueError(f"brackets must be a positive int, got {brackets!r}.")
        self.time_attr = time_attr
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.brackets = [
            _Bracket(grace_period, max_t, reduction_factor, stop_last_trials, offset=s) for s in range(brackets)
        ]
        self.trial_bracket: dict = {}
        self.decisions: list = []  # (trial_id, time, score, decision) for every result, for inspection

    def on_trial_add(self, experiment, trial):
        self._require("ASHAScheduler")
        self.trial_bracket[trial.trial_id] = len(self.trial_bracket) % len(self.brackets)

    def on_trial_result(self, experiment, trial, result):
        now = self._time(result, self.time_attr, "ASHAScheduler")
        if trial.trial_id not in self.trial_bracket:
            self.on_trial_add(experiment, trial)
        bracket = self.brackets[self.trial_bracket[trial.trial_id]]
        score = self._score(result, "ASHAScheduler")
        decision = bracket.on_result(trial.trial_id, now, score)
        self.decisions.append((trial.trial_id, now, score, decision))
        return decision

    @property
    def rungs(self) -> list:
        """The first bracket's rungs as (milestone, {trial_id: signed score}), smallest first."""
        return [(milestone, dict(recorded)) for milestone, recorded in reversed(self.brackets[0].rungs)]


ASHAScheduler = AsyncHyperBandScheduler
