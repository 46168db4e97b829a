"""``DataParallelTrainer``: runs ``train_loop_per_worker`` on a worker group and drives the run.

``fit()`` is the controller: it starts the group, lets the backend (torch.distributed, LightGBM's
network) join the workers, then waits on the workers' report streams (``ember.wait`` over the
streaming generators: reports are pushed, nothing polls) and feeds each event to ``FitState``,
which decides what is a result, which checkpoints stay and whether a failed attempt restarts.
"""

import datetime
import os
import time
import warnings

import cloudpickle

import ember
from ember.train import checkpoint as ckpt
from ember.train import progress, session
from ember.train.config import DataConfig, RunConfig, ScalingConfig
from ember.train.result import Result
from ember.train.state import FAIL, FitState, ReportWatch
from ember.train.worker_group import WorkerGroup

# A loop silent for this long gets one warning naming its ranks (EMBER_TRAIN_REPORT_WARNING_S; 0 never).
REPORT_WARNING_S = 600.0


def _report_warning_s() -> float | None:
    raw = os.environ.get("EMBER_TRAIN_REPORT_WARNING_S")
    try:
        value = float(raw) if raw is not None else REPORT_WARNING_S
    except ValueError:
        raise ValueError(f"EMBER_TRAIN_REPORT_WARNING_S must be a number of seconds, got {raw!r}.") from None
    return value if value > 0 else None


class Backend:
    """Hooks for a framework's process group: ``on_start`` once the workers are placed (before
    the loop), ``on_shutdown`` before they are killed."""

    def on_start(self, group: WorkerGroup, scaling: ScalingConfig) -> None:
        pass

    def on_shutdown(self, group: WorkerGroup) -> None:
        pass

    def warm_modules(self, scaling: ScalingConfig) -> tuple:
        """Modules each worker starts importing as soon as it exists, before ``on_start``."""
        return ()


