"""What a trial runs: a function trainable (``fn(config)`` that calls ``tune.report``) or a class
deriving from ``Trainable`` (``setup``/``step``/``save_checkpoint``/``load_checkpoint``), wrapped by
``with_resources`` and ``with_parameters`` as in Ray.

Both kinds run inside a trial actor (``TrialActor``), which hands the driver one result per call:
a function's ``report`` blocks until the driver asks for the next result, so a scheduler's STOP or
PAUSE takes effect at the very next report, as in Ray.
"""

import copy
import inspect
import os
import pickle
import socket
import threading
import time

import ember
from ember.train import checkpoint as ckpt
from ember.train import session as train_session

DICT_CHECKPOINT = "_dict_checkpoint.pkl"


# ---- wrappers ---------------------------------------------------------------------------------------


class _FunctionTrainable:
    """A function trainable with Tune's attributes (resources, parameters); calls like the function."""

    def __init__(self, fn, resources=None, parameters=None):
        self.fn = fn
        self.resources = resources
        self.parameters = dict(parameters or {})  # name -> ObjectRef
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, config):
        values = {name: ember.get(ref) for name, ref in self.parameters.items()}
        if not values and not _takes_an_argument(self.fn):
            return self.fn()
        return self.fn(config, **values)


def _takes_an_argument(fn) -> bool:
    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return True


def _check_trainable(trainable) -> None:
    if isinstance(trainable, type):
        if not issubclass(trainable, Trainable):
            raise TypeError(f"A class trainable must derive from ember.tune.Trainable, got {trainable.__name__}.")
    elif not callable(trainable):
        raise TypeError(f"A trainable is a function or a Trainable class, got {type(trainable).__name__}.")


def normalize_resources(resources) -> dict:
    """Ray's resource dicts ({"cpu": 2, "gpu": 1, "custom": 1}) as Ember's ({"CPU": 2.0, ...})."""
    if not isinstance(resources, dict):
        raise TypeError(
            f"with_resources needs a dict of resources (or a function of the config returning one), "
            f"got {type(resources).__name__}."
        )
    out = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"with_resources: {name!r}: {amount!r} is not a resource name and amount.")
        if amount < 0:
            raise ValueError(f"with_resources: {name!r} must not be negative, got {amount}.")
        key = {"cpu": "CPU", "gpu": "GPU"}.get(name, name)
        out[key] = float(amount)
    return out


def with_resources(trainable, resources):
    """The trainable, with each trial's actor holding ``resources`` (a dict such as
    ``{"cpu": 2, "gpu": 1}``, or a function of the trial's config returning one)."""
    _check_trainable(trainable)
    if not callable(resources) or isinstance(resources, dict):
        normalize_resources(resources)
    if isinstance(trainable, type):
        return type(trainable.__name__, (trainable,), {"_tune_resources": resources})
    if isinstance(trainable, _FunctionTrainable):
        return _FunctionTrainable(trainable.fn, resources, trainable.parameters)
    return _FunctionTrainable(trainable, resources)


def with_parameters(trainable, **kwargs):
    """The trainable, called as ``trainable(config, **kwargs)`` (a class: ``setup(config, **kwargs)``),
    with each value put in the object store once, however many trials use it."""
    _check_trainable(trainable)
    if not ember.is_initialized():
        ember.init()
    refs = {name: ember.put(value) for name, value in kwargs.items()}
    if isinstance(trainable, type):
        merged = {**getattr(trainable, "_tune_parameters", {}), **refs}
        return type(trainable.__name__, (trainable,), {"_tune_parameters": merged})
    if isinstance(trainable, _FunctionTrainable):
        return _FunctionTrainable(trainable.fn, trainable.resources, {**trainable.parameters, **refs})
    return _FunctionTrainable(trainable, None, refs)


def resources_of(trainable, config: dict) -> dict:
    """The resources one trial's actor holds (1 CPU unless ``with_resources`` said otherwise)."""
    if isinstance(trainable, type):
        spec = getattr(trainable, "_tune_resources", None)
        if spec is None and hasattr(trainable, "default_resource_request"):
            spec = trainable.default_resource_request(config)
    else:
        spec = getattr(trainable, "resources", None)
    if spec is None:
        return {"CPU": 1.0}
    if callable(spec) and not isinstance(spec, dict):
        spec = spec(config)
    return normalize_resources(spec)


def trainable_name(trainable) -> str:
    if isinstance(trainable, type):
        return trainable.__name__
    name = getattr(trainable, "__name__", type(trainable).__name__)
    return "trainable" if name == "<lambda>" else name


# ---- the class API ----------------------------------------------------------------------------------


