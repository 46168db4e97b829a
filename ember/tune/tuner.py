"""``Tuner``: runs an experiment. ``fit()`` is the controller loop in the driver: it asks the plain
``Experiment`` (experiment.py) which trials to start, starts each as an actor, waits on the trials'
pending results with ``ember.wait`` (results are pushed; nothing polls), feeds every result, end and
failure to the ``Experiment`` and carries out its decisions (continue, stop or pause the trial,
release its actor). The experiment state is written after every change, so ``Tuner.restore``
resumes a crashed or interrupted experiment with its finished trials kept.
"""

import datetime
import os
import sys

import cloudpickle

import ember
from ember.actor import kill_nowait
from ember.exceptions import TaskError
from ember.train import checkpoint as ckpt
from ember.train.result import Result
from ember.train.worker_group import check_fits
from ember.tune import experiment as exp_mod
from ember.tune import progress, storage
from ember.tune.config import RunConfig, TuneConfig
from ember.tune.experiment import CONTINUE, PAUSE, STOP, Experiment
from ember.tune.result_grid import ResultGrid, TuneError
from ember.tune.schedulers.base import FIFOScheduler, TrialScheduler
from ember.tune.search import sample
from ember.tune.search.searcher import BasicVariantGenerator, Searcher
from ember.tune.stopper import make_stopper
from ember.tune.trainable import TrialActor, TuneContext, _check_trainable, resources_of, trainable_name


