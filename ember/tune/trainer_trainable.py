"""A Train trainer as a Tune trainable, as in Ray: ``Tuner(trainer, param_space={"train_loop_config":
{...}})``. Each trial runs a copy of the trainer whose ``train_loop_config`` is the trainer's own
updated by the trial's, and forwards every training result (rank 0's metrics and the checkpoint) to
Tune. The trial's actor only drives the trainer and holds no CPU; the trainer's workers take their
own resources, so the number of trials run at once is what the cluster holds of worker groups."""

import copy
import dataclasses

from ember.tune.trainable import _FunctionTrainable

_TUNABLE = ("train_loop_config",)


def is_trainer(trainable) -> bool:
    from ember.train.trainer import DataParallelTrainer

    return isinstance(trainable, DataParallelTrainer)


class _ForwardResults:
    """A Train callback that passes each result on to the trial's ``tune.report``."""

    def after_report(self, run_context, metrics, checkpoint):
        from ember import tune

        tune.report(dict(metrics[0]) if metrics else {}, checkpoint=checkpoint)


def _run_trainer(trainer, config: dict) -> None:
    from ember import tune

    unknown = sorted(set(config) - set(_TUNABLE))
    if unknown:
        raise ValueError(
            f"A trainer's param_space may hold only {list(_TUNABLE)}; got {unknown}. Put the training "
            "function's hyperparameters under 'train_loop_config'."
        )
    trial = copy.copy(trainer)
    trial.train_loop_config = {**(trainer.train_loop_config or {}), **config.get("train_loop_config", {})}
    context = tune.get_context()
    trial.run_config = dataclasses.replace(
        trainer.run_config,
        name="train",
        storage_path=context.get_trial_dir(),
        verbose=0,
        callbacks=[*trainer.run_config.callbacks, _ForwardResults()],
    )
    # A paused, retried or restored trial goes on from its latest checkpoint.
    resume = tune.get_checkpoint()
    if resume is not None:
        trial.resume_from_checkpoint = resume
    result = trial.fit()
    if result.error is not None:
        raise result.error


def as_trainable(trainer) -> _FunctionTrainable:
    """The function trainable running ``trainer`` once per trial (see the module's docstring)."""
    import functools

    fn = functools.partial(_run_trainer, trainer)
    fn.__name__ = type(trainer).__name__
    trainable = _FunctionTrainable(fn, resources={"CPU": 0})
    scaling = trainer.scaling_config
    per_worker = scaling.worker_resources()
    trainable.capacity_resources = {k: v * scaling.num_workers for k, v in per_worker.items()}
    return trainable