class DataParallelTrainer:
    """Runs ``train_loop_per_worker(config)`` on ``scaling_config.num_workers`` workers.

    ``datasets`` (name -> Dataset) are split between the workers (``get_dataset_shard`` in the
    loop); ``resume_from_checkpoint`` is what ``get_checkpoint()`` returns on the first attempt.
    """

    _default_name = "DataParallelTrainer"

    def __init__(
        self,
        train_loop_per_worker,
        *,
        train_loop_config: dict | None = None,
        backend=None,
        scaling_config: ScalingConfig | None = None,
        run_config: RunConfig | None = None,
        datasets: dict | None = None,
        dataset_config: DataConfig | None = None,
        resume_from_checkpoint=None,
        metadata: dict | None = None,
    ):
        if not callable(train_loop_per_worker):
            raise TypeError(f"train_loop_per_worker must be a function, got {type(train_loop_per_worker).__name__}.")
        if train_loop_config is not None and not isinstance(train_loop_config, dict):
            raise TypeError(f"train_loop_config must be a dict, got {type(train_loop_config).__name__}.")
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.dataset_config = dataset_config or DataConfig()
        for value, kind, name in (
            (self.scaling_config, ScalingConfig, "scaling_config"),
            (self.run_config, RunConfig, "run_config"),
            (self.dataset_config, DataConfig, "dataset_config"),
        ):
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}.")
        if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint, ckpt.Checkpoint):
            raise TypeError("resume_from_checkpoint must be an ember.train.Checkpoint.")
        self.datasets = dict(datasets or {})
        for name, dataset in self.datasets.items():
            if not hasattr(dataset, "streaming_split"):
                raise TypeError(f"datasets[{name!r}] must be an ember.data Dataset, got {type(dataset).__name__}.")
        self.train_loop_per_worker = train_loop_per_worker
        self.train_loop_config = train_loop_config
        self.backend = backend or Backend()
        self.resume_from_checkpoint = resume_from_checkpoint
        self.metadata = metadata
        # Fail here, not in a worker minutes later, when the loop or its config cannot be shipped.
        for what, value in (("train_loop_per_worker", train_loop_per_worker), ("train_loop_config", train_loop_config)):
            try:
                cloudpickle.dumps(value)
            except Exception as error:
                raise TypeError(f"{what} cannot be serialized to send to the workers: {error}") from error

    def fit(self) -> Result:
        """Run the training to the end; returns a ``Result`` (with ``error`` set when it failed
        for good). A KeyboardInterrupt stops the workers and releases their resources."""
        if not ember.is_initialized():
            ember.init()
        run = self.run_config
        name = run.name or f"{self._default_name}_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
        filesystem, root = ckpt.resolve(run.resolved_storage(), run.storage_filesystem)
        trial_dir = f"{root.rstrip('/')}/{name}" if filesystem is not None else os.path.join(root, name)
        ckpt.makedirs(filesystem, trial_dir)
        num_workers = self.scaling_config.num_workers
        state = FitState(
            num_workers, run.failure_config.max_failures, run.checkpoint_config, self.resume_from_checkpoint
        )
        display = progress.reporter(name, run.verbose)
        watch = ReportWatch(_report_warning_s(), time.monotonic)
        error = None
        while True:
            start_index, start_checkpoint = state.start_attempt()
            # A fresh split for every attempt: a streaming split's epochs are counted by its
            # consumers, and a restarted group starts them again.
            shards = self._split_datasets(num_workers)
            group = WorkerGroup(self.scaling_config, name, self.backend.warm_modules(self.scaling_config))
            try:
                group.start()
                self.backend.on_start(group, self.scaling_config)
                display.start_attempt(state.attempt, group.infos, group.places, start_index)
                streams = {}
                for rank, worker in enumerate(group.workers):
                    context = session.TrainContext(group.places[rank], name, trial_dir, self.metadata)
                    worker_session = session.Session(
                        context, start_index, start_checkpoint, {k: v[rank] for k, v in shards.items()}, filesystem
                    )
                    streams[worker.run.remote(self.train_loop_per_worker, self.train_loop_config, worker_session)] = (
                        rank
                    )
                watch.start_attempt(range(num_workers))
                error = self._follow(streams, state, display, watch)
            except ValueError as failure:
                if group.pg is None:  # the cluster cannot hold the group: no attempt can succeed
                    group.shutdown()
                    raise
                error = failure
            except KeyboardInterrupt:
                group.shutdown()
                display.finish(KeyboardInterrupt("interrupted; the latest checkpoint is kept to resume from"))
                raise
            except Exception as failure:
                error = failure
            finally:
                group.shutdown()
            if error is None:
                break
            decision, orphans = state.on_failure(error)
            for orphan in orphans:
                ckpt.delete(orphan.filesystem, orphan.path)
            if decision == FAIL:
                break
        if error is None and not state.results:
            warnings.warn(
                "The training loop finished without calling ember.train.report: Result.metrics is empty and "
                "there is no checkpoint.",
                stacklevel=2,
            )
        display.finish(error)
        return Result(
            metrics=state.metrics,
            checkpoint=state.keeper.latest,
            error=error,
            path=trial_dir,
            best_checkpoints=state.keeper.best(),
            metrics_history=state.history(),
            filesystem=filesystem,
        )

    def _split_datasets(self, n: int) -> dict:
        if not self.datasets:
            return {}
        from ember.data import DataContext

        context = DataContext.get_current()
        # The split's own executions are the trainer's business: no progress view of their own
        # beside the trainer's.
        shown, context.enable_progress_bars = context.enable_progress_bars, False
        try:
            return {
                name: (
                    dataset.streaming_split(n, equal=True)
                    if self.dataset_config.splits(name)
                    else [dataset.iterator()] * n
                )
                for name, dataset in self.datasets.items()
            }
        finally:
            context.enable_progress_bars = shown

    def _follow(self, streams: dict, state: FitState, display, watch: ReportWatch):
        """Consume the workers' report streams until every loop returned (None) or one failed
        (its error)."""
        while streams:
            ready, _ = ember.wait(list(streams), num_returns=1, timeout=watch.timeout())
            if not ready:
                silent = watch.due()
                if silent:
                    warnings.warn(
                        f"ember.train: worker rank(s) {silent} have not called ember.train.report for "
                        f"{watch.after_s:g} s. A loop that never reports shows nothing until it ends; if it "
                        "is stuck (a collective waiting on a worker that skipped it, a dataset that never "
                        "ends), interrupt the fit. EMBER_TRAIN_REPORT_WARNING_S sets this delay.",
                        stacklevel=3,
                    )
                continue
            stream = ready[0]
            rank = streams[stream]
            try:
                ref = next(stream)
            except StopIteration:
                del streams[stream]
                watch.finished(rank)
                display.worker_state(rank, "finished")
                self._completed(state.on_worker_done(rank), display)
                continue
            except Exception as error:  # the worker died (ActorDiedError)
                display.worker_state(rank, "died")
                self._drain(streams, stream, state, display)
                return error
            watch.reported(rank)
            try:
                self._consume(ref, state, display)
            except Exception as error:  # the loop raised: the user's exception, remote traceback included
                display.worker_state(rank, "error")
                self._drain(streams, stream, state, display)
                return error
        return None

    def _consume(self, ref, state: FitState, display) -> None:
        _, rank, index, metrics, checkpoint = ember.get(ref)
        display.worker_report(rank, index, metrics)
        self._completed(state.on_report(rank, index, metrics, checkpoint), display)

    def _drain(self, streams: dict, failed, state: FitState, display) -> None:
        """After a failure: take in the reports the other workers have already sent, so that a
        step every worker finished still counts."""
        others = [stream for stream in streams if stream is not failed]
        while others:
            ready, _ = ember.wait(others, num_returns=1, timeout=0)
            if not ready:
                return
            try:
                self._consume(next(ready[0]), state, display)
            except Exception:  # ended, died or failed too: the first failure is the one reported
                others.remove(ready[0])

    def _completed(self, results: list, display) -> None:
        for result in results:
            for dropped in result.deleted:
                ckpt.delete(dropped.filesystem, dropped.path)
            display.result(result)
            for callback in self.run_config.callbacks:
                # Ray Train's UserCallback hook: every worker's metrics and the result's checkpoint.
                after_report = getattr(callback, "after_report", None)
                if after_report is not None:
                    after_report(run_context=None, metrics=result.all_metrics, checkpoint=result.checkpoint)


def label_column_config(trainer: str, label_column, datasets, params, num_boost_round) -> dict:
    """The boosting trainers' earlier form (no loop: ``label_column``, ``params``,
    ``num_boost_round``) as the config of their default loop, checked once for both."""
    if label_column is None or not datasets or "train" not in datasets:
        raise ValueError(f"{trainer} needs either train_loop_per_worker, or label_column and datasets with 'train'.")
    if isinstance(num_boost_round, bool) or not isinstance(num_boost_round, int) or num_boost_round < 1:
        raise ValueError(f"num_boost_round must be a positive int, got {num_boost_round!r}.")
    return {"label_column": label_column, "params": dict(params or {}), "num_boost_round": num_boost_round}
