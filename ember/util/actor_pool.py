"""A pool of existing actors that work is spread over, as ``ray.util.ActorPool``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ember

__all__ = ["ActorPool"]


def _ref_key(future: Any) -> Any:
    """Return a hashable key for a submitted future (an ObjectRef or a list of them)."""
    if isinstance(future, list):
        return tuple(future)
    return future


class ActorPool:
    """Utility class to operate on a fixed pool of actors.

    The pool holds actors you have already created. Each call to
    :meth:`submit` (or each value passed to :meth:`map`) is handed to an idle
    actor; when every actor is busy the work is queued and dispatched as soon
    as an actor frees up, which happens when one of its results is collected
    with :meth:`get_next` or :meth:`get_next_unordered`.

    Arguments:
        actors: A non-empty iterable of actor handles to use in this pool.

    Examples:
        .. code-block:: python

            import ember
            from ember.util import ActorPool

            @ember.remote
            class Doubler:
                def double(self, v):
                    return 2 * v

            pool = ActorPool([Doubler.remote(), Doubler.remote()])
            print(list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])))
            # [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable[Any]):
        if actors is None:
            raise TypeError("ActorPool requires an iterable of actor handles, got None")
        try:
            actor_list = list(actors)
        except TypeError as e:
            raise TypeError(f"ActorPool requires an iterable of actor handles, got {type(actors).__name__}") from e
        # Actors that are free to take work.
        self._idle_actors: list[Any] = actor_list
        # future key -> (submission index, actor running it)
        self._future_to_actor: dict = {}
        # submission index -> future, used by the ordered getters.
        self._index_to_future: dict = {}
        # Index given to the next submitted task.
        self._next_task_index = 0
        # (fn, value) pairs waiting for an actor to become idle.
        self._pending_submits: list[tuple] = []

    # ------------------------------------------------------------------ map
    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` over ``values`` in parallel, yielding results in input order.

        ``fn`` is called as ``fn(actor, value)`` and must return the ObjectRef
        of the actor method it invoked (for example
        ``lambda a, v: a.double.remote(v)``). Any results still outstanding
        from earlier submissions are collected and discarded first.

        Arguments:
            fn: Function taking ``(actor, value)`` and returning an ObjectRef.
            values: Values to apply ``fn`` to.

        Returns:
            An iterator over the results, in the order of ``values``.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        # Drop whatever is still in flight from earlier use of the pool.
        self._drain()
        for v in values:
            self.submit(fn, v)

        def _results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return _results()

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Like :meth:`map`, but yields each result as soon as it is ready.

        Arguments:
            fn: Function taking ``(actor, value)`` and returning an ObjectRef.
            values: Values to apply ``fn`` to.

        Returns:
            An iterator over the results, in completion order.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self._drain()
        for v in values:
            self.submit(fn, v)

        def _results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return _results()

    def _drain(self) -> None:
        """Collect and discard every result still outstanding from earlier submissions."""
        while self.has_next():
            try:
                self.get_next_unordered()
            except Exception:  # a failed discarded task must not break the new map
                pass

    # --------------------------------------------------------------- submit
    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor of the pool.

        If no actor is idle the call is queued and submitted once an actor is
        returned to the pool. Retrieve the result with :meth:`get_next` or
        :meth:`get_next_unordered`.

        Arguments:
            fn: Function taking ``(actor, value)`` and returning an ObjectRef.
            value: Value passed to ``fn``.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if self._idle_actors:
            actor = self._idle_actors.pop()
            future = fn(actor, value)
            self._future_to_actor[_ref_key(future)] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    # ------------------------------------------------------------- getters
    def has_next(self) -> bool:
        """Return whether there are any pending results to get."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Return the next result in submission order, blocking until it is ready.

        The "next" result is that of the oldest submission whose result has
        not been taken yet (by this method or by :meth:`get_next_unordered`).

        Arguments:
            timeout: Maximum number of seconds to wait. ``None`` waits forever.
            ignore_if_timedout: If the wait times out and this is True, the
                pending result is skipped (its actor goes back to the pool) so
                the next call moves on to the following result; a
                ``TimeoutError`` is still raised for this call.

        Returns:
            The next result.

        Raises:
            StopIteration: If there are no more results to get.
            TimeoutError: If ``timeout`` expires before the result is ready.
            ValueError: If ``timeout`` is negative.
        """
        _check_timeout(timeout)
        if not self.has_next():
            raise StopIteration("No more results to get")
        # The oldest outstanding submission (results already taken out of
        # order by get_next_unordered are skipped).
        index = min(self._index_to_future)
        future = self._index_to_future[index]
        timed_out = False
        if timeout is not None:
            ready, _ = ember.wait(_as_list(future), num_returns=len(_as_list(future)), timeout=timeout)
            if len(ready) < len(_as_list(future)):
                if not ignore_if_timedout:
                    raise TimeoutError("Timed out waiting for result")
                timed_out = True
        del self._index_to_future[index]
        _, actor = self._future_to_actor.pop(_ref_key(future))
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(f"Timed out waiting for result; the task {future} has been ignored.")
        return ember.get(future)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Return any of the next results, whichever finishes first.

        Arguments:
            timeout: Maximum number of seconds to wait. ``None`` waits forever.
            ignore_if_timedout: Accepted for API compatibility with
                :meth:`get_next`; on a timeout nothing is discarded because no
                particular result was being waited for.

        Returns:
            The result of a finished task.

        Raises:
            StopIteration: If there are no more results to get.
            TimeoutError: If ``timeout`` expires before any result is ready.
        """
        _check_timeout(timeout)
        if not self.has_next():
            raise StopIteration("No more results to get")
        # A list-valued future is ready when its first ref is (good enough to pick one).
        keys = list(self._future_to_actor)
        heads = [k[0] if isinstance(k, tuple) else k for k in keys]
        ready, _ = ember.wait(heads, num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("Timed out waiting for result")
        key = keys[heads.index(ready[0])]
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        self._return_actor(actor)
        return ember.get(future)

    # --------------------------------------------------------- idle actors
    def _return_actor(self, actor: Any) -> None:
        self._idle_actors.append(actor)
        if self._pending_submits:
            self.submit(*self._pending_submits.pop(0))

    def has_free(self) -> bool:
        """Return whether an actor is idle and no submissions are queued."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Remove an idle actor from the pool and return it, or None if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it becomes idle and may pick up queued work).

        Raises:
            ValueError: If the actor already belongs to this pool.
        """
        busy = [a for _, a in self._future_to_actor.values()]
        if any(actor is a or actor == a for a in self._idle_actors + busy):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


def _as_list(future: Any) -> list:
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, got {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError("timeout must be a non-negative number")
