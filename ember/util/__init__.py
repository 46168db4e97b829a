"""Utilities built on Ember's public core API, mirroring ``ray.util``.

- :class:`ActorPool`: spread work over a fixed set of actors.
- :class:`Queue` (also ``ember.util.queue.Queue``): a queue shared by tasks and actors.
- ``ember.util.multiprocessing.Pool``: a ``multiprocessing.Pool`` backed by actors.
- ``ember.util.joblib.register_ember``: a joblib backend (needs joblib installed).
- ``ember.util.state``: the state API (``list_tasks``, ``list_actors``, ``list_objects``, ``list_nodes``,
  ``list_jobs``, ``list_placement_groups``, ``get_*``), as ``ray.util.state``.
- Placement groups: :func:`placement_group`, :func:`remove_placement_group`,
  :func:`placement_group_table`, :func:`get_placement_group`, :func:`get_current_placement_group`;
  strategies in ``ember.util.scheduling_strategies``.

The submodules ``queue``, ``multiprocessing``, ``joblib``, ``actor_pool`` and ``state``
are importable as attributes (``ember.util.multiprocessing``); ``joblib`` is
only imported when it is asked for.
"""

import importlib

from .actor_pool import ActorPool

# Imported eagerly, as Ray does: ``placement_group`` is both a submodule and a function, and the
# function must win as the package's attribute whichever is imported first.
from .placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "Queue",
    "PlacementGroup",
    "placement_group",
    "remove_placement_group",
    "placement_group_table",
    "get_placement_group",
    "get_current_placement_group",
]

_LAZY_SUBMODULES = ("actor_pool", "queue", "multiprocessing", "joblib", "scheduling_strategies", "state")


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
