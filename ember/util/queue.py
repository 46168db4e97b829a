"""A first-in, first-out queue shared between tasks and actors, as ``ray.util.queue``.

The queue lives in an asyncio actor, so a caller blocked in ``get`` or ``put``
(with or without a timeout) never holds up other callers of the same queue.
A :class:`Queue` object can be passed to tasks and actors; every copy talks to
the same actor.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

import ember

__all__ = ["Queue", "Empty", "Full"]


class Empty(_stdlib_queue.Empty):
    """Raised by a non-blocking or timed-out ``get`` on an empty queue."""


class Full(_stdlib_queue.Full):
    """Raised by a non-blocking or timed-out ``put`` on a full queue."""


# Status words returned by the actor; the client turns them into exceptions so
# that the behaviour does not depend on how actor errors are wrapped.
_OK = "ok"
_EMPTY = "empty"
_FULL = "full"


class _QueueActor:
    """Actor holding the items. Every method is async, so all run on the actor's event loop."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    async def ping(self) -> bool:
        return True

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return (_FULL, None)
        return (_OK, None)

    async def get(self, timeout: float | None = None):
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return (_EMPTY, None)
        return (_OK, item)

    async def put_nowait(self, item: Any):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return (_FULL, None)
        return (_OK, None)

    async def put_nowait_batch(self, items: list[Any]):
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (
                _FULL,
                f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} and maxsize {self.maxsize}.",
            )
        for item in items:
            self.queue.put_nowait(item)
        return (_OK, None)

    async def get_nowait(self):
        try:
            return (_OK, self.queue.get_nowait())
        except asyncio.QueueEmpty:
            return (_EMPTY, None)

    async def get_nowait_batch(self, num_items: int):
        if num_items > self.queue.qsize():
            return (
                _EMPTY,
                f"Cannot get {num_items} items from queue of size {self.queue.qsize()}.",
            )
        return (_OK, [self.queue.get_nowait() for _ in range(num_items)])


QueueActor = ember.remote(_QueueActor)


def _validate_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"'timeout' must be a number or None, got {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


async def _await_ref(ref: Any) -> Any:
    """Await an ObjectRef without blocking the running event loop."""
    if hasattr(ref, "__await__"):
        return await ref
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, ember.get, ref)


