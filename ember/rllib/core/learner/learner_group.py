"""``LearnerGroup``: ``num_learners`` learner actors, one torch.distributed process group, and the
driver's side of an update (RLlib's name and role).

The actors are ember.train's workers (``WorkerGroup``: a placement group, ranks, teardown) and join
their process group the way ember.train's torch backend joins one (rank 0 starts the rendezvous
store on a port the OS assigns; gloo on CPU, nccl when each learner has a GPU). An update splits
each module's train batch into ``num_learners`` equal shards, one per learner; DDP averages the
gradients, and learner 0 returns the new weights that the algorithm then broadcasts to its env
runners.

Faults follow RLlib 2.x: a learner that died is not replaced. The next call that needs it raises a
``LearnerDiedError`` naming the learner (and its pid); the algorithm cannot train afterwards, but
its last weights and a checkpoint written before the failure restore into a new one.
"""

import os

import ember
from ember.exceptions import ActorError
from ember.train.worker_group import TrainWorker, WorkerGroup, _warmed

# Modules the learner actors import while the group is still being placed (torch is most of a start).
WARM_MODULES = ("torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo")


class LearnerDiedError(RuntimeError):
    """A learner actor of the group died (crash, SIGKILL, node loss); the group cannot update."""


class LearnerActor(TrainWorker):
    """The actor a ``Learner`` lives in (a train worker, so ember.train's rendezvous runs in it)."""

    def build(self, modules: dict, extras: dict, config, rank: int, world_size: int) -> int:
        from ember.rllib.core.learner.learner import Learner
        from ember.train.torch.config import device_index

        _warmed()
        index = device_index()
        self.learner = Learner(modules, extras, config, rank, world_size, None if index is None else f"cuda:{index}")
        return os.getpid()

    def update(self, fn, shards: dict, module_kwargs: dict, return_weights: bool) -> tuple:
        import torch

        threads = torch.get_num_threads()
        # As the driver's learner: a small MLP's minibatch steps are fastest on one thread.
        torch.set_num_threads(1)
        try:
            stats = {mid: fn(self.learner, mid, batch, **module_kwargs.get(mid, {})) for mid, batch in shards.items()}
        finally:
            torch.set_num_threads(threads)
        return stats, (self.learner.get_weights() if return_weights else None)

    def call(self, fn, *args):
        return fn(self.learner, *args)


def shard(batch: dict, num_shards: int) -> list:
    """``batch`` (a dict of equally long arrays) cut into ``num_shards`` equal consecutive pieces.

    Equal, because DDP needs every learner to take the same number of gradient steps (each step's
    all-reduce waits for all); the last ``len % num_shards`` rows are left out.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    size = len(next(iter(batch.values())))
    per = size // num_shards
    return [{key: value[i * per : (i + 1) * per] for key, value in batch.items()} for i in range(num_shards)]


# Learner stats that add up over learners (each trained its own steps); every other one is a mean.
SUMMED_STATS = ("num_module_steps_trained",)


def reduce_stats(per_learner: list) -> dict:
    """One module's stats from each learner to one dict: RLlib's reduction (counts summed, the rest
    averaged over learners)."""
    keys = [k for k in per_learner[0] if all(k in s for s in per_learner)]
    out = {}
    for key in keys:
        values = [s[key] for s in per_learner]
        if key in SUMMED_STATS:
            out[key] = sum(values)
        else:
            out[key] = sum(values) / len(values)
    return out


class LearnerGroup:
    """``config.num_learners`` learner actors holding replicas of ``modules`` (and of ``extras``)."""

    def __init__(self, config, modules: dict, extras: dict | None = None):
        from ember.train.config import ScalingConfig
        from ember.train.torch.config import TorchBackend, TorchConfig

        self.config = config
        self.num_learners = config.num_learners
        resources = config.learner_resources()
        scaling = ScalingConfig(
            num_workers=self.num_learners, use_gpu=bool(resources.get("GPU")), resources_per_worker=resources
        )
        self.group = WorkerGroup(scaling, name="rllib-learners", warm=WARM_MODULES, actor_class=LearnerActor)
        self.failed: str | None = None
        self.pids: list = []
        try:
            try:
                self.group.start()
            except ValueError as error:
                raise ValueError(
                    f"num_learners={self.num_learners} with {resources} each does not fit the cluster "
                    f"(lower num_learners, num_cpus_per_learner or num_gpus_per_learner): {error}"
                ) from None
            TorchBackend(TorchConfig()).on_start(self.group, scaling)
            self.pids = [info["pid"] for info in self.group.infos]
            self._get(
                [
                    (rank, learner.build.remote(modules, extras or {}, config, rank, self.num_learners))
                    for rank, learner in enumerate(self.group.workers)
                ]
            )
        except BaseException:
            self.stop()
            raise

    @property
    def learners(self) -> list:
        """The learner actors, by rank."""
        return list(self.group.workers)

    def _get(self, pending: list) -> list:
        """Results of (rank, ref) pairs in order; the first learner found dead fails the call at
        once (the others may be blocked in a collective waiting for it)."""
        if self.failed is not None:
            raise LearnerDiedError(self.failed)
        refs = [ref for _, ref in pending]
        rank_of = {ref: rank for rank, ref in pending}
        left = list(refs)
        while left:
            ready, left = ember.wait(left, num_returns=1)
            try:
                ember.get(ready[0])
            except ActorError as error:
                rank = rank_of[ready[0]]
                self.failed = (
                    f"learner {rank} of {self.num_learners} (pid {self.pids[rank]}) died: {error}. As in RLlib, "
                    "a dead learner is not replaced: build a new algorithm (e.g. Algorithm.from_checkpoint)."
                )
                raise LearnerDiedError(self.failed) from error
        return ember.get(refs)

    def update(self, fn, batches: dict, module_kwargs: dict | None = None) -> tuple:
        """One update of every module in ``batches`` (module id -> dict of arrays), each learner on
        its shard: ``fn(learner, module_id, shard, **module_kwargs[module_id])`` in every learner.
        Returns ({module id: stats reduced over learners}, learner 0's new weights)."""
        per_module = {mid: shard(batch, self.num_learners) for mid, batch in batches.items()}
        pending = [
            (
                rank,
                learner.update.remote(
                    fn, {mid: shards[rank] for mid, shards in per_module.items()}, module_kwargs or {}, rank == 0
                ),
            )
            for rank, learner in enumerate(self.group.workers)
        ]
        results = self._get(pending)
        stats = {mid: reduce_stats([r[0][mid] for r in results]) for mid in batches}
        return stats, results[0][1]

    def foreach_learner(self, fn, *args) -> list:
        """``fn(learner, *args)`` in every learner at once; the results by rank."""
        return self._get([(rank, a.call.remote(fn, *args)) for rank, a in enumerate(self.group.workers)])

    def get_state(self) -> dict:
        """Learner 0's weights, optimizer states and extras (all learners hold the same)."""
        return self._get([(0, self.group.workers[0].call.remote(_get_state))])[0]

    def set_state(self, state: dict) -> None:
        """Load ``state`` (any of modules/optimizers/extras, as ``get_state``) into every learner."""
        self.foreach_learner(_set_state, state)

    def get_weights_of_all(self) -> list:
        return self.foreach_learner(_get_weights)

    def stop(self) -> None:
        """Kill the learner actors and free their placement group."""
        self.group.shutdown()


def _get_state(learner):
    return learner.get_state()


def _set_state(learner, state):
    learner.set_state(state)


def _get_weights(learner):
    return learner.get_weights()
