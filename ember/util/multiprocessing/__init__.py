"""A drop-in replacement for :class:`multiprocessing.Pool` backed by Ember actors.

``from ember.util.multiprocessing import Pool`` in place of
``from multiprocessing import Pool`` runs the same code on an Ember cluster:
each pool "process" is an actor, so work can spread over every node, and an
``initializer`` runs once in each actor, with the state it sets up kept for
the tasks that actor runs later, as with worker processes.
"""

from .pool import Pool
from .results import ApplyResult, AsyncResult, IMapIterator, MapResult, TimeoutError

__all__ = ["Pool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "TimeoutError"]
