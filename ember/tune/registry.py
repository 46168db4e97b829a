"""``ray.tune.registry``: trainables by name (``register_trainable``/``get_trainable_cls``, so that
``Tuner("PPO", ...)`` works) and ``register_env`` for RLlib's ``config.environment(env=name)``.

RLlib's algorithms are known by name from the start but resolved lazily: the names map to module
paths, and the module is imported on the first lookup, so importing Tune imports neither RLlib nor
torch. The registry lives in the driver's process: the Tuner resolves a name there and sends the
class itself to the trials, so trial actors never look a name up.
"""

import importlib
import threading

# RLlib's algorithms, as Ray registers them; "module:attribute", imported on first use.
_BUILTIN = {
    "PPO": "ember.rllib.algorithms.ppo:PPO",
    "DQN": "ember.rllib.algorithms.dqn:DQN",
}

_registered: dict = {}
_lock = threading.Lock()


def register_trainable(name: str, trainable, warn: bool = True) -> None:
    """Register ``trainable`` (a function calling ``tune.report``, a ``Trainable`` class or an
    RLlib ``Algorithm`` class) under ``name``, so ``Tuner(name, ...)`` and ``get_trainable_cls(name)``
    find it. A later registration under the same name replaces the earlier one, as in Ray."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_trainable needs a non-empty name, got {name!r}.")
    if not callable(trainable):
        raise TypeError(
            f"register_trainable({name!r}, ...) needs a function, a Trainable class or an Algorithm class, "
            f"got {type(trainable).__name__}."
        )
    with _lock:
        _registered[name] = trainable


def get_trainable_cls(trainable_name: str):
    """The trainable registered under ``trainable_name``; "PPO" and "DQN" are RLlib's algorithm
    classes. An unknown name raises a ``TuneError`` listing the known ones."""
    from ember.tune.result_grid import TuneError

    if not isinstance(trainable_name, str):
        raise TypeError(f"a trainable name must be a str, got {type(trainable_name).__name__}.")
    with _lock:
        if trainable_name in _registered:
            return _registered[trainable_name]
    where = _BUILTIN.get(trainable_name)
    if where is None:
        raise TuneError(
            f"Unknown trainable: {trainable_name!r}. Known trainables: {registered_names()}. "
            "Register your own with ember.tune.registry.register_trainable(name, trainable)."
        )
    module_name, attribute = where.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TuneError(
            f"The trainable {trainable_name!r} is RLlib's algorithm and needs ember[rl] (torch and gymnasium): {error}"
        ) from error
    return getattr(module, attribute)


def registered_names() -> list:
    """Every name ``get_trainable_cls`` knows (RLlib's algorithms and the registered trainables)."""
    with _lock:
        return sorted(set(_BUILTIN) | set(_registered))


def _unregister_trainable(name: str) -> None:
    """Forget ``name`` (tests use it to leave the registry as they found it)."""
    with _lock:
        _registered.pop(name, None)


def register_env(name: str, env_creator) -> None:
    """Register ``env_creator(env_config) -> env`` under ``name``, as Ray's
    ``ray.tune.registry.register_env``; RLlib algorithms then accept ``env=name``."""
    from ember.rllib.env.registry import register_env as rllib_register_env

    rllib_register_env(name, env_creator)


__all__ = ["get_trainable_cls", "register_env", "register_trainable"]
