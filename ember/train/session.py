"""The train session inside each worker: what ``report``, ``get_context``, ``get_checkpoint`` and
``get_dataset_shard`` talk to. One per worker process, set up by the worker actor before it starts
the training loop (in a thread of its own) and cleared when the loop ends."""

import os
import queue
import threading
from dataclasses import dataclass

from ember.train import checkpoint as ckpt

_session = None
_lock = threading.Lock()

# What the worker actor's event stream carries besides reports.
DONE = "done"


@dataclass
class WorkerPlace:
    """Where a worker sits in the group; decided by the driver once every worker is placed."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    node_id: str = ""


class TrainContext:
    """What a worker knows of the run (``ember.train.get_context()``), with Ray's getters."""

    def __init__(self, place: WorkerPlace, experiment_name: str, trial_dir: str, metadata: dict | None = None):
        self._place = place
        self._experiment_name = experiment_name
        self._trial_dir = trial_dir
        self._metadata = dict(metadata or {})

    def get_world_size(self) -> int:
        return self._place.world_size

    def get_world_rank(self) -> int:
        return self._place.world_rank

    def get_local_rank(self) -> int:
        return self._place.local_rank

    def get_local_world_size(self) -> int:
        return self._place.local_world_size

    def get_node_rank(self) -> int:
        return self._place.node_rank

    def get_experiment_name(self) -> str:
        return self._experiment_name

    def get_trial_name(self) -> str:
        return self._experiment_name

    def get_trial_id(self) -> str:
        return self._experiment_name

    def get_trial_dir(self) -> str:
        return self._trial_dir

    def get_storage(self) -> str:
        return self._trial_dir

    def get_metadata(self) -> dict:
        return dict(self._metadata)

    def __repr__(self):
        p = self._place
        return f"TrainContext(world_rank={p.world_rank}, world_size={p.world_size}, local_rank={p.local_rank})"


class Session:
    """One worker's session: its context, the checkpoint it starts from, its dataset shards, and
    the queue its reports go to (the worker actor streams them to the driver)."""

    def __init__(self, context: TrainContext, start_index: int, checkpoint, shards: dict, filesystem=None):
        self.context = context
        self.index = start_index
        self.checkpoint = checkpoint
        self.shards = shards
        self.filesystem = filesystem
        self.events: queue.Queue = queue.Queue()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["events"]  # each worker's session gets its own queue where it is unpickled
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.events = queue.Queue()

    def report(self, metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None) -> None:
        if not isinstance(metrics, dict):
            raise TypeError(f"ember.train.report expects a dict of metrics, got {type(metrics).__name__}.")
        for key in metrics:
            if not isinstance(key, str):
                raise TypeError(f"metric names must be strings, got {key!r}.")
        if checkpoint is not None and not isinstance(checkpoint, ckpt.Checkpoint):
            raise TypeError(f"checkpoint must be an ember.train.Checkpoint, got {type(checkpoint).__name__}.")
        persisted = None
        if checkpoint is not None:
            name = checkpoint_dir_name or f"checkpoint_{self.index:06d}"
            target = _join(self.context.get_trial_dir(), name)
            # Persist before returning: the loop may delete its directory (a TemporaryDirectory) at once.
            with checkpoint.as_directory() as local:
                ckpt.upload(local, self.filesystem, target)
            persisted = ckpt.Checkpoint(target, self.filesystem)
        self.events.put(("report", self.context.get_world_rank(), self.index, dict(metrics), persisted))
        self.index += 1


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


def start(session: Session) -> None:
    global _session
    with _lock:
        _session = session


def stop() -> None:
    global _session
    with _lock:
        _session = None


def current() -> Session:
    session = _session
    if session is None:
        raise RuntimeError(
            "There is no train session here (nor a Tune trial): ember.train.report/get_context/get_checkpoint/"
            "get_dataset_shard work inside the train_loop_per_worker that a Trainer runs, and tune.report/"
            "get_checkpoint/get_context inside a trainable that a Tuner runs."
        )
    return session


# ---- the public functions -----------------------------------------------------------------------


def report(metrics: dict, *, checkpoint=None, checkpoint_dir_name: str | None = None) -> None:
    """Report ``metrics`` (a dict) from this worker, with an optional ``Checkpoint``: every worker
    reports the same number of times, and the i-th reports of all workers make one result (rank 0's
    metrics). The checkpoint's files are persisted to the run's storage before this returns."""
    current().report(metrics, checkpoint, checkpoint_dir_name)


def get_context() -> TrainContext:
    """The running worker's ``TrainContext`` (world size and rank, local rank, node rank, names)."""
    return current().context


def get_checkpoint():
    """The checkpoint to resume from: the latest one reported before a restart, or the trainer's
    ``resume_from_checkpoint``; None on a fresh start."""
    return current().checkpoint


def get_dataset_shard(dataset_name: str | None = None):
    """This worker's part of the trainer's dataset ``dataset_name``: a ``DataIterator``
    (``iter_batches``, ``iter_torch_batches``, ``iter_rows``), one of a streaming split whose parts
    are disjoint (or over the whole dataset for one the ``DataConfig`` does not split). Each pass is
    an epoch; the workers' passes run together."""
    shards = current().shards
    if dataset_name is None:
        if len(shards) != 1:
            raise ValueError(f"get_dataset_shard needs a dataset name: the trainer has {sorted(shards)}.")
        return next(iter(shards.values()))
    if dataset_name not in shards:
        raise KeyError(f"No dataset named {dataset_name!r} was given to the trainer (it has {sorted(shards)}).")
    return shards[dataset_name]
