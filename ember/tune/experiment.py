"""The Tune controller's state, apart from any I/O: the trials and their states, and the decisions
on each event (a result, a trial that ended or failed, the time budget). ``Tuner.fit`` (tuner.py)
feeds it events from the trial actors and carries out what it returns; tests drive it directly.

A trial's status is Ray's: PENDING (not started, or to be restarted after a failure), RUNNING,
PAUSED (stopped by the scheduler to go on later from its latest checkpoint), TERMINATED, ERROR.
The object is pickled into the experiment state (storage.py), except the trials' result
histories, which go to each trial's ``result.json`` as they come. ``changes`` counts the changes a
restore needs exactly (a trial's status, a new trial, a checkpoint, a failure): the state file is
rewritten after each of those, and only now and then for results alone, which a restore rebuilds
from result.json (``catch_up``).
"""

import copy
import copyreg
import datetime
import math
import os
import time
import traceback

import cloudpickle

from ember.train.state import CheckpointKeeper
from ember.tune.schedulers.base import TrialScheduler
from ember.tune.search.searcher import Searcher
from ember.util import nested
from ember.util.nested import NestedResult

PENDING, RUNNING, PAUSED, TERMINATED, ERROR = "PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR"
LIVE = (PENDING, RUNNING, PAUSED)
FINISHED = (TERMINATED, ERROR)

CONTINUE, STOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.PAUSE
RETRY = "RETRY"


# A trial's result: as reported (nested dicts kept, as RLlib's), answering Ray Tune's slash-joined keys.
Metrics = NestedResult


def leaves(values: dict):
    """(slash-joined key, value) for every non-dict value under ``values``, ``config`` left out."""
    return nested.leaves({key: value for key, value in values.items() if key != "config"})


class Trial:
    """One trial: its config, status, results and checkpoints."""

    def __init__(self, trial_id: str, config: dict, path: str, name: str, checkpoint_config=None):
        self.trial_id = trial_id
        self.config = config
        self.path = path
        self.name = name
        self.status = PENDING
        self.history: list = []  # every result, in order (not pickled: see result.json)
        self.last_result: dict = {}
        self.iteration = 0
        self.time_total = 0.0
        self.checkpoint = None
        self.checkpoint_iteration = 0
        self.keeper = CheckpointKeeper(checkpoint_config) if checkpoint_config is not None else None
        self.restore = None  # (checkpoint, iteration) to start from next, set by an exploit
        self.num_failures = 0
        self.error: str | None = None  # the user's traceback, as text
        self.error_type: str | None = None
        self.error_object = None
        self.best: dict = {}  # metric -> best value seen (by the experiment's mode)
        self.starts = 0
        self.num_results = 0  # lines in result.json; those past it at a restore came after the state file

    def restart_from(self, config: dict, checkpoint, iteration: int) -> None:
        """Go on from ``checkpoint`` with ``config`` (PBT's exploit)."""
        self.config = copy.deepcopy(config)
        self.restore = (checkpoint, iteration)

    def start_point(self) -> tuple:
        """(checkpoint to start from or None, iteration it was made at) for the next start."""
        if self.restore is not None:
            checkpoint, iteration = self.restore
            self.restore = None
        else:
            checkpoint, iteration = self.checkpoint, self.checkpoint_iteration if self.checkpoint is not None else 0
        if checkpoint is None:
            iteration = 0
        self.iteration = iteration
        return checkpoint, iteration

    def __setattr__(self, name, value):
        # Any change drops the pickled form a finished trial keeps (see __reduce_ex__).
        self.__dict__["_frozen"] = None
        object.__setattr__(self, name, value)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_frozen", None)
        state["history"] = []
        state["error_object"] = None  # the exception may not unpickle elsewhere; its text is kept
        return state

    def __reduce_ex__(self, protocol):
        """A live trial pickles as any object. A finished one is pickled once, and its bytes are
        reused by every later snapshot of the experiment until it changes (an attribute set: a
        restart, a checkpoint at its end), so that saving the state after each trial costs about
        the same at the thousandth trial as at the first. The experiment changes a finished trial
        only by setting its attributes, never inside them (its results and best values are final)."""
        if self.status not in FINISHED:
            return copyreg.__newobj__, (Trial,), self.__getstate__()
        frozen = self.__dict__.get("_frozen")
        if frozen is None:
            frozen = self.__dict__["_frozen"] = cloudpickle.dumps(self.__getstate__())
        return _thaw_trial, (frozen,)

    def __repr__(self):
        return self.name

    __str__ = __repr__


