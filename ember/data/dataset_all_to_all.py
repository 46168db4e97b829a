"""Dataset's all-to-all methods (shuffles, sorts, groupby, splits), kept apart from the rest of the class."""

import functools
import math

import numpy as np

from ember.data import all_to_all as a2a
from ember.data.plan import AllToAll, InputData


def _tail(table, n):
    return table.slice(table.num_rows - n)


def _classes():
    from ember.data.dataset import Dataset, MaterializedDataset

    return Dataset, MaterializedDataset


class AllToAllMethods:
    """Mixed into Dataset: operations that need every block before they produce any."""

    def repartition(self, num_blocks: int, *, shuffle: bool = False):
        """``num_blocks`` blocks of near-equal row counts (in order, or shuffled with ``shuffle``)."""
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}.")
        if shuffle:
            fn = functools.partial(a2a.shuffle_blocks, "random", num_blocks, lambda i: i, lambda j: j, "Repartition")
        else:
            fn = functools.partial(a2a.repartition_blocks, num_blocks)
        return _classes()[0](AllToAll(f"Repartition[{num_blocks}]", [self._plan], fn))

    def random_shuffle(self, *, seed: int | None = None, num_blocks: int | None = None):
        """The rows in a random order (the same order for the same ``seed`` and blocks)."""
        base = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is not None else None
        map_seed = (lambda i: base + i) if base is not None else (lambda i: None)
        reduce_seed = (lambda j: base + 7919 * (j + 1)) if base is not None else (lambda j: None)
        fn = functools.partial(a2a.shuffle_blocks, "random", num_blocks, map_seed, reduce_seed, "RandomShuffle")
        return _classes()[0](AllToAll("RandomShuffle", [self._plan], fn))

    def sort(self, key: str, descending: bool = False):
        """The rows ordered by the column ``key`` (sample, range-partition, sort each range)."""
        if not isinstance(key, str):
            raise TypeError(f"sort: key must be a column name, got {key!r}.")
        return _classes()[0](
            AllToAll(f"Sort[{key}]", [self._plan], functools.partial(a2a.sort_blocks, key, descending))
        )

    def groupby(self, key):
        """Group rows by the column(s) ``key`` for aggregations or ``map_groups``."""
        from ember.data.grouped import GroupedData

        return GroupedData(self, key)

    def unique(self, column: str) -> list:
        """The distinct values of ``column``."""
        return [row[column] for row in self.select_columns([column]).groupby(column).count().iter_rows()]

    def split(self, n: int, *, equal: bool = False, locality_hints=None) -> list:
        """``n`` materialized datasets: whole blocks dealt out, or exactly equal row counts with
        ``equal`` (the remainder rows are dropped, as in Ray)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}.")
        bundles = self.materialize()._plan.bundles
        if equal:
            each = sum(m.num_rows for _, m in bundles) // n
            pieces = _classes()[0](InputData(bundles)).repartition(n).materialize()._plan.bundles
            parts = [_classes()[0](InputData([b])).limit(each).materialize()._plan.bundles for b in pieces]
        else:
            parts = [bundles[i::n] for i in range(n)]
        return [_classes()[1](InputData(p, "Split")) for p in parts]

    def streaming_split(self, n: int, *, equal: bool = False, locality_hints=None) -> list:
        """``n`` DataIterators fed by one streaming execution, for ``n`` concurrent consumers (Train's
        workers, actors). Blocks go to whichever consumer asks next, or, with ``equal``, every
        consumer gets the same number of rows. Each pass over the iterators is an epoch that starts
        once all ``n`` have begun it, so they must be consumed concurrently."""
        import ember
        from ember.data.data_iterator import StreamSplitDataIterator
        from ember.data.split_coordinator import SplitCoordinator

        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}.")
        # Threaded: each consumer has a call in flight, and one more may wait at the next epoch.
        coordinator = (
            ember.remote(SplitCoordinator).options(num_cpus=0, max_concurrency=2 * n + 1).remote(self, n, bool(equal))
        )
        return [StreamSplitDataIterator(coordinator, i, n) for i in range(n)]

    def train_test_split(self, test_size, *, shuffle: bool = False, seed: int | None = None) -> tuple:
        """(train, test): the last ``test_size`` rows (an int, or a fraction) form the test set."""
        ds = self.random_shuffle(seed=seed) if shuffle else self
        mat = ds.materialize()
        total = mat.count()
        if isinstance(test_size, float):
            if not 0 < test_size < 1:
                raise ValueError(f"test_size must be in (0, 1) as a fraction, got {test_size}.")
            test_rows = math.ceil(total * test_size)
        elif isinstance(test_size, int) and 0 < test_size < total:
            test_rows = test_size
        else:
            raise ValueError(f"test_size must be a fraction or a row count below {total}, got {test_size!r}.")
        table_refs = mat._plan.bundles
        both = _classes()[0](InputData(table_refs)).repartition(1).materialize()._plan.bundles
        whole = _classes()[0](InputData(both))
        train = whole.limit(total - test_rows).materialize()
        test = (
            _classes()[0](InputData(both))
            .map_batches(_tail, fn_args=(test_rows,), batch_format="pyarrow")
            .materialize()
        )
        return train, test
