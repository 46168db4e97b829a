"""An RLlib ``Algorithm`` as a Tune trainable, as in Ray, where ``Algorithm`` is a ``tune.Trainable``:
``Tuner("PPO", param_space=PPOConfig()...)`` or ``Tuner(PPO, ...)``.

Each trial builds the algorithm from its resolved config (the algorithm's default config updated
from the trial's dict), runs one ``algo.train()`` per Tune iteration and reports RLlib's nested
result; checkpoints are the algorithm's own (``save_to_path``/``restore_from_path``), so
``Algorithm.from_checkpoint(result.checkpoint)``, PBT and ``Tuner.restore`` use them as they are.
``algo.stop()`` runs when the trial ends, whichever way.

What a trial reserves: its actor holds the algorithm's main process (1 CPU: the local learner, and
the sampling when ``num_env_runners=0``); the env runner actors it starts take their own
``num_cpus_per_env_runner`` each. Ray reserves both at once with a placement group; here the Tuner
runs at most as many trials at once as the cluster holds of the whole (1 + env runners' CPUs + the
learner actors' CPUs), so a started trial always finds room for its env runners.

Nothing here imports RLlib: an algorithm class given to the Tuner has imported it already.
"""

import math
import sys

from ember.tune.trainable import Trainable

MAIN_PROCESS_CPUS = 1.0


def is_algorithm_class(trainable) -> bool:
    """Whether ``trainable`` is an RLlib Algorithm class (PPO, DQN or a subclass)."""
    module = sys.modules.get("ember.rllib.algorithms.algorithm")
    return module is not None and isinstance(trainable, type) and issubclass(trainable, module.Algorithm)


def is_algorithm_config(value) -> bool:
    """Whether ``value`` is an RLlib ``AlgorithmConfig`` (Tune takes it as a param_space, via ``to_dict``)."""
    module = sys.modules.get("ember.rllib.algorithms.algorithm_config")
    return module is not None and isinstance(value, module.AlgorithmConfig)


def default_config(algo_class):
    """``algo_class``'s default ``AlgorithmConfig`` (Ray's ``Algorithm.get_default_config()``): its
    own method if it has one, else the config class defined beside the algorithm (or one of its bases)
    whose instances build that algorithm."""
    getter = getattr(algo_class, "get_default_config", None)
    if callable(getter):
        return getter()
    from ember.rllib.algorithms.algorithm_config import AlgorithmConfig

    for klass in algo_class.__mro__:
        module = sys.modules.get(klass.__module__)
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, type) and issubclass(value, AlgorithmConfig) and value is not AlgorithmConfig:
                try:
                    if value().algo_class is klass:
                        return value(algo_class=algo_class)
                except TypeError:
                    continue
    raise TypeError(f"no AlgorithmConfig builds {algo_class.__name__}; give the class a get_default_config()")


def config_from_dict(algo_class, values: dict):
    """The algorithm's config for one trial: its defaults updated from the trial's resolved dict (an
    ``AlgorithmConfig.to_dict()`` with search spaces resolved, or a plain dict of RLlib's names)."""
    values = dict(values)
    values.pop("algo_class", None)  # the trial's class decides, as the Tuner was given it
    config = default_config(algo_class)
    config.update_from_dict(values)
    return config


