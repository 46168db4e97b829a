"""``iter_batches(prefetch_batches=N)``: a background thread fetches blocks ahead of the consumer.

Without it the execution advances only when the consumer asks for its next block, and the
consumer's ``get`` (mapping the block, rebuilding the table) runs between its own batches. With it a
thread runs the block stream (the execution, when there is one) and keeps the next block fetched
ahead; the consumer takes it from a queue. One block, whatever ``N``: a block usually holds many
batches, and a deeper queue that the consumer drains in a burst lets go of several blocks at once,
whose releases reach the store later than the executor would fill their place (a queue of three
blocks took the 5x-larger-than-store test a budget's third over).

The budget still holds: the thread's executor is given a ``PrefetchLedger``, which counts the
blocks waiting in the queue as well as the consumer's last few (the one in use, and those let go
since the queue was last full, whose releases may still be on their way to the store), so the store
holds what the executor counts, whichever thread holds a block.

The thread never outlives the consumer: closing the consumer's generator (the end of the data, a
``break``, an error, KeyboardInterrupt, garbage collection) stops the stream in the thread, which
cancels the execution behind it, and waits for that.
"""

import collections
import threading

from ember.data import iterator as it
from ember.data.context import DataContext
from ember.data.executor import ConsumerLedger

_END = object()
POLL_SECONDS = 0.05  # how often a prefetching executor, waiting for tasks, looks whether the consumer left


class PrefetchLedger(ConsumerLedger):
    """A ``ConsumerLedger`` shared by the prefetch thread (``handed``: the executor gave the thread a
    block) and the consumer (``taken``: it took the next table from the queue)."""

    poll_seconds = POLL_SECONDS

    def __init__(self, window: int = 2):
        super().__init__(window)
        self.lock = threading.Condition()
        self.queued = collections.deque()
        self.deepest = 0  # the most blocks the queue has held

    def handed(self, size_bytes: int) -> None:
        with self.lock:
            self.queued.append(size_bytes)
            self.deepest = max(self.deepest, len(self.queued))

    def taken(self) -> None:
        with self.lock:
            if self.queued:  # a stream that is not an execution hands nothing over
                self.recent.append(self.queued.popleft())
                # A consumer that drains a full queue lets go of that many blocks at once, their
                # releases all still on their way to the store: they stay counted that much longer.
                if len(self.recent) > self.window + self.deepest:
                    self.recent.popleft()
                self.lock.notify_all()

    def ahead(self) -> int:
        with self.lock:
            return len(self.queued)

    def wait_for_consumer(self, timeout: float) -> None:
        with self.lock:
            if self.queued and not self.stopped:
                self.lock.wait(timeout)

    def held_bytes(self) -> int:
        with self.lock:
            return sum(self.recent) + sum(self.queued)

    def held_blocks(self) -> int:
        with self.lock:
            return len(self.recent) + len(self.queued)


class Prefetcher:
    """The queue between the thread that runs a block stream and the consumer of its tables (one
    table waits fetched at most)."""

    def __init__(self):
        self.ledger = PrefetchLedger()
        self.cond = threading.Condition()
        self.queue = collections.deque()  # a table, then _END or the exception that ended the stream
        self.thread = None

    def _room(self) -> bool:
        return self.ledger.stopped or not self.queue

    def _run(self, make_bundles, context) -> None:
        stream = table = None
        end = _END
        try:
            DataContext._set_current(context)  # the context is per thread: run under the consumer's
            stream = it.tables(make_bundles(self.ledger))
            while True:
                with self.cond:
                    self.cond.wait_for(self._room)
                if self.ledger.stopped:
                    break
                table = next(stream, _END)
                if table is _END:
                    break
                with self.cond:
                    self.queue.append(table)
                    self.cond.notify_all()
                table = None  # the queue holds it now: this frame must not keep it alive
        except BaseException as error:  # noqa: B036 - whatever ended the stream reaches the consumer
            end = error.with_traceback(None)
        finally:
            table = None
            if stream is not None:
                try:
                    stream.close()  # ends the execution: cancels its tasks, kills its pool's actors
                except BaseException as error:  # noqa: B036
                    end = end if isinstance(end, BaseException) else error
            stream = None
            with self.cond:
                self.queue.append(end)
                self.cond.notify_all()

    def tables(self, make_bundles):
        """The stream's tables in order; ``make_bundles(ledger)`` makes the bundle stream (in the
        thread, once the consumer first asks)."""
        self.thread = threading.Thread(
            target=self._run, args=(make_bundles, DataContext.get_current()), name="ember-data-prefetch", daemon=True
        )
        self.thread.start()
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.queue)
                    item = self.queue.popleft()
                    if item is not _END and not isinstance(item, BaseException):
                        self.ledger.taken()
                    self.cond.notify_all()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                item = None
        finally:
            self.stop()

    def stop(self) -> None:
        """End the thread (and the execution it runs), dropping what it fetched ahead."""
        with self.cond:
            self.ledger.stopped = True
            self.queue.clear()
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


def prefetched_tables(make_bundles):
    """The tables of ``make_bundles(ledger)``'s stream, the next one fetched ahead in a thread."""
    return Prefetcher().tables(make_bundles)