class Trainable:
    """Ray's class API: subclass and implement ``setup(config)``, ``step()`` (one iteration; returns
    a dict of metrics, ``done=True`` to end), ``save_checkpoint(checkpoint_dir)`` (write files there,
    or return a dict) and ``load_checkpoint(checkpoint)`` (the dict, or the directory's path).
    Usable on its own as well: ``t = MyTrainable(config); t.train()``."""

    def __init__(
        self,
        config: dict | None = None,
        *,
        trial_id: str = "default",
        trial_name: str = "default",
        logdir: str | None = None,
        **kwargs,
    ):
        self.config = copy.deepcopy(config or {})
        self._iteration = 0
        self._time_total = 0.0
        self._trial_id = trial_id
        self._trial_name = trial_name
        self._logdir = logdir
        parameters = {name: ember.get(ref) for name, ref in getattr(type(self), "_tune_parameters", {}).items()}
        self.setup(copy.deepcopy(self.config), **parameters, **kwargs)

    # -- to implement --
    def setup(self, config: dict, **kwargs) -> None:
        pass

    def step(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def save_checkpoint(self, checkpoint_dir: str):
        return None

    def load_checkpoint(self, checkpoint) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def reset_config(self, new_config: dict) -> bool:
        return False

    # -- Ray's driver-side API --
    @property
    def iteration(self) -> int:
        return self._iteration

    training_iteration = iteration

    @property
    def trial_id(self) -> str:
        return self._trial_id

    @property
    def trial_name(self) -> str:
        return self._trial_name

    @property
    def logdir(self):
        return self._logdir

    def train(self) -> dict:
        """Run one ``step`` and return its result with Tune's fields (training_iteration, times)."""
        started = time.perf_counter()
        result = self.step()
        if not isinstance(result, dict):
            raise TypeError(f"{type(self).__name__}.step() must return a dict of metrics, got {type(result).__name__}.")
        took = time.perf_counter() - started
        self._iteration += 1
        self._time_total += took
        out = dict(result)
        out.setdefault("training_iteration", self._iteration)
        out.setdefault("time_this_iter_s", took)
        out.setdefault("time_total_s", self._time_total)
        out.setdefault("done", False)
        return out

    def save(self, checkpoint_dir: str | None = None) -> ckpt.Checkpoint:
        """Save into ``checkpoint_dir`` (a new temporary directory by default); returns the Checkpoint."""
        import tempfile

        directory = checkpoint_dir or tempfile.mkdtemp(prefix="ember-trainable-")
        os.makedirs(directory, exist_ok=True)
        returned = self.save_checkpoint(directory)
        if returned is not None:
            if not isinstance(returned, dict):
                raise TypeError(f"save_checkpoint must return None or a dict, got {type(returned).__name__}.")
            with open(os.path.join(directory, DICT_CHECKPOINT), "wb") as out:
                pickle.dump(returned, out)
        return ckpt.Checkpoint(directory)

    def restore(self, checkpoint) -> None:
        """Load ``checkpoint`` (a Checkpoint or a directory path) with ``load_checkpoint``."""
        if not isinstance(checkpoint, ckpt.Checkpoint):
            checkpoint = ckpt.Checkpoint(checkpoint)
        with checkpoint.as_directory() as directory:
            saved = os.path.join(directory, DICT_CHECKPOINT)
            if os.path.exists(saved):
                with open(saved, "rb") as source:
                    self.load_checkpoint(pickle.load(source))
            else:
                self.load_checkpoint(directory)

    def stop(self) -> None:
        self.cleanup()


# ---- the session and context inside a trial ---------------------------------------------------------


class TuneContext(train_session.TrainContext):
    """``tune.get_context()``: the trial's id, name and directory (and Train's getters, as one worker)."""

    def __init__(self, experiment_name: str, trial_id: str, trial_name: str, trial_dir: str, resources: dict):
        place = train_session.WorkerPlace(0, 1, 0, 1, 0)
        super().__init__(place, experiment_name, trial_dir)
        self._trial_id = trial_id
        self._trial_name = trial_name
        self._resources = dict(resources)

    def get_trial_id(self) -> str:
        return self._trial_id

    def get_trial_name(self) -> str:
        return self._trial_name

    def get_trial_resources(self) -> dict:
        return dict(self._resources)

    def __repr__(self):
        return f"TuneContext(trial_id={self._trial_id!r}, trial_dir={self._trial_dir!r})"


class TuneSession(train_session.Session):
    """Train's session with one difference: ``report`` waits until the driver asks for the next
    result. ``tune.report`` and ``ember.train.report`` both reach it."""

    def __init__(self, context: TuneContext, iteration: int, checkpoint, filesystem):
        super().__init__(context, iteration, checkpoint, {}, filesystem)
        self.resume = threading.Semaphore(0)
        self.last = time.perf_counter()

    stopped = False

    def report(self, metrics, checkpoint=None, checkpoint_dir_name=None):
        super().report(metrics, checkpoint, checkpoint_dir_name)
        self.resume.acquire()
        if self.stopped:
            raise _TrialStopped()  # the actor goes on with another trial: unwind this one's function
        self.last = time.perf_counter()


class _TrialStopped(BaseException):
    """Ends a stopped trial's function inside a reused actor (BaseException: user code's
    ``except Exception`` must not swallow it)."""


# ---- the trial actor --------------------------------------------------------------------------------


class TrialActor:
    """Runs one trial: ``start`` sets the trainable up and returns its first result; each ``next``
    returns one more. A result is ("result", metrics, checkpoint, time_this_iter_s, ends) or
    ("done",) when a function trainable returned."""

    def start(
        self,
        trainable,
        config,
        context: TuneContext,
        checkpoint,
        iteration,
        filesystem,
        checkpoint_frequency,
        checkpoint_at_end,
    ):
        self._stop_previous()
        self.context = context
        self.filesystem = filesystem
        self.frequency = checkpoint_frequency
        self.at_end = checkpoint_at_end
        self.info = {"pid": os.getpid(), "hostname": socket.gethostname(), "node_ip": _node_ip()}
        if isinstance(trainable, type):
            self.kind = "class"
            self.trainable = trainable(
                config,
                trial_id=context.get_trial_id(),
                trial_name=context.get_trial_name(),
                logdir=context.get_trial_dir(),
            )
            self.trainable._iteration = iteration
            if checkpoint is not None:
                self.trainable.restore(checkpoint)
            return self.next()
        self.kind = "function"
        self.session = TuneSession(context, iteration, checkpoint, filesystem)
        self.thread = threading.Thread(
            target=self._loop, args=(trainable, config), name="ember-tune-trial", daemon=True
        )
        train_session.start(self.session)
        self.thread.start()
        return self._take()

    def stop(self) -> None:
        """End the current trial here (a class trainable's ``stop()``/``cleanup()``) before the
        driver kills this actor."""
        self._stop_previous()

    def _stop_previous(self) -> None:
        """A reused actor: end what the previous trial left (a function blocked in report)."""
        session = getattr(self, "session", None)
        if session is not None:
            session.stopped = True
            session.resume.release()
            self.thread.join(timeout=10)
            self.session = None
        trainable = getattr(self, "trainable", None)
        if trainable is not None:
            trainable.stop()
            self.trainable = None

    def _loop(self, trainable, config) -> None:
        events = self.session.events
        try:
            if isinstance(trainable, _FunctionTrainable):
                trainable(config)
            elif _takes_an_argument(trainable):
                trainable(config)
            else:
                trainable()
            events.put((train_session.DONE, None))
        except BaseException as error:  # noqa: BLE001 - the driver decides what a failure means
            events.put((train_session.DONE, error))

    def _take(self):
        event = self.session.events.get()
        if event[0] == train_session.DONE:
            if event[1] is not None:
                raise event[1]
            return ("done",)
        _, _, _, metrics, checkpoint = event
        took = time.perf_counter() - self.session.last
        return ("result", metrics, checkpoint, took, False, self.info)

    def next(self):
        if self.kind == "function":
            self.session.resume.release()
            return self._take()
        result = self.trainable.train()
        took = result.pop("time_this_iter_s")
        result.pop("time_total_s", None)
        ends = bool(result.pop("done", False))
        iteration = result.pop("training_iteration")
        checkpoint = None
        if (self.frequency and iteration % self.frequency == 0) or (ends and self.at_end):
            checkpoint = self._save(iteration)
        return ("result", result, checkpoint, took, ends, self.info)

    def save(self):
        """Save a class trainable now (at its end, for ``checkpoint_at_end``)."""
        return self._save(self.trainable.iteration) if self.kind == "class" else None

    def _save(self, iteration: int):
        target = _join(self.context.get_trial_dir(), f"checkpoint_{iteration:06d}")
        if self.filesystem is None:
            self.trainable.save(target)
        else:
            local = self.trainable.save()
            ckpt.upload(local.path, self.filesystem, target)
            ckpt.delete(None, local.path)
        return ckpt.Checkpoint(target, self.filesystem)


def _node_ip() -> str:
    try:
        node_id = ember.get_runtime_context().get_node_id()
        return next((n["NodeManagerAddress"] for n in ember.nodes() if n["NodeID"] == node_id), "127.0.0.1")
    except Exception:
        return "127.0.0.1"


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)