class AlgorithmTrainable(Trainable):
    """The class trainable around one algorithm; ``as_trainable`` makes one per algorithm class."""

    _algorithm_class = None
    capacity_resources = {"CPU": MAIN_PROCESS_CPUS}

    def setup(self, config: dict) -> None:
        algo_config = config_from_dict(self._algorithm_class, config)
        # Tune's display shows the trial; the algorithm's own live view would only print in the actor.
        algo_config.progress = False
        self.algorithm = algo_config.build_algo()

    def step(self) -> dict:
        return dict(self.algorithm.train())

    def save_checkpoint(self, checkpoint_dir: str):
        self.algorithm.save_to_path(checkpoint_dir)

    def load_checkpoint(self, checkpoint) -> None:
        self.algorithm.restore_from_path(checkpoint)
        # The optimizer's saved state carries the learning rate it was saved with; the trial's config
        # decides (PBT's exploit restores a donor's checkpoint under a mutated lr).
        _set_learning_rate(self.algorithm, self.algorithm.config.lr)

    def cleanup(self) -> None:
        algorithm = getattr(self, "algorithm", None)
        if algorithm is not None:
            self.algorithm = None
            algorithm.stop()

    @classmethod
    def default_resource_request(cls, config: dict) -> dict:
        return {"CPU": MAIN_PROCESS_CPUS}


def _set_learning_rate(algorithm, lr: float) -> None:
    optimizers = getattr(algorithm, "optimizers", None)
    if not isinstance(optimizers, dict):
        single = getattr(algorithm, "optimizer", None)
        optimizers = {"default_policy": single} if single is not None else {}
    for optimizer in optimizers.values():
        for group in getattr(optimizer, "param_groups", ()):
            group["lr"] = lr


def as_trainable(algo_class, param_space: dict | None = None) -> type:
    """The Trainable class running ``algo_class`` in each trial, named after it (trial names read
    "PPO_..."); ``capacity_resources`` is what one trial takes in all under ``param_space``."""
    needs = trial_needs(algo_class, param_space or {})
    return type(
        algo_class.__name__,
        (AlgorithmTrainable,),
        {"_algorithm_class": algo_class, "capacity_resources": needs, "__module__": __name__},
    )


def trial_needs(algo_class, param_space: dict) -> dict:
    """The CPUs one trial uses in all: its main process, the env runners (training and evaluation)
    and, with ``num_learners >= 1``, each learner actor's (``num_cpus_per_learner``; "auto" is 1
    without a GPU, else 0). A setting under search takes the largest value its grid or choice can give."""
    config = default_config(algo_class)

    def setting(name):
        return _largest(param_space.get(name, getattr(config, name, 0)), getattr(config, name, 0))

    per_runner = setting("num_cpus_per_env_runner")
    runners = setting("num_env_runners") + setting("evaluation_num_env_runners")
    learners = setting("num_learners")
    per_learner = param_space.get("num_cpus_per_learner", getattr(config, "num_cpus_per_learner", "auto"))
    if per_learner == "auto":
        per_learner = 0 if setting("num_gpus_per_learner") else 1
    else:
        per_learner = _largest(per_learner, 1)
    cpus = MAIN_PROCESS_CPUS + runners * per_runner + learners * per_learner
    return {"CPU": float(cpus)}


def check_fits_cluster(needs: dict, total: dict, name: str) -> None:
    """A clear error when one trial's algorithm needs more than the whole cluster has."""
    short = {k: v for k, v in needs.items() if v > total.get(k, 0) + 1e-9}
    if short:
        have = {k: total.get(k, 0) for k in short}
        raise ValueError(
            f"A {name} trial needs {needs} (1 CPU for the algorithm plus num_cpus_per_env_runner per env "
            f"runner) but the cluster has {have}; lower num_env_runners (0 samples in the trial itself)."
        )


def _largest(value, default):
    """A numeric setting's largest possible value: the value, a grid's or choice's largest, or the default."""
    if isinstance(value, bool):
        return default
    if isinstance(value, (int, float)):
        return value
    candidates = None
    if isinstance(value, dict) and isinstance(value.get("grid_search"), (list, tuple)):
        candidates = value["grid_search"]
    elif isinstance(getattr(value, "categories", None), (list, tuple)):
        candidates = value.categories
    elif hasattr(value, "upper"):
        candidates = [math.floor(value.upper)]
    numbers = [c for c in candidates or () if isinstance(c, (int, float)) and not isinstance(c, bool)]
    return max(numbers) if numbers else default