class Queue:
    """A first-in, first-out queue that tasks and actors can share.

    The items are held by an actor created when the queue is constructed, so
    ``ember.init()`` must have been called (or is called implicitly, as with
    any actor creation). The API follows Python's :class:`queue.Queue`, plus
    batch and async variants.

    Arguments:
        maxsize: Maximum number of items the queue holds. ``0`` (the
            default) or a negative number means unbounded.
        actor_options: Options for the backing actor, passed to
            ``.options(...)`` (for example ``{"num_cpus": 0, "name": "q"}``).
            By default the actor reserves no CPU.

    Examples:
        .. code-block:: python

            import ember
            from ember.util.queue import Queue, Empty

            q = Queue(maxsize=10)

            @ember.remote
            def producer(q):
                for i in range(5):
                    q.put(i)

            ember.get(producer.remote(q))
            print([q.get(timeout=1) for _ in range(5)])  # [0, 1, 2, 3, 4]
            try:
                q.get(timeout=0.1)
            except Empty:
                print("drained")
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict or None, got {type(actor_options).__name__}")
        self.maxsize = maxsize
        options = {"num_cpus": 0}
        options.update(actor_options or {})
        self.actor = QueueActor.options(**options).remote(self.maxsize)

    # ------------------------------------------------------------- helpers
    def _handle(self):
        if self.actor is None:
            raise RuntimeError("This Queue has been shut down")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """Return the number of items currently in the queue (same as :meth:`qsize`)."""
        return ember.get(self._handle().qsize.remote())

    def qsize(self) -> int:
        """Return the number of items currently in the queue."""
        return self.size()

    def empty(self) -> bool:
        """Return whether the queue is empty."""
        return ember.get(self._handle().empty.remote())

    def full(self) -> bool:
        """Return whether the queue is full (always False for an unbounded queue)."""
        return ember.get(self._handle().full.remote())

    # ----------------------------------------------------------------- put
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item to the queue.

        Arguments:
            item: The item to add.
            block: If True (the default), wait for a free slot when the queue
                is full; if False, raise :class:`Full` at once instead.
            timeout: With ``block=True``, the maximum number of seconds to
                wait for a free slot; ``None`` waits forever.

        Raises:
            Full: If no slot became free (at once, or within ``timeout``).
            ValueError: If ``timeout`` is negative.
        """
        if not block:
            status, _ = ember.get(self._handle().put_nowait.remote(item))
        else:
            _validate_timeout(timeout)
            status, _ = ember.get(self._handle().put.remote(item, timeout))
        if status == _FULL:
            raise Full
        return None

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Coroutine version of :meth:`put`, for use inside async code and async actors."""
        if not block:
            status, _ = await _await_ref(self._handle().put_nowait.remote(item))
        else:
            _validate_timeout(timeout)
            status, _ = await _await_ref(self._handle().put.remote(item, timeout))
        if status == _FULL:
            raise Full
        return None

    def put_nowait(self, item: Any) -> None:
        """Add an item if a slot is free, without waiting (``put(item, block=False)``).

        Raises:
            Full: If the queue is full.
        """
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add several items at once, atomically, without waiting.

        Either all items are added or, if they do not all fit, none is.

        Raises:
            Full: If the items do not all fit in the queue.
            TypeError: If ``items`` is not iterable.
        """
        try:
            batch = list(items)
        except TypeError as e:
            raise TypeError(f"put_nowait_batch expects an iterable, got {type(items).__name__}") from e
        status, message = ember.get(self._handle().put_nowait_batch.remote(batch))
        if status == _FULL:
            raise Full(message)

    # ----------------------------------------------------------------- get
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item from the queue.

        Arguments:
            block: If True (the default), wait for an item when the queue is
                empty; if False, raise :class:`Empty` at once instead.
            timeout: With ``block=True``, the maximum number of seconds to
                wait for an item; ``None`` waits forever.

        Raises:
            Empty: If no item became available (at once, or within ``timeout``).
            ValueError: If ``timeout`` is negative.
        """
        if not block:
            status, item = ember.get(self._handle().get_nowait.remote())
        else:
            _validate_timeout(timeout)
            status, item = ember.get(self._handle().get.remote(timeout))
        if status == _EMPTY:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """Coroutine version of :meth:`get`, for use inside async code and async actors."""
        if not block:
            status, item = await _await_ref(self._handle().get_nowait.remote())
        else:
            _validate_timeout(timeout)
            status, item = await _await_ref(self._handle().get.remote(timeout))
        if status == _EMPTY:
            raise Empty
        return item

    def get_nowait(self) -> Any:
        """Remove and return an item if one is available, without waiting.

        Raises:
            Empty: If the queue is empty.
        """
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return ``num_items`` items at once, without waiting.

        Either all requested items are returned or, if fewer are queued,
        none is removed.

        Raises:
            Empty: If fewer than ``num_items`` items are in the queue.
            ValueError: If ``num_items`` is negative.
            TypeError: If ``num_items`` is not an int.
        """
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError(f"num_items must be an int, got {type(num_items).__name__}")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        status, items = ember.get(self._handle().get_nowait_batch.remote(num_items))
        if status == _EMPTY:
            raise Empty(items)
        return items

    # ------------------------------------------------------------ shutdown
    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Terminate the actor backing the queue; the items it holds are lost.

        Arguments:
            force: If True, kill the actor at once. If False, first wait (up
                to ``grace_period_s`` seconds) for the calls already sent to
                it to be answered, then kill it.
            grace_period_s: How long a non-forced shutdown waits.
        """
        if self.actor is None:
            return
        actor, self.actor = self.actor, None
        if not force:
            _validate_timeout(grace_period_s)
            try:
                ember.wait([actor.ping.remote()], timeout=grace_period_s)
            except Exception:
                pass
        try:
            ember.kill(actor, no_restart=True)
        except Exception:
            pass
