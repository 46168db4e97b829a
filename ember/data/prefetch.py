"""``iter_batches(prefetch_batches=N)``: blocks fetched ahead of the consumer by a background thread.

Without it the streaming executor advances only when the consumer asks for the next block, so
tasks that finish while the consumer works on a batch leave their workers idle until it asks
again. A ``Prefetcher`` runs the block stream in a thread of its own instead, and keeps the tables
of up to ``N`` batches (at least one block) fetched into this process ahead of the consumer. When
the stream is an execution, the executor runs in that thread and keeps scheduling tasks while the
prefetch is full; the blocks waiting here count against its object-store budget, so backpressure
holds exactly as without prefetching.

The thread never outlives the consumer: closing the consumer's generator (the end of the data, a
``break``, an error, KeyboardInterrupt, or garbage collection) stops the stream, which cancels
the execution behind it, and joins the thread.
"""

import collections
import threading

from ember.data import iterator as it
from ember.data.context import DataContext

_END = object()


class Prefetcher:
    """The hand-off between the thread that runs a block stream and the consumer of its tables.

    ``rows_ahead``: how many rows may wait fetched (``N * batch_size``); with ``None``, ``blocks_ahead``
    blocks may wait instead (``batch_size=None`` batches are whole blocks). At least one block
    always may, however large.
    """

    def __init__(self, rows_ahead: int | None, blocks_ahead: int):
        self.rows_ahead, self.blocks_ahead = rows_ahead, blocks_ahead
        self.cond = threading.Condition()
        self.queue = collections.deque()  # fetched tables, then _END or the exception that ended the stream
        self.rows = 0
        self.bytes = 0
        self.stopped = False
        self.paced_by_executor = False  # set by the executor that feeds it: it waits for room itself
        self.thread = None

    # -- what the executor asks (from the prefetch thread) ----------------------------------------------

    def held_bytes(self) -> int:
        return self.bytes

    def has_room(self) -> bool:
        with self.cond:
            return self.stopped or self._room()

    def wait_for_room(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.stopped or self._room(), timeout)

    def wait_for_consumer(self, timeout: float) -> None:
        """Until the consumer takes a table (or ``timeout``): what frees the budget the prefetch holds."""
        with self.cond:
            if not self.stopped:
                self.cond.wait(timeout)

    def _room(self) -> bool:
        if not self.queue:
            return True
        if self.rows_ahead is None:
            return len(self.queue) < self.blocks_ahead
        return self.rows < self.rows_ahead

    # -- the thread ---------------------------------------------------------------------------------------

    def _run(self, make_bundles, context) -> None:
        stream = end = table = None
        try:
            # The DataContext is per thread: the execution runs under the consumer's.
            DataContext._set_current(context)
            stream = it.tables(make_bundles(self))
            while True:
                if not self.paced_by_executor:
                    # A stream that is not an execution (a materialized dataset, a streaming split's
                    # share) produces only when asked: ask only when there is room.
                    self.wait_for_room(timeout=None)
                if self.stopped:
                    break
                table = next(stream, _END)
                if table is _END:
                    break
                with self.cond:
                    self.queue.append(table)
                    self.rows += table.num_rows
                    self.bytes += table.nbytes
                    self.cond.notify_all()
                table = None  # the consumer holds it now: this frame must not keep its memory
            end = _END
        except BaseException as error:  # noqa: B036 - whatever ended the stream reaches the consumer
            end = error
        finally:
            table = None
            try:
                if stream is not None:
                    stream.close()  # stops the execution: cancels its tasks, kills its pool's actors
            except BaseException as error:  # noqa: B036
                end = end if isinstance(end, BaseException) else error
            stream = None
            with self.cond:
                self.queue.append(end if end is not None else _END)
                self.cond.notify_all()

    # -- the consumer -----------------------------------------------------------------------------------

    def tables(self, make_bundles):
        """The stream's tables, in order; ``make_bundles(prefetcher)`` makes the bundle stream (in
        the thread, when the consumer first asks)."""
        context = DataContext.get_current()
        self.thread = threading.Thread(target=self._run, args=(make_bundles, context), name="ember-data-prefetch")
        self.thread.daemon = True
        self.thread.start()
        reading = 0  # bytes of the table the consumer has now
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    item = self.queue.popleft()
                    # The table handed over stays in the budget until the consumer comes back for
                    # the next: the consumer still holds the previous one while it takes this one,
                    # and the executor, in the other thread, must not fill that space meanwhile.
                    self.bytes -= reading
                    reading = 0
                    if item is not _END and not isinstance(item, BaseException):
                        self.rows -= item.num_rows
                        reading = item.nbytes
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
        """End the thread (and the execution it runs), dropping what it had fetched ahead."""
        with self.cond:
            self.stopped = True
            self.queue.clear()
            self.rows = self.bytes = 0
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


def prefetched_tables(make_bundles, prefetch_batches: int, batch_size: int | None):
    """The tables of ``make_bundles(prefetcher)``'s stream, ``prefetch_batches`` batches fetched ahead."""
    rows_ahead = prefetch_batches * batch_size if batch_size is not None else None
    return Prefetcher(rows_ahead, prefetch_batches).tables(make_bundles)
