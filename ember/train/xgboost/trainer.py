"""``XGBoostTrainer``, its backend (XGBoost's tracker and each worker's place in the collective)
and the report callback."""

import functools
import os
import tempfile

import xgboost

import ember
from ember.train import session
from ember.train.checkpoint import Checkpoint
from ember.train.trainer import Backend, DataParallelTrainer, label_column_config
from ember.train.worker_group import _takes_an_argument

MODEL_FILE = "model.ubj"
_local: dict = {}  # this worker's collective arguments and threads, set by the backend before the loop
_tracker: list = []  # rank 0 keeps the tracker alive here for as long as the worker lives


def _start_tracker(num_workers: int, address: str) -> dict:
    """In the rank-0 worker: start XGBoost's tracker and return the arguments workers join it with.

    The tracker lives in a worker rather than in the driver: its address is then one every worker
    can reach (as torch's rendezvous on rank 0), and it goes with the group when the group is
    killed; a tracker freed before its workers finished raises in the process that holds it."""
    from xgboost.tracker import RabitTracker

    # sortby="task": ranks in the collective follow dmlc_task_id, which is the train world rank.
    tracker = RabitTracker(n_workers=num_workers, host_ip=address, port=0, sortby="task")
    tracker.start()
    _tracker[:] = [tracker]
    return tracker.worker_args()


def _set_collective(args: dict, threads: int) -> None:
    _local.clear()
    _local.update(args=args, threads=threads)


def get_collective_args() -> dict:
    """The arguments this worker joined XGBoost's collective with (tracker address and port,
    ``dmlc_task_id``); the trainer already runs the loop inside the collective, so a loop only
    needs them to join again by itself."""
    session.current()  # a clear error outside a training loop
    return dict(_local.get("args", {}))


def _in_collective(train_fn, config):
    """The loop each worker runs: the user's, inside XGBoost's collective and with XGBoost's
    threads set to the CPUs reserved (XGBoost's global config is per thread, and the loop has its
    own thread)."""
    from xgboost import collective

    with xgboost.config_context(nthread=_local["threads"]), collective.CommunicatorContext(**_local["args"]):
        if config is None and not _takes_an_argument(train_fn):
            return train_fn()
        return train_fn(config if config is not None else {})


class _XGBoostBackend(Backend):
    def warm_modules(self, scaling) -> tuple:
        return ("xgboost", "pandas")

    def on_start(self, group, scaling) -> None:
        args = ember.get(group.workers[0].execute.remote(_start_tracker, len(group.workers), group.infos[0]["address"]))
        threads = max(1, int(scaling.worker_resources().get("CPU", 1)))
        ember.get(
            [
                worker.execute.remote(_set_collective, {**args, "dmlc_task_id": str(rank)}, threads)
                for rank, worker in enumerate(group.workers)
            ]
        )


