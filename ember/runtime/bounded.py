"""Caps on what the control service remembers about things that ended, as Ray's GCS caps them.

A cluster that runs for weeks creates millions of actors, jobs and placement groups. Live ones are
needed; ended ones are kept only so that a lookup soon after the end gives a precise answer (the
actor's death cause, a group's REMOVED state). Past a cap the oldest ended entry is forgotten, and a
lookup of it gets the same answer as for an id never seen ("not found", or DEAD for an actor id).

Caps (environment variables, read when the head starts; Ray's equivalent in brackets):

=================================================== ======= =============================================
``EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT``      1000    dead actors (``maximum_gcs_destroyed_actor_cached_count``)
``EMBER_MAXIMUM_DEAD_NODE_CACHED_COUNT``            1000    dead nodes (``maximum_gcs_dead_node_cached_count``)
``EMBER_MAXIMUM_DEAD_JOB_CACHED_COUNT``             1000    finished jobs (``maximum_gcs_dead_job_cached_count``)
``EMBER_MAXIMUM_REMOVED_PLACEMENT_GROUP_CACHED_COUNT`` 1000 removed placement groups
=================================================== ======= =============================================

Ray keeps 100,000 dead actors by default; here a dead actor costs the head about 2 KB, so that
would be some 200 MB on a notebook's machine before the cap held. 1,000 keeps the precise death
cause of every recent actor; an older one answers DEAD like an id never seen.
"""

import collections
import os

DESTROYED_ACTORS = ("EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT", 1000)
DEAD_NODES = ("EMBER_MAXIMUM_DEAD_NODE_CACHED_COUNT", 1000)
DEAD_JOBS = ("EMBER_MAXIMUM_DEAD_JOB_CACHED_COUNT", 1000)
REMOVED_PLACEMENT_GROUPS = ("EMBER_MAXIMUM_REMOVED_PLACEMENT_GROUP_CACHED_COUNT", 1000)


def cap_from_env(setting: tuple, environ=None) -> int:
    """The cap named by ``setting`` (an (environment variable, default) pair); raises ValueError
    unless the variable, when set, is a whole number of at least 1."""
    name, default = setting
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}.") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    return value


class EndedCache:
    """Keys of ended entries, oldest first, at most ``capacity`` of them.

    ``add`` returns the keys pushed out by the new one: the caller forgets those entries. Plain
    state, no I/O, so the eviction order is testable on its own.
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, got {capacity!r}.")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}.")
        self.capacity = capacity
        self._order: collections.OrderedDict = collections.OrderedDict()

    def add(self, key) -> list:
        """Note that ``key`` ended (again: it stays where it was); returns the keys evicted."""
        if key in self._order:
            return []
        self._order[key] = None
        evicted = []
        while len(self._order) > self.capacity:
            evicted.append(self._order.popitem(last=False)[0])
        return evicted

    def discard(self, key) -> None:
        """Forget ``key`` (its entry came back to life, or was deleted some other way)."""
        self._order.pop(key, None)

    def __contains__(self, key) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self):
        return iter(self._order)
