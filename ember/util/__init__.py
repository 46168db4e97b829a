"""Utilities built on Ember's public core API, mirroring ``ray.util``.

- :class:`ActorPool`: spread work over a fixed set of actors.
- :class:`Queue` (also ``ember.util.queue.Queue``): a queue shared by tasks and actors.
- ``ember.util.multiprocessing.Pool``: a ``multiprocessing.Pool`` backed by actors.
- ``ember.util.joblib.register_ember``: a joblib backend (needs joblib installed).

The submodules ``queue``, ``multiprocessing``, ``joblib`` and ``actor_pool``
are importable as attributes (``ember.util.multiprocessing``); ``joblib`` is
only imported when it is asked for.
"""

import importlib

from .actor_pool import ActorPool

__all__ = ["ActorPool", "Queue"]

_LAZY_SUBMODULES = ("actor_pool", "queue", "multiprocessing", "joblib")


def __getattr__(name):
    if name == "Queue":  # its module imports asyncio, which every worker would pay for at start-up
        from .queue import Queue

        globals()["Queue"] = Queue
        return Queue
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