class RayTrainReportCallback(xgboost.callback.TrainingCallback):
    """An ``xgboost.train`` callback: reports the latest evaluation results after every round,
    with a checkpoint of the model (saved by rank 0) every ``frequency`` rounds; with
    ``checkpoint_at_end``, a last report with the final model when the last round had none (XGBoost
    does not tell a callback which round is the last). ``metrics`` picks and renames results
    ("valid-rmse" names the rmse of the evals entry "valid", a dict maps new names to those)."""

    def __init__(self, metrics=None, filename: str = MODEL_FILE, frequency: int = 0, checkpoint_at_end: bool = True):
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 0:
            raise ValueError(f"frequency must be a non-negative int, got {frequency!r}.")
        super().__init__()
        self.metrics = [metrics] if isinstance(metrics, str) else metrics
        self.filename = filename
        self.frequency = frequency
        self.checkpoint_at_end = checkpoint_at_end
        self._last_results: dict = {}
        self._checkpointed_round = None

    @classmethod
    def get_model(cls, checkpoint: Checkpoint, filename: str = MODEL_FILE) -> xgboost.Booster:
        """The ``xgboost.Booster`` saved in ``checkpoint``."""
        booster = xgboost.Booster()
        with checkpoint.as_directory() as directory:
            booster.load_model(os.path.join(directory, filename))
        return booster

    def _results(self, evals_log) -> dict:
        found = {}
        for data, by_metric in (evals_log or {}).items():
            for name, values in by_metric.items():
                last = values[-1]
                found[f"{data}-{name}"] = float(last[0] if isinstance(last, tuple) else last)
        if self.metrics is None:
            return found
        if isinstance(self.metrics, dict):
            return {new: found[old] for new, old in self.metrics.items() if old in found}
        return {name: found[name] for name in self.metrics if name in found}

    def _report(self, results: dict, model, round_number: int, save: bool) -> None:
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if save and session.get_context().get_world_rank() == 0:
                model.save_model(os.path.join(directory, self.filename))
                checkpoint = Checkpoint.from_directory(directory)
            if save:
                self._checkpointed_round = round_number
            session.report(results, checkpoint=checkpoint)

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        self._last_results = self._results(evals_log)
        round_number = epoch + 1
        periodic = bool(self.frequency) and round_number % self.frequency == 0
        self._report(self._last_results, model, round_number, periodic)
        return False

    def after_training(self, model):
        if self.checkpoint_at_end and self._checkpointed_round != model.num_boosted_rounds():
            self._report(self._last_results, model, model.num_boosted_rounds(), True)
        return model


class XGBoostTrainer(DataParallelTrainer):
    """Runs ``train_loop_per_worker`` on workers joined in XGBoost's collective (the loop calls
    ``xgboost.train(params, dmatrix_of_its_shard, ...)`` and the workers train one model).

    Ray's earlier form also works: no loop, but ``label_column``, ``params`` and
    ``num_boost_round``; each worker then trains on its shard of ``datasets["train"]``, evaluates
    on every dataset, and reports each round with a checkpoint at the end. Resuming from a
    checkpoint trains the rounds that are missing.
    """

    _default_name = "XGBoostTrainer"

    def __init__(
        self,
        train_loop_per_worker=None,
        *,
        train_loop_config: dict | None = None,
        scaling_config=None,
        run_config=None,
        datasets: dict | None = None,
        dataset_config=None,
        resume_from_checkpoint=None,
        metadata: dict | None = None,
        label_column: str | None = None,
        params: dict | None = None,
        num_boost_round: int = 10,
    ):
        if train_loop_per_worker is None:
            train_loop_per_worker = _default_loop
            train_loop_config = label_column_config("XGBoostTrainer", label_column, datasets, params, num_boost_round)
        elif not callable(train_loop_per_worker):
            raise TypeError(f"train_loop_per_worker must be a function, got {type(train_loop_per_worker).__name__}.")
        super().__init__(
            functools.partial(_in_collective, train_loop_per_worker),
            train_loop_config=train_loop_config,
            backend=_XGBoostBackend(),
            scaling_config=scaling_config,
            run_config=run_config,
            datasets=datasets,
            dataset_config=dataset_config,
            resume_from_checkpoint=resume_from_checkpoint,
            metadata=metadata,
        )

    @classmethod
    def get_model(cls, checkpoint: Checkpoint) -> xgboost.Booster:
        return RayTrainReportCallback.get_model(checkpoint)


def _default_loop(config: dict) -> None:
    label = config["label_column"]
    evals = []
    for name in ["train"] + sorted(set(session.current().shards) - {"train"}):
        frame = session.get_dataset_shard(name).materialize().to_pandas()
        evals.append((xgboost.DMatrix(frame.drop(columns=[label]), label=frame[label]), name))
    start = session.get_checkpoint()
    init_model = RayTrainReportCallback.get_model(start) if start is not None else None
    done = init_model.num_boosted_rounds() if init_model is not None else 0
    xgboost.train(
        config["params"],
        evals[0][0],
        num_boost_round=max(0, config["num_boost_round"] - done),
        evals=evals,
        xgb_model=init_model,
        callbacks=[RayTrainReportCallback()],
    )