class Tuner:
    """Tunes ``trainable`` (a function calling ``tune.report``, a ``Trainable`` class, a Train
    trainer, an RLlib Algorithm class, or a registered name such as "PPO") over ``param_space`` (a
    nested dict of values, search-space domains and ``grid_search``es, or an ``AlgorithmConfig``
    whose builder values hold them)."""

    def __init__(
        self,
        trainable=None,
        *,
        param_space: dict | None = None,
        tune_config: TuneConfig | None = None,
        run_config: RunConfig | None = None,
        _restored: dict | None = None,
    ):
        from ember.tune import algorithm_trainable, trainer_trainable
        from ember.tune.registry import get_trainable_cls

        if algorithm_trainable.is_algorithm_config(param_space):
            param_space = param_space.to_dict()  # as Ray: the builder's values, search spaces and all
        if param_space is not None and not isinstance(param_space, dict):
            raise TypeError(f"param_space must be a dict or an AlgorithmConfig, got {type(param_space).__name__}.")
        if isinstance(trainable, str):
            trainable = get_trainable_cls(trainable)
        if trainer_trainable.is_trainer(trainable):
            trainable = trainer_trainable.as_trainable(trainable)
        if algorithm_trainable.is_algorithm_class(trainable):
            trainable = algorithm_trainable.as_trainable(trainable, param_space)
        _check_trainable(trainable)
        self.tune_config = tune_config or TuneConfig()
        if not isinstance(self.tune_config, TuneConfig):
            raise TypeError(f"tune_config must be a TuneConfig, got {type(tune_config).__name__}.")
        from ember.train.config import RunConfig as TrainRunConfig

        self.run_config = run_config or RunConfig()
        if not isinstance(self.run_config, TrainRunConfig):
            raise TypeError(f"run_config must be a RunConfig, got {type(run_config).__name__}.")
        self.trainable = trainable
        self.param_space = param_space or {}
        try:
            self._blob = cloudpickle.dumps(trainable)
        except Exception as error:
            raise TypeError(f"The trainable cannot be serialized to send to the trials: {error}") from error
        self._restored = _restored
        self._experiment = None
        self._path = None
        self._results = None
        self._progress = None  # the display of the latest fit()

    # ---- restore -----------------------------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        path: str,
        trainable,
        *,
        resume_unfinished: bool = True,
        resume_errored: bool = False,
        restart_errored: bool = False,
        param_space: dict | None = None,
        storage_filesystem=None,
    ) -> "Tuner":
        """A Tuner that goes on with the experiment at ``path``: finished trials are kept,
        unfinished ones resume from their latest checkpoints (``resume_unfinished``), errored ones
        resume (``resume_errored``) or start over (``restart_errored``); the search goes on."""
        filesystem, where = ckpt.resolve(path, storage_filesystem)
        state = storage.load_state(filesystem, where)
        experiment = state["experiment"]
        experiment.prepare_restore(resume_unfinished, resume_errored, restart_errored)
        for trial in experiment.trials:
            if not trial.history:
                trial.history = storage.read_results(trial.path)
        tuner = cls(
            trainable,
            param_space=param_space if param_space is not None else state["param_space"],
            tune_config=state["tune_config"],
            run_config=state["run_config"],
            _restored={"experiment": experiment, "filesystem": filesystem, "path": where},
        )
        return tuner

    @classmethod
    def can_restore(cls, path: str, storage_filesystem=None) -> bool:
        """Whether ``path`` holds an experiment that ``Tuner.restore`` can resume."""
        filesystem, where = ckpt.resolve(path, storage_filesystem)
        return storage.exists(filesystem, where)

    # ---- fit ---------------------------------------------------------------------------------------

    def fit(self) -> ResultGrid:
        """Run the experiment to its end; returns a ``ResultGrid``. A failing trial does not stop the
        others (its error is in the grid). A KeyboardInterrupt stops every trial, releases their
        actors and leaves the experiment restorable (``Tuner.restore``), then propagates."""
        if not ember.is_initialized():
            ember.init()
        experiment, filesystem, path = self._prepare()
        self._experiment, self._path = experiment, path
        run = _Run(self, experiment, storage.ExperimentStorage(filesystem, path), filesystem)
        self._progress = run.display
        self._results = run.go()
        return self._results

    def get_results(self) -> ResultGrid:
        if self._results is None:
            raise RuntimeError("get_results: fit() has not been run (or was interrupted); run fit() first.")
        return self._results

    def _prepare(self) -> tuple:
        tc, run = self.tune_config, self.run_config
        if self._restored is not None:
            return self._restored["experiment"], self._restored["filesystem"], self._restored["path"]
        name = run.name or f"{trainable_name(self.trainable)}_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
        filesystem, root = ckpt.resolve(run.resolved_storage(), run.storage_filesystem)
        path = storage.join(root, name)
        searcher = tc.search_alg if tc.search_alg is not None else BasicVariantGenerator()
        if not isinstance(searcher, Searcher):
            raise TypeError(f"TuneConfig.search_alg must be a Searcher, got {type(searcher).__name__}.")
        if (
            not isinstance(searcher, BasicVariantGenerator)
            and not _is_basic(searcher)
            and sample.grid_axes(self.param_space)
        ):
            raise ValueError(
                f"{type(searcher).__name__} cannot search a grid_search; use the default search (no search_alg) "
                "or a choice() instead."
            )
        scheduler = tc.scheduler if tc.scheduler is not None else FIFOScheduler()
        if not isinstance(scheduler, TrialScheduler):
            raise TypeError(f"TuneConfig.scheduler must be a TrialScheduler, got {type(scheduler).__name__}.")
        searcher.set_search_properties(tc.metric, tc.mode, self.param_space, num_samples=tc.num_samples)
        scheduler.set_search_properties(tc.metric, tc.mode)
        resources = resources_of(self.trainable, {}) if not callable(_resource_spec(self.trainable)) else {"CPU": 1.0}
        check_fits([resources], "PACK", ember.nodes())
        if getattr(self.trainable, "_algorithm_class", None) is not None:
            from ember.tune.algorithm_trainable import check_fits_cluster

            check_fits_cluster(self.trainable.capacity_resources, ember.cluster_resources(), self.trainable.__name__)
        # A trainer's trial actor holds nothing: its worker group's resources bound the concurrency.
        concurrency = tc.max_concurrent_trials or _capacity(getattr(self.trainable, "capacity_resources", resources))
        checkpoint_config = run.checkpoint_config
        experiment = Experiment(
            searcher,
            scheduler,
            make_stopper(run.stop),
            path=path,
            trainable_name=trainable_name(self.trainable),
            metric=tc.metric,
            mode=tc.mode,
            num_samples=tc.num_samples,
            max_concurrent=concurrency,
            max_failures=run.failure_config.max_failures,
            time_budget_s=tc.time_budget_s,
            checkpoint_config=checkpoint_config,
            name_creator=tc.trial_name_creator,
        )
        return experiment, filesystem, path

    def _state(self) -> dict:
        return {
            "experiment": self._experiment,
            "param_space": self.param_space,
            "tune_config": self.tune_config,
            "run_config": self.run_config,
        }


def _is_basic(searcher) -> bool:
    inner = getattr(searcher, "searcher", None)
    return isinstance(inner, BasicVariantGenerator)


def _resource_spec(trainable):
    return (
        getattr(trainable, "_tune_resources", None)
        if isinstance(trainable, type)
        else getattr(trainable, "resources", None)
    )


