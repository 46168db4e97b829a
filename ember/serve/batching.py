"""``@serve.batch``: calls that arrive together run as one call on a list (Ray Serve's batching).

Each call puts its argument on the replica's queue for that method and waits; a loop on the
replica's event loop takes the first waiting item, gathers more until ``max_batch_size`` items or
``batch_wait_timeout_s`` after the first, calls the method once with the list, and hands each
caller its element of the returned list (or the exception, to every caller of the batch).
"""

import asyncio
import functools
import inspect
import numbers


def _check(max_batch_size, batch_wait_timeout_s, max_concurrent_batches):
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}.")
    if (
        isinstance(batch_wait_timeout_s, bool)
        or not isinstance(batch_wait_timeout_s, numbers.Real)
        or (batch_wait_timeout_s < 0)
    ):
        raise ValueError(f"batch_wait_timeout_s must be a non-negative number, got {batch_wait_timeout_s!r}.")
    if (
        isinstance(max_concurrent_batches, bool)
        or not isinstance(max_concurrent_batches, int)
        or (max_concurrent_batches < 1)
    ):
        raise ValueError(f"max_concurrent_batches must be a positive int, got {max_concurrent_batches!r}.")


class _BatchQueue:
    def __init__(self, function, owner, max_batch_size: int, timeout_s: float, max_concurrent: int):
        self.function = function
        self.owner = owner
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.slots = asyncio.Semaphore(max_concurrent)
        self.task = asyncio.get_running_loop().create_task(self._loop())
        self.batch_sizes: list = []  # recent batch sizes, for tests and the curious

    async def submit(self, item):
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.timeout_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            await self.slots.acquire()
            loop.create_task(self._run(batch))

    async def _run(self, batch: list) -> None:
        try:
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-100:]
            items = [item for item, _ in batch]
            args = (items,) if self.owner is None else (self.owner, items)
            results = self.function(*args)
            if inspect.isawaitable(results):
                results = await results
            results = list(results)
            if len(results) != len(items):
                raise TypeError(
                    f"A @serve.batch method must return one result per input: got {len(results)} for {len(items)}."
                )
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            self.slots.release()


def batch(_func=None, *, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.01, max_concurrent_batches: int = 1):
    """Decorate a method (or function) taking a list and returning a list of the same length; callers
    then pass one item each and get one result each. The decorated method must be awaited."""
    _check(max_batch_size, batch_wait_timeout_s, max_concurrent_batches)

    def decorate(function):
        parameters = list(inspect.signature(function).parameters)
        is_method = bool(parameters) and parameters[0] == "self"
        # The queue lives on the instance (or the wrapper): the decorated class must stay picklable.
        attribute = f"_serve_batch_queue_{function.__name__}"

        def queue_for(owner):
            holder = owner if owner is not None else function_wrapper
            queue = getattr(holder, attribute, None)
            if queue is None:
                queue = _BatchQueue(function, owner, max_batch_size, batch_wait_timeout_s, max_concurrent_batches)
                setattr(holder, attribute, queue)
            return queue

        if is_method:

            @functools.wraps(function)
            async def method_wrapper(self, item):
                return await queue_for(self).submit(item)

            return method_wrapper

        @functools.wraps(function)
        async def function_wrapper(item):
            return await queue_for(None).submit(item)

        return function_wrapper

    if _func is not None:
        return decorate(_func)
    return decorate
