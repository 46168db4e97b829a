"""HyperBand (Li et al.), synchronous, as Ray's ``HyperBandScheduler``: trials fill brackets in turn;
in each bracket every trial runs to the bracket's current milestone and PAUSEs there; when all of the
bracket's live trials have reached it, the best ``1/reduction_factor`` go on to the next milestone
(``reduction_factor`` times further) and the rest stop. Brackets differ in how many trials they
take and how far the first milestone is: many trials judged early, or few judged late."""

import math

from ember.tune.schedulers.asha import _check_positive
from ember.tune.schedulers.base import TrialScheduler


class _Bracket:
    """One bracket: its capacity, its milestones (ascending, the last is max_t) and its trials."""

    def __init__(self, capacity: int, milestones: list):
        self.capacity = capacity
        self.milestones = milestones
        self.level = 0
        self.live: list = []  # trial ids still in the bracket, in the order they joined
        self.joined = 0
        self.scores: dict = {}  # trial id -> signed score at the current milestone
        self.promoted: set = set()  # paused trials cleared to run to the next milestone

    @property
    def milestone(self):
        return self.milestones[self.level]

    @property
    def full(self) -> bool:
        return self.joined >= self.capacity

    def round_done(self) -> bool:
        return bool(self.live) and all(t in self.scores for t in self.live)