def _capacity(resources: dict) -> int:
    """How many trials of ``resources`` the cluster holds at once (at least 1)."""
    total = ember.cluster_resources()
    counts = [int(total.get(name, 0) // amount) for name, amount in resources.items() if amount > 0]
    return max(min(counts) if counts else 1, 1)


class _Run:
    """One ``fit()``: the actors, the pending result of each running trial, and the display."""

    def __init__(self, tuner: Tuner, experiment: Experiment, store: storage.ExperimentStorage, filesystem):
        self.tuner = tuner
        self.experiment = experiment
        self.store = store
        self.filesystem = filesystem
        self.actors: dict = {}  # trial_id -> actor
        self.pending: dict = {}  # ref -> trial_id
        self.trainable_ref = None
        tc = tuner.tune_config
        name = os.path.basename(experiment.path.rstrip("/"))
        self.name = name
        self.display = progress.reporter(name, experiment.metric, experiment.mode, tuner.run_config.verbose)
        if getattr(tuner.trainable, "_algorithm_class", None) is not None:
            from ember.tune import algorithm_progress

            # The trials' learning curves beside Tune's table (in a notebook; nothing elsewhere).
            self.display = algorithm_progress.wrap(self.display, name, tuner.param_space, tuner.run_config.verbose)
        self.checkpoint_config = tuner.run_config.checkpoint_config
        self.at_end = bool(getattr(self.checkpoint_config, "checkpoint_at_end", False))
        self.reuse = tc.reuse_actors
        self.idle: dict = {}  # resources key -> [actor] kept for reuse
        self.cleans_up = _cleans_up(tuner.trainable)
        # One actor class for the whole run: its pickled form is made and exported once, not per trial.
        self.actor_class = ember.remote(TrialActor)

    def go(self) -> ResultGrid:
        experiment = self.experiment
        experiment.begin()
        self.trainable_ref = ember.put(self.tuner.trainable)
        try:
            for trial in experiment.trials:
                self.display.trial(trial)
            while True:
                for trial in experiment.to_start():
                    self._launch(trial)
                self._save()
                if experiment.done:
                    break
                if not self.pending:
                    raise RuntimeError("ember.tune: no trial is running and none can start; the experiment is stuck.")
                ready, _ = ember.wait(list(self.pending), num_returns=1, timeout=experiment.budget_left())
                if not ready:
                    for trial in experiment.on_budget():
                        self._release(trial.trial_id)
                        self.display.trial(trial)
                    continue
                self._handle(ready[0])
                # Results that are in already are handled before the state is saved once for all.
                while self.pending:
                    more, _ = ember.wait(list(self.pending), num_returns=1, timeout=0)
                    if not more:
                        break
                    self._handle(more[0])
        except KeyboardInterrupt:
            self._release_all()
            experiment.elapsed_before = experiment.elapsed()
            experiment.started = None
            self._save()
            self.store.close()
            self.display.finish(interrupted=True, path=experiment.path)
            print(
                f"{progress.PREFIX}interrupted; every trial's actor is released. Resume with "
                f"Tuner.restore({experiment.path!r}, trainable).",
                file=sys.stderr,
            )
            raise
        except BaseException as error:
            self._release_all()
            self._save()
            self.store.close()
            self.display.finish(error=error)
            raise
        self._release_all()
        experiment.elapsed_before = experiment.elapsed()
        experiment.started = None
        self._save()
        self.store.close()
        self.display.finish()
        return self._grid()

    # ---- actors ------------------------------------------------------------------------------------

    def _launch(self, trial) -> None:
        checkpoint, iteration = trial.start_point()
        if checkpoint is not None and not _inside(checkpoint.path, trial.path):
            # A PBT exploit: the trial gets its own copy of the donor's checkpoint.
            target = storage.join(trial.path, f"checkpoint_exploit_{iteration:06d}")
            ckpt.makedirs(checkpoint.filesystem, trial.path)
            checkpoint = storage.copy_checkpoint(checkpoint, target)
            trial.checkpoint, trial.checkpoint_iteration = checkpoint, iteration
        resources = resources_of(self.tuner.trainable, trial.config)
        key = tuple(sorted(resources.items()))
        actor = self.idle.get(key, []).pop() if self.idle.get(key) else None
        if actor is None:
            options = {"num_cpus": resources.get("CPU", 0), "num_gpus": resources.get("GPU", 0), "max_restarts": 0}
            extra = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
            if extra:
                options["resources"] = extra
            actor = self.actor_class.options(**options).remote()
        self.actors[trial.trial_id] = (actor, key)
        context = TuneContext(self.name, trial.trial_id, trial.name, trial.path, resources)
        config = self.checkpoint_config
        frequency = getattr(config, "checkpoint_frequency", 0)
        at_end = bool(getattr(config, "checkpoint_at_end", False))
        ref = actor.start.remote(
            self.trainable_ref, trial.config, context, checkpoint, iteration, self.filesystem, frequency, at_end
        )
        self.pending[ref] = trial.trial_id
        self.display.trial(trial)

    def _release(self, trial_id: str, reusable: bool = False) -> None:
        for ref in [r for r, t in self.pending.items() if t == trial_id]:
            del self.pending[ref]
        entry = self.actors.pop(trial_id, None)
        if entry is None:
            return
        actor, key = entry
        if reusable and self.reuse:
            self.idle.setdefault(key, []).append(actor)
            return
        if self.cleans_up:
            _stop(actor)
        _kill(actor)

    def _release_all(self) -> None:
        for trial_id in list(self.actors):
            self._release(trial_id)
        for actors in self.idle.values():
            for actor in actors:
                if self.cleans_up:
                    _stop(actor)  # a kept actor still holds its last trial's trainable
                _kill(actor)
        self.idle.clear()
        self.pending.clear()

    # ---- events ------------------------------------------------------------------------------------

    def _handle(self, ref) -> None:
        experiment = self.experiment
        trial_id = self.pending.pop(ref)
        trial = experiment.trial(trial_id)
        try:
            out = ember.get(ref)
        except Exception as error:  # the trainable raised (TaskError) or its actor died
            self._release(trial_id)
            text = str(error) if isinstance(error, TaskError) else f"{type(error).__name__}: {error}"
            experiment.on_error(trial_id, error if not isinstance(error, TaskError) else text)
            if isinstance(error, TaskError):
                trial.error_object = error
                trial.error_type = type(error.cause).__name__ if error.cause is not None else "TaskError"
            self.display.trial(trial)
            return
        if out[0] == "done":
            experiment.on_trial_end(trial_id)
            self._release(trial_id, reusable=True)
            self.display.trial(trial)
            return
        _, metrics, checkpoint, took, ends, info = out
        decision, dropped, stopped = experiment.on_result(trial_id, metrics, checkpoint, took, info)
        if decision == STOP and checkpoint is None and self.at_end:
            # Stopped by a criterion or the scheduler: Ray's checkpoint_at_end still saves the trial's end.
            saved = ember.get(self.actors[trial_id][0].save.remote())
            if saved is not None:
                dropped += experiment.on_checkpoint(trial_id, saved)
        for old in dropped:
            ckpt.delete(old.filesystem, old.path)
        self.store.append_result(trial.path, trial.last_result)
        self.display.result(trial, trial.last_result)
        if decision == CONTINUE and not ends:
            actor, _ = self.actors[trial_id]
            self.pending[actor.next.remote()] = trial_id
        elif decision == CONTINUE:
            experiment.on_trial_end(trial_id)
            self._release(trial_id, reusable=True)
        else:
            self._release(trial_id, reusable=decision == STOP)
            self.display.trial(trial)
        for other in stopped:
            self._release(other.trial_id)
            self.display.trial(other)
        if decision == PAUSE:
            pass  # started again by to_start(), from its latest checkpoint (or an exploit's)

    def _save(self) -> None:
        self.store.save_state(self.tuner._state())

    def _grid(self) -> ResultGrid:
        experiment = self.experiment
        results = []
        for trial in experiment.trials:
            error = None
            if trial.status == exp_mod.ERROR:
                error = trial.error_object or TuneError(trial.error or "the trial failed")
            results.append(
                Result(
                    metrics=trial.last_result or {},
                    checkpoint=trial.checkpoint,
                    error=error,
                    path=trial.path,
                    best_checkpoints=trial.keeper.best() if trial.keeper is not None else [],
                    metrics_history=list(trial.history),
                    filesystem=self.filesystem,
                )
            )
        return ResultGrid(
            results, experiment.path, experiment.metric, experiment.mode, [t.status for t in experiment.trials]
        )


def _inside(path: str, directory: str) -> bool:
    return path.rstrip("/").startswith(directory.rstrip("/") + "/")


def _cleans_up(trainable) -> bool:
    """Whether a class trainable has its own ``cleanup``/``stop``, which Ray runs as a trial ends
    (an algorithm's stops its env runner actors)."""
    from ember.tune.trainable import Trainable

    return isinstance(trainable, type) and (
        trainable.cleanup is not Trainable.cleanup or trainable.stop is not Trainable.stop
    )


def _stop(actor) -> None:
    """Run the trial's ``Trainable.stop()`` in its actor before the actor is killed. An actor that
    is gone already (its trial crashed it) has nothing left to clean up."""
    try:
        ember.get(actor.stop.remote(), timeout=STOP_TIMEOUT_S)
    except Exception as error:
        print(f"ember.tune: a trial's stop() did not complete: {type(error).__name__}: {error}", file=sys.stderr)


STOP_TIMEOUT_S = 60.0


def _kill(actor) -> None:
    """End a trial's actor. Tune never calls it again, so nothing waits for the head's answer:
    the next trial's actor is created at once, and the head, which reads both in order, has freed
    this one's CPU by then."""
    try:
        kill_nowait(actor)
    except Exception as error:  # the driver's connection is gone: the job's end takes the actor
        print(f"ember.tune: could not kill a trial actor: {error}", file=sys.stderr)
