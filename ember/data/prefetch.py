"""``iter_batches(prefetch_batches=N)``: a background thread fetches blocks ahead of the consumer.

Without it the execution advances only when the consumer asks for its next block, and the
consumer's ``get`` (mapping the block, rebuilding the table) runs between its own batches. With it a
thread runs the block stream (the execution, when there is one) and keeps the tables of about ``N``
batches (at least one block) fetched ahead; the consumer takes them from a queue.

The budget still holds: the thread's executor is given a ``PrefetchLedger``, which counts the
blocks waiting in the queue as well as the consumer's last two (the one in use and the one being
released), so the store holds what the executor counts, whichever thread holds a block.

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

    def handed(self, size_bytes: int) -> None:
        with self.lock:
            self.queued.append(size_bytes)

    def taken(self) -> None:
        with self.lock:
            if self.queued:  # a stream that is not an execution hands nothing over
                self.recent.append(self.queued.popleft())
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
    """The queue between the thread that runs a block stream and the consumer of its tables.

    Up to ``rows_ahead`` rows wait fetched (``None``: up to ``blocks_ahead`` tables); at least one
    table always may, however large.
    """

    def __init__(self, rows_ahead: int | None, blocks_ahead: int):
        self.rows_ahead, self.blocks_ahead = rows_ahead, blocks_ahead
        self.ledger = PrefetchLedger()
        self.cond = threading.Condition()
        self.queue = collections.deque()  # tables, then _END or the exception that ended the stream
        self.rows = 0
        self.thread = None

    def _room(self) -> bool:
        if self.ledger.stopped or not self.queue:
            return True
        if self.rows_ahead is None:
            return len(self.queue) < self.blocks_ahead
        return self.rows < self.rows_ahead

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
                    self.rows += table.num_rows
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
                        self.rows -= item.num_rows
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
            self.rows = 0
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


def prefetched_tables(make_bundles, prefetch_batches: int, batch_size: int | None):
    """The tables of ``make_bundles(ledger)``'s stream with ``prefetch_batches`` batches fetched ahead."""
    rows_ahead = prefetch_batches * batch_size if batch_size is not None else None
    return Prefetcher(rows_ahead, prefetch_batches).tables(make_bundles)