class HyperBandScheduler(TrialScheduler):
    """Ray's ``HyperBandScheduler``: ``time_attr`` counts progress, ``max_t`` is the most any trial
    runs, ``reduction_factor`` (eta) both the spacing of milestones and the fraction kept.
    ``stop_last_trials=False`` lets the trials of a bracket's last round run past ``max_t``."""

    def __init__(
        self,
        time_attr: str = "training_iteration",
        metric: str | None = None,
        mode: str | None = None,
        max_t: float = 81,
        reduction_factor: float = 3,
        stop_last_trials: bool = True,
    ):
        super().__init__(metric, mode)
        _check_positive("max_t", max_t)
        if (
            isinstance(reduction_factor, bool)
            or not isinstance(reduction_factor, (int, float))
            or reduction_factor <= 1
        ):
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor!r}.")
        self.time_attr = time_attr
        self.max_t = max_t
        self.eta = reduction_factor
        self.stop_last_trials = stop_last_trials
        # Brackets s = s_max .. 0, as in the paper: bracket s takes ceil(B/(s+1) * eta**s) trials
        # and judges them first at max_t * eta**-s.
        self.s_max_1 = int(round(math.log(max_t) / math.log(reduction_factor))) + 1
        self.brackets: list = []
        self.trial_bracket: dict = {}
        self.decisions: list = []  # (trial_id, time, score, decision), for inspection

    def bracket_shape(self, s: int) -> tuple:
        """(capacity, milestones) of bracket ``s`` (0 <= s < s_max_1)."""
        capacity = int(math.ceil(self.s_max_1 / (s + 1) * self.eta**s))
        first = self.max_t * self.eta ** (-s)
        milestones = []
        for k in range(s + 1):
            value = min(first * self.eta**k, self.max_t)
            value = max(1, int(round(value))) if isinstance(self.max_t, int) else value
            if not milestones or value > milestones[-1]:
                milestones.append(value)
        if milestones[-1] != self.max_t:
            milestones.append(self.max_t)
        return capacity, milestones

    # ---- the scheduler interface ------------------------------------------------------------------

    def on_trial_add(self, experiment, trial):
        self._require("HyperBandScheduler")
        if not self.brackets or self.brackets[-1].full:
            s = self.s_max_1 - 1 - len(self.brackets) % self.s_max_1
            self.brackets.append(_Bracket(*self.bracket_shape(s)))
        bracket = self.brackets[-1]
        bracket.joined += 1
        bracket.live.append(trial.trial_id)
        self.trial_bracket[trial.trial_id] = bracket

    def on_trial_result(self, experiment, trial, result):
        now = self._time(result, self.time_attr, "HyperBandScheduler")
        if trial.trial_id not in self.trial_bracket:
            self.on_trial_add(experiment, trial)
        bracket = self.trial_bracket[trial.trial_id]
        score = self._score(result, "HyperBandScheduler")
        decision = self._decide(experiment, bracket, trial.trial_id, now, score)
        self.decisions.append((trial.trial_id, now, score, decision))
        return decision

    def _decide(self, experiment, bracket, trial_id, now, score) -> str:
        if trial_id not in bracket.live:
            return TrialScheduler.STOP  # judged out while it was still running
        if now >= self.max_t and self.stop_last_trials:
            self._leave(experiment, bracket, trial_id)
            return TrialScheduler.STOP
        if now < bracket.milestone or trial_id in bracket.scores:
            return TrialScheduler.CONTINUE
        bracket.promoted.discard(trial_id)
        bracket.scores[trial_id] = -math.inf if score is None else score
        if bracket.milestone >= self.max_t and not self.stop_last_trials:
            return TrialScheduler.CONTINUE
        if not (bracket.round_done() and self._complete(experiment, bracket)):
            return TrialScheduler.PAUSE
        kept = self._advance(experiment, bracket, exclude=trial_id)
        return TrialScheduler.CONTINUE if trial_id in kept else TrialScheduler.STOP

    def _advance(self, experiment, bracket, exclude=None) -> set:
        """Every live trial reached the milestone: keep the best ceil(n/eta), stop the rest, and
        clear the kept paused ones to run to the next milestone."""
        ranked = sorted(bracket.live, key=lambda t: bracket.scores[t], reverse=True)
        keep = max(1, int(math.ceil(len(ranked) / self.eta)))
        kept, dropped = ranked[:keep], ranked[keep:]
        bracket.level = min(bracket.level + 1, len(bracket.milestones) - 1)
        bracket.scores = {}
        bracket.live = [t for t in bracket.live if t in kept]
        bracket.promoted = {t for t in kept if t != exclude}
        for trial_id in dropped:
            if trial_id != exclude:
                other = experiment.trial(trial_id)
                if other.status == "PAUSED":
                    experiment._terminate(other)
        return set(kept)

    @staticmethod
    def _complete(experiment, bracket) -> bool:
        """No more trials will join the bracket: it is full, or the searcher has no more configs."""
        if bracket.full or experiment.search_finished:
            return True
        return experiment.cap is not None and len(experiment.trials) >= experiment.cap

    def _leave(self, experiment, bracket, trial_id) -> None:
        if trial_id in bracket.live:
            bracket.live.remove(trial_id)
            bracket.scores.pop(trial_id, None)
            bracket.promoted.discard(trial_id)
            # The trials still in the bracket may all have been waiting for this one.
            if bracket.round_done() and self._complete(experiment, bracket) and bracket.milestone < self.max_t:
                self._advance(experiment, bracket)

    def on_trial_complete(self, experiment, trial, result):
        bracket = self.trial_bracket.get(trial.trial_id)
        if bracket is not None:
            self._leave(experiment, bracket, trial.trial_id)

    def on_trial_error(self, experiment, trial):
        self.on_trial_complete(experiment, trial, None)

    def on_trial_remove(self, experiment, trial):
        self.on_trial_complete(experiment, trial, None)

    def choose_trial_to_run(self, experiment):
        """A paused trial cleared for the next milestone first, then the oldest pending one; a trial
        paused at the milestone waits there for the rest of its bracket."""
        for bracket in self.brackets:
            # A bracket the searcher will not fill is judged once every trial it got is waiting.
            if bracket.round_done() and bracket.milestone < self.max_t and self._complete(experiment, bracket):
                self._advance(experiment, bracket)
        for trial in experiment.trials:
            bracket = self.trial_bracket.get(trial.trial_id)
            if trial.status == "PAUSED" and bracket is not None and trial.trial_id in bracket.promoted:
                return trial
        for trial in experiment.trials:
            if trial.status == "PENDING":
                return trial
        return None