def _thaw_trial(frozen: bytes) -> Trial:
    trial = Trial.__new__(Trial)
    trial.__dict__.update(cloudpickle.loads(frozen))
    trial.__dict__["_frozen"] = frozen
    return trial


class Experiment:
    """The trials and the decisions. ``max_concurrent`` caps the RUNNING trials; ``max_failures`` is
    per trial (-1: without limit)."""

    def __init__(
        self,
        searcher: Searcher,
        scheduler: TrialScheduler,
        stopper,
        *,
        path: str,
        trainable_name: str,
        metric=None,
        mode=None,
        num_samples: int = 1,
        max_concurrent: int = 1,
        max_failures: int = 0,
        time_budget_s=None,
        checkpoint_config=None,
        experiment_id: str = "",
        name_creator=None,
        clock=time.monotonic,
    ):
        self.searcher = searcher
        self.scheduler = scheduler
        self.stopper = stopper
        self.path = path
        self.trainable_name = trainable_name
        self.metric = metric
        self.mode = mode
        self.max_concurrent = max_concurrent
        self.max_failures = max_failures
        self.time_budget_s = time_budget_s
        self.checkpoint_config = checkpoint_config
        self.experiment_id = experiment_id or os.urandom(3).hex()
        self.name_creator = name_creator
        self.clock = clock
        total = searcher.total_samples
        self.cap = total if total is not None else (None if num_samples == -1 else num_samples)
        self.trials: list = []
        self.by_id: dict = {}
        self.search_finished = False
        self.stopping = False  # time budget spent or a stopper's stop_all: no new trials
        self.elapsed_before = 0.0  # time spent in earlier fits of this experiment (restores)
        self.started = None
        self.changes = 0  # bumped on every change the state file must hold at once
        self.num_results = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["clock"] = None
        state["started"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.clock = time.monotonic

    # ---- the clock -------------------------------------------------------------------------------

    def begin(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.elapsed_before + (self.clock() - self.started if self.started is not None else 0.0)

    def budget_left(self):
        """Seconds of ``time_budget_s`` left (None: no budget)."""
        if self.time_budget_s is None:
            return None
        return max(self.time_budget_s - self.elapsed(), 0.0)

    # ---- what to start ---------------------------------------------------------------------------

    def trial(self, trial_id: str) -> Trial:
        return self.by_id[trial_id]

    def running(self) -> list:
        return [t for t in self.trials if t.status == RUNNING]

    def to_start(self) -> list:
        """The trials to start now (marked RUNNING): waiting ones first, then new suggestions."""
        self._check_budget()
        started = []
        while len(self.running()) < self.max_concurrent and not self.stopping:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                trial = self._suggest()
                if trial is None and self.search_finished:
                    # The search has just run out: a scheduler holding paused trials for more
                    # trials to come (HyperBand's brackets) may now let them go on.
                    trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                break
            trial.status = RUNNING
            trial.starts += 1
            started.append(trial)
            self.changes += 1
        if not started and not self.running() and not self.done and not self.stopping:
            waiting = [t for t in self.trials if t.status in (PENDING, PAUSED)]
            if not waiting:
                raise RuntimeError(
                    f"The searcher {type(self.searcher).__name__} suggested no config while no trial is running: "
                    "the experiment cannot go on."
                )
        return started

    def _suggest(self):
        if self.search_finished:
            return None
        if self.cap is not None and len(self.trials) >= self.cap:
            self.search_finished = True
            return None
        trial_id = f"{self.experiment_id}_{len(self.trials):05d}"
        config = self.searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            self.search_finished = True
            return None
        if config is None:
            return None
        if not isinstance(config, dict):
            raise TypeError(f"{type(self.searcher).__name__}.suggest returned {type(config).__name__}, not a dict.")
        trial = Trial(trial_id, config, "", "", self.checkpoint_config)
        trial.name = self.name_creator(trial) if self.name_creator else f"{self.trainable_name}_{trial_id}"
        trial.path = _join(self.path, trial.name)
        self.trials.append(trial)
        self.by_id[trial_id] = trial
        self.changes += 1
        self.scheduler.on_trial_add(self, trial)
        return trial

    # ---- events ----------------------------------------------------------------------------------

    def on_result(
        self, trial_id: str, metrics: dict, checkpoint=None, time_this_iter_s: float = 0.0, info: dict | None = None
    ) -> tuple:
        """A trial reported. Returns (decision, checkpoints no longer kept, to delete, trials stopped
        by a stopper's stop_all besides this one)."""
        trial = self.trial(trial_id)
        if trial.status != RUNNING:
            raise ValueError(f"trial {trial_id} reported while {trial.status}")
        trial.iteration += 1
        trial.time_total += time_this_iter_s
        result = Metrics(metrics)
        now = datetime.datetime.now()
        result.update(
            {
                "training_iteration": trial.iteration,
                "trial_id": trial_id,
                "time_this_iter_s": time_this_iter_s,
                "time_total_s": trial.time_total,
                "timestamp": int(now.timestamp()),
                "date": now.strftime("%Y-%m-%d_%H-%M-%S"),
                "done": False,
                **(info or {}),
                "config": copy.deepcopy(trial.config),
            }
        )
        for key in ("training_iteration", "time_total_s"):
            if key in metrics:
                result[key] = metrics[key]  # the user's own count wins, as in Ray
        trial.last_result = result
        trial.history.append(result)
        trial.num_results += 1
        self.num_results += 1
        self._track_best(trial, result)
        dropped = []
        if checkpoint is not None:
            self.changes += 1
            trial.checkpoint = checkpoint
            trial.checkpoint_iteration = trial.iteration
            if trial.keeper is not None:
                dropped = [c for c in trial.keeper.add(trial.iteration, checkpoint, result) if c != checkpoint]
        self.searcher.on_trial_result(trial_id, result)
        decision = CONTINUE
        if self.stopper(trial_id, result):
            decision = STOP
        else:
            decision = self.scheduler.on_trial_result(self, trial, result)
            if decision not in (CONTINUE, STOP, PAUSE, TrialScheduler.NOOP):
                raise ValueError(f"{type(self.scheduler).__name__} decided {decision!r}")
            if decision == TrialScheduler.NOOP:
                decision = CONTINUE
        stopped = []
        if decision == STOP:
            self._terminate(trial)
        elif decision == PAUSE:
            trial.status = PAUSED
            self.changes += 1
        if self.stopper.stop_all():
            stopped = self.stop_all()
        return decision, dropped, stopped

    def on_checkpoint(self, trial_id: str, checkpoint) -> list:
        """A checkpoint saved after the trial's latest result (``checkpoint_at_end`` of a trial
        that was stopped); returns the checkpoints no longer kept, to delete."""
        trial = self.trial(trial_id)
        trial.checkpoint = checkpoint
        trial.checkpoint_iteration = trial.iteration
        if trial.keeper is None:
            return []
        return [c for c in trial.keeper.add(trial.iteration, checkpoint, trial.last_result) if c != checkpoint]

    def on_trial_end(self, trial_id: str) -> None:
        """The trainable returned (or a class trainable said done)."""
        trial = self.trial(trial_id)
        if trial.status == RUNNING:
            self._terminate(trial)

    def on_error(self, trial_id: str, error: BaseException | str) -> str:
        """The trial failed: RETRY (it is PENDING again, to restart from its latest checkpoint) or
        ERROR for good."""
        trial = self.trial(trial_id)
        trial.num_failures += 1
        self.changes += 1
        text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
        trial.error = text
        trial.error_type = error if isinstance(error, str) else type(error).__name__
        trial.error_object = None if isinstance(error, str) else error
        if (self.max_failures == -1 or trial.num_failures <= self.max_failures) and not self.stopping:
            trial.status = PENDING
            return RETRY
        trial.status = ERROR
        self.searcher.on_trial_complete(trial_id, result=trial.last_result or None, error=True)
        self.scheduler.on_trial_error(self, trial)
        return ERROR

    def stop_all(self) -> list:
        """End the experiment: no new trials; the running ones are TERMINATED (returned) and the
        waiting ones too."""
        self.stopping = True
        stopped = []
        for trial in self.trials:
            if trial.status in LIVE:
                if trial.status == RUNNING:
                    stopped.append(trial)
                self._terminate(trial)
        return stopped

    def _check_budget(self) -> list:
        left = self.budget_left()
        if left is not None and left <= 0 and not self.stopping:
            return self.stop_all()
        return []

    def on_budget(self) -> list:
        """The time budget may be spent: the trials it stops (to release)."""
        return self._check_budget()

    def _terminate(self, trial: Trial) -> None:
        trial.status = TERMINATED
        self.changes += 1
        if trial.last_result:
            trial.last_result["done"] = True
        self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result or None, error=False)
        self.scheduler.on_trial_complete(self, trial, trial.last_result or None)

    def _track_best(self, trial: Trial, result: dict) -> None:
        for key, value in leaves(result):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            best = trial.best.get(key)
            better = min if self.mode == "min" else max
            trial.best[key] = value if best is None else better(best, value)

    # ---- restore ---------------------------------------------------------------------------------

    def catch_up(self, trial: Trial, logged: list) -> None:
        """After a load: ``logged`` is the trial's result.json; the results in it past those the
        state file counted came between the last state write and the crash. The trial takes them
        (latest result, iteration, best values); the searcher and scheduler stay at the state
        file's view, which trails by at most a few seconds of results."""
        for result in logged[trial.num_results :]:
            trial.iteration += 1
            trial.time_total += float(result.get("time_this_iter_s") or 0.0)
            trial.last_result = result
            trial.num_results += 1
            self.num_results += 1
            self._track_best(trial, result)
        trial.history = list(logged)

    def prepare_restore(self, resume_unfinished: bool, resume_errored: bool, restart_errored: bool) -> None:
        """After a restore: unfinished trials go on from their latest checkpoints (or end, without
        ``resume_unfinished``); errored ones resume or restart from scratch when asked."""
        self.stopping = False
        self.changes += 1
        for trial in self.trials:
            if trial.status in (RUNNING, PAUSED, PENDING):
                if resume_unfinished:
                    trial.status = PENDING
                else:
                    trial.status = TERMINATED
            elif trial.status == ERROR and (resume_errored or restart_errored):
                trial.status = PENDING
                trial.num_failures = 0
                trial.error = trial.error_type = None
                if restart_errored:
                    trial.checkpoint, trial.checkpoint_iteration, trial.restore = None, 0, None
                    trial.history = []
                    trial.last_result = {}
                    trial.time_total = 0.0
        if not resume_unfinished:
            self.search_finished = True

    @property
    def done(self) -> bool:
        live = any(t.status in LIVE for t in self.trials)
        return not live and (self.search_finished or self.stopping)

    def counts(self) -> dict:
        out = {s: 0 for s in (PENDING, RUNNING, PAUSED, TERMINATED, ERROR)}
        for trial in self.trials:
            out[trial.status] += 1
        return out


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)
