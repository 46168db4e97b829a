"""``LightGBMTrainer``, its backend (addresses and ports for LightGBM's network) and the report callback."""

import os
import tempfile

import ember
from ember.train import session
from ember.train.checkpoint import Checkpoint
from ember.train.trainer import Backend, DataParallelTrainer, label_column_config

MODEL_FILE = "model.txt"
_local: dict = {}  # this worker's network parameters, set by the backend before the loop


def _set_network(params: dict) -> None:
    _local.clear()
    _local.update(params)


def get_network_params() -> dict:
    """LightGBM's parameters for this worker's place in the group: ``machines``,
    ``local_listen_port``, ``num_machines``, ``time_out``, ``num_threads``, and the data-parallel
    tree learner on pre-partitioned data (``tree_learner="data"``, ``pre_partition=True``; merge
    your params after these to pick "voting" or "feature"). Merge them into the params given to
    ``lightgbm.train``."""
    session.current()  # a clear error outside a training loop
    return dict(_local)


class _LightGBMBackend(Backend):
    def warm_modules(self, scaling) -> tuple:
        return ("lightgbm", "pandas")

    def on_start(self, group, scaling) -> None:
        ports = ember.get([worker.free_port.remote() for worker in group.workers])
        machines = ",".join(f"{info['address']}:{port}" for info, port in zip(group.infos, ports))
        threads = max(1, int(scaling.worker_resources().get("CPU", 1)))
        ember.get(
            [
                worker.execute.remote(
                    _set_network,
                    {
                        "machines": machines,
                        "local_listen_port": port,
                        "num_machines": len(group.workers),
                        "num_threads": threads,
                        "time_out": 120,  # minutes LightGBM's sockets wait for the others
                        # Without a parallel tree learner LightGBM ignores the network and each
                        # worker trains a model of its own: data-parallel is the one for shards.
                        "tree_learner": "data",
                        "pre_partition": True,
                    },
                )
                for worker, port in zip(group.workers, ports)
            ]
        )


class RayTrainReportCallback:
    """A ``lightgbm.train`` callback: reports the evaluation results every round, with a
    checkpoint of the model (saved by rank 0) every ``frequency`` rounds and at the end
    (``checkpoint_at_end``). ``metrics`` picks and renames results ("valid-l2" names the
    l2 metric of the valid set, a dict maps new names to those)."""

    order = 20  # after LightGBM's own callbacks

    def __init__(self, metrics=None, filename: str = MODEL_FILE, frequency: int = 0, checkpoint_at_end: bool = True):
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 0:
            raise ValueError(f"frequency must be a non-negative int, got {frequency!r}.")
        self.metrics = [metrics] if isinstance(metrics, str) else metrics
        self.filename = filename
        self.frequency = frequency
        self.checkpoint_at_end = checkpoint_at_end

    @classmethod
    def get_model(cls, checkpoint: Checkpoint, filename: str = MODEL_FILE):
        """The ``lightgbm.Booster`` saved in ``checkpoint``."""
        import lightgbm

        with checkpoint.as_directory() as directory:
            return lightgbm.Booster(model_file=os.path.join(directory, filename))

    def _results(self, env) -> dict:
        found = {f"{data}-{name}": value for data, name, value, *_ in env.evaluation_result_list or []}
        if self.metrics is None:
            return found
        if isinstance(self.metrics, dict):
            return {new: found[old] for new, old in self.metrics.items() if old in found}
        return {name: found[name] for name in self.metrics if name in found}

    def __call__(self, env) -> None:
        round_number = env.iteration + 1
        last = env.iteration + 1 == env.end_iteration
        periodic = self.frequency and round_number % self.frequency == 0
        checkpoint = None
        with tempfile.TemporaryDirectory() as directory:
            if (periodic or (last and self.checkpoint_at_end)) and session.get_context().get_world_rank() == 0:
                env.model.save_model(os.path.join(directory, self.filename))
                checkpoint = Checkpoint.from_directory(directory)
            session.report(self._results(env), checkpoint=checkpoint)


class LightGBMTrainer(DataParallelTrainer):
    """Runs ``train_loop_per_worker`` on workers joined in LightGBM's network (the loop calls
    ``lightgbm.train(params | get_network_params(), ...)`` on ``get_dataset_shard``).

    Ray's earlier form also works: no loop, but ``label_column``, ``params`` and
    ``num_boost_round``; each worker then trains on its shard of ``datasets["train"]``, evaluates
    on every dataset, and reports each round with a checkpoint at the end.
    """

    _default_name = "LightGBMTrainer"

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
            train_loop_config = label_column_config("LightGBMTrainer", label_column, datasets, params, num_boost_round)
        super().__init__(
            train_loop_per_worker,
            train_loop_config=train_loop_config,
            backend=_LightGBMBackend(),
            scaling_config=scaling_config,
            run_config=run_config,
            datasets=datasets,
            dataset_config=dataset_config,
            resume_from_checkpoint=resume_from_checkpoint,
            metadata=metadata,
        )

    @classmethod
    def get_model(cls, checkpoint: Checkpoint):
        return RayTrainReportCallback.get_model(checkpoint)


def _default_loop(config: dict) -> None:
    import lightgbm

    label = config["label_column"]
    sets, names = [], []
    for name in ["train"] + sorted(set(session.current().shards) - {"train"}):
        frame = session.get_dataset_shard(name).materialize().to_pandas()
        sets.append(lightgbm.Dataset(frame.drop(columns=[label]), label=frame[label], free_raw_data=False))
        names.append(name)
    start = session.get_checkpoint()
    init_model = RayTrainReportCallback.get_model(start) if start is not None else None
    params = {"verbose": -1, **config["params"], **get_network_params()}
    lightgbm.train(
        params,
        sets[0],
        num_boost_round=config["num_boost_round"],
        valid_sets=sets,
        valid_names=names,
        init_model=init_model,
        callbacks=[RayTrainReportCallback()],
    )
