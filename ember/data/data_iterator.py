"""``DataIterator``: what a consumer holds to iterate over a dataset, or over its share of one.

``Dataset.iterator()`` gives one over the whole dataset; ``Dataset.streaming_split(n)`` gives ``n``
of them fed by one execution (``split_coordinator``), which is what a Train worker gets from
``get_dataset_shard``. Each ``iter_*`` call is one pass (an epoch); an iterator pickles, so it can be
handed to a task or an actor.
"""

import ember
from ember.data import block as blk
from ember.data import iterator as it


class DataIterator:
    """Iterates over a dataset (or a share of it) in rows or batches (Ray's ``DataIterator``)."""

    # Whether iter_batches may run a pass in a prefetch thread (not a streaming split's share: see there).
    _prefetch_in_thread = True

    def _bundles(self, ledger=None):
        """One pass: ``(block ref, metadata)`` pairs, or ``(block ref, None, start, length)`` slices;
        ``ledger``: the prefetcher's, when its thread runs the pass."""
        raise NotImplementedError

    def iter_batches(
        self,
        *,
        prefetch_batches: int = 1,
        batch_size: int | None = 256,
        batch_format="default",
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ):
        """Iterate over batches of ``batch_size`` rows (across block boundaries) in ``batch_format``.

        ``prefetch_batches``: above 0, a background thread runs the execution (within its
        object-store budget) and keeps the next block fetched ahead of the consumer (one block,
        whatever the number: see ``ember.data.prefetch``); 0 runs the execution in the consuming
        thread, only as the consumer asks.
        """
        if not isinstance(prefetch_batches, int) or isinstance(prefetch_batches, bool) or prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be a non-negative int, got {prefetch_batches!r}.")
        if prefetch_batches and self._prefetch_in_thread:
            from ember.data.prefetch import prefetched_tables

            stream = prefetched_tables(lambda ledger: self._bundles(ledger=ledger))
        else:
            stream = it.tables(self._bundles())
        return it.iter_batches(
            stream,
            batch_size=batch_size,
            batch_format=blk.check_batch_format(batch_format),
            drop_last=drop_last,
            shuffle_buffer=local_shuffle_buffer_size,
            seed=local_shuffle_seed,
        )

    def iter_rows(self):
        """Iterate over the rows, each a dict."""
        return it.iter_rows(self._bundles())

    def iter_torch_batches(
        self,
        *,
        batch_size: int | None = 256,
        dtypes=None,
        device="auto",
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
        prefetch_batches: int = 1,
    ):
        """Iterate over batches as dicts of torch tensors (needs torch)."""
        batches = self.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=drop_last,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed,
        )
        return it.torch_batches(batches, dtypes, device)

    def materialize(self):
        """One pass kept in the object store, as a ``MaterializedDataset``."""
        from ember.data.dataset import MaterializedDataset
        from ember.data.plan import InputData

        bundles = [(ember.put(table), blk.metadata_of(table)) for table in it.tables(self._bundles())]
        return MaterializedDataset(InputData(bundles, "Materialized"))


class DatasetIterator(DataIterator):
    """``Dataset.iterator()``: every pass runs the dataset's plan again."""

    def __init__(self, dataset):
        self._dataset = dataset

    def _bundles(self, ledger=None):
        return self._dataset._bundles(ledger=ledger)

    def __repr__(self) -> str:
        return f"DataIterator({self._dataset!r})"


class StreamSplitDataIterator(DataIterator):
    """Share ``split`` of ``n`` of one streaming execution; passes are epochs that start when all
    ``n`` consumers have begun them."""

    def __init__(self, coordinator, split: int, n: int):
        self._coordinator = coordinator
        self._split = split
        self._n = n
        self._epoch = 0

    # The next request to the coordinator is always in flight (below): that is this share's
    # prefetch. A thread would add nothing, and could wait without end at an epoch's barrier for the
    # other consumers after its own consumer had stopped.
    _prefetch_in_thread = False

    def _bundles(self, ledger=None):
        epoch = self._epoch
        self._epoch += 1
        coordinator, split = self._coordinator, self._split
        # One request always in flight: the next slices are on their way while these are consumed.
        pending = coordinator.next_bundles.remote(split, epoch)
        while True:
            items = ember.get(pending)
            if items is None:
                return
            pending = coordinator.next_bundles.remote(split, epoch)
            for ref, _rows, start, length in items:
                yield ref, None, start, length

    def __repr__(self) -> str:
        return f"DataIterator(streaming split {self._split} of {self._n})"
