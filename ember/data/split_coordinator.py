"""``Dataset.streaming_split``: one execution feeding ``n`` consumers, block by block.

    consumer i (a DataIterator, anywhere in the cluster)        SplitCoordinator actor
      next_bundles(i, epoch) ------------------------------->  [epoch barrier: all n asked?]
                                                               pulls blocks from the executor
                                                               (its own thread of the stream),
                                                               deals them out (SplitDealer)
      <--------------------- [(block ref, rows, start, length), ...] | None at the end

The coordinator is an actor (a threaded one: each consumer has one call in flight) so that the
execution runs once, wherever the consumers are, and its blocks (owned by the coordinator) are
borrowed by the consumers. Each epoch runs the dataset again; it starts when all ``n`` consumers
have asked for it, as in Ray. Decisions (who gets which rows) live in ``SplitDealer``, a plain
class; the actor only pulls blocks and hands out what the dealer decided.
"""

import threading
from collections import deque


class SplitDealer:
    """Deals blocks to ``n`` splits.

    Unequal: a block goes whole to the split that asked for it (the fastest consumer takes more).
    Equal: every block is cut into ``n`` slices of ``rows // n`` rows, one per split; the rows left
    over (fewer than ``n`` a block) wait until there are ``n`` of them and then go one to each split,
    so every split always has the same row count; fewer than ``n`` rows left at the end are dropped
    (Ray's ``equal=True``).
    """

    def __init__(self, n: int, equal: bool):
        self.n = n
        self.equal = equal
        self.queues = [deque() for _ in range(n)]  # per split: (ref, rows, start, length)
        self.spare: list = []  # equal: single leftover rows (ref, rows, index) waiting for company

    def deal(self, asker: int, ref, num_rows: int) -> None:
        """A block from the stream, pulled because split ``asker`` wanted more."""
        if not num_rows:
            return
        if not self.equal:
            self.queues[asker].append((ref, num_rows, 0, num_rows))
            return
        each = num_rows // self.n
        if each:
            for split, queue in enumerate(self.queues):
                queue.append((ref, num_rows, split * each, each))
        self.spare.extend((ref, num_rows, index) for index in range(self.n * each, num_rows))
        while len(self.spare) >= self.n:
            for split, (spare_ref, rows, index) in enumerate(self.spare[: self.n]):
                self.queues[split].append((spare_ref, rows, index, 1))
            del self.spare[: self.n]

    def take(self, split: int) -> list:
        """Everything dealt to ``split`` so far (then forgotten here)."""
        queue = self.queues[split]
        items = list(queue)
        queue.clear()
        return items


class SplitCoordinator:
    """The actor behind ``streaming_split`` (create it with ``max_concurrency >= n``)."""

    def __init__(self, dataset, n: int, equal: bool):
        self.dataset = dataset
        self.n = n
        self.equal = equal
        self.cond = threading.Condition()
        self.epoch = -1
        self.asked: dict = {}  # epoch -> the splits that asked for it
        self.dealer = SplitDealer(n, equal)
        self.stream = None
        self.pulling = False
        self.ended = True
        self.error: BaseException | None = None  # the execution's failure, raised to every consumer

    def next_bundles(self, split: int, epoch: int):
        """The next slices for ``split`` in ``epoch``: a non-empty list, or None once its share of
        the epoch is done (or the epoch was overtaken by a newer one)."""
        if not 0 <= split < self.n:
            raise ValueError(f"split must be in [0, {self.n}), got {split!r}.")
        with self.cond:
            if epoch > self.epoch:
                self._arrive(split, epoch)
            if epoch < self.epoch:
                return None  # a consumer that left an epoch early; the others moved on
            while True:
                items = self.dealer.take(split)
                if items:
                    return items
                if self.error is not None:
                    raise self.error
                if self.ended:
                    return None
                if self.pulling:
                    self.cond.wait()  # another consumer is pulling: its block may be dealt to us too
                    if epoch != self.epoch:
                        return None
                    continue
                self._pull(split)

    def _arrive(self, split: int, epoch: int) -> None:
        asked = self.asked.setdefault(epoch, set())
        asked.add(split)
        if len(asked) == self.n:
            del self.asked[epoch]
            self._start(epoch)
            self.cond.notify_all()
        else:
            self.cond.wait_for(lambda: self.epoch >= epoch)

    def _start(self, epoch: int) -> None:
        if self.stream is not None:
            self.stream.close()  # an epoch left early: cancel what the old execution still runs
        self.dealer = SplitDealer(self.n, self.equal)
        self.stream = self.dataset._bundles(progress=False)
        self.epoch, self.ended, self.error = epoch, False, None

    def _pull(self, split: int) -> None:
        """One block from the stream, with the lock released while the executor works."""
        self.pulling = True
        stream = self.stream
        self.cond.release()
        error = None
        try:
            bundle = next(stream, None)
        except Exception as exc:
            bundle, error = None, exc
        finally:
            self.cond.acquire()
            self.pulling = False
            self.cond.notify_all()
        if stream is not self.stream:
            return  # a new epoch started meanwhile
        if error is not None:
            self.error, self.ended = error, True
        elif bundle is None:
            self.ended = True
        else:
            ref, meta = bundle
            self.dealer.deal(split, ref, meta.num_rows)
