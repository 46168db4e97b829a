"""Dataset's all-to-all methods (shuffles, sorts, groupby, splits), kept apart from the rest of the class."""

import functools
import math

import numpy as np

from ember.data import all_to_all as a2a
from ember.data.aggregate import Max, Mean, Min, Std, Sum
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

    def unique(self, column: str, ignore_nulls: bool = False) -> list:
        """The distinct values of ``column`` (None among them if it holds nulls, unless ``ignore_nulls``)."""
        values = [row[column] for row in self.select_columns([column]).groupby(column).count().iter_rows()]
        return [v for v in values if v is not None] if ignore_nulls else values

    def aggregate(self, *aggs) -> dict:
        """The whole dataset's aggregates (``ember.data.aggregate``: Count, Sum, Mean... or an
        AggregateFn of your own), as a dict from each aggregation's name to its value."""
        rows = self.groupby(None).aggregate(*aggs).take_all()
        return rows[0]

    def _aggregate_columns(self, kind, on, **options):
        columns = [on] if isinstance(on, str) else self.columns() if on is None else list(on)
        result = self.aggregate(*[kind(column, **options) for column in columns])
        return next(iter(result.values())) if isinstance(on, str) else result

    def sum(self, on=None, ignore_nulls: bool = True):  # noqa: A003
        """The sum of the column ``on`` (a dict ``{"sum(<column>)": ...}`` for a list of columns or,
        with None, all of them); None for no values, or for any null unless ``ignore_nulls``."""
        return self._aggregate_columns(Sum, on, ignore_nulls=ignore_nulls)

    def min(self, on=None, ignore_nulls: bool = True):  # noqa: A003
        """The least value of the column(s) ``on``, as ``sum`` answers."""
        return self._aggregate_columns(Min, on, ignore_nulls=ignore_nulls)

    def max(self, on=None, ignore_nulls: bool = True):  # noqa: A003
        """The greatest value of the column(s) ``on``, as ``sum`` answers."""
        return self._aggregate_columns(Max, on, ignore_nulls=ignore_nulls)

    def mean(self, on=None, ignore_nulls: bool = True):
        """The mean of the column(s) ``on``, as ``sum`` answers."""
        return self._aggregate_columns(Mean, on, ignore_nulls=ignore_nulls)

    def std(self, on=None, ddof: int = 1, ignore_nulls: bool = True):
        """The standard deviation of the column(s) ``on`` with ``ddof`` delta degrees of freedom, as
        ``sum`` answers."""
        return self._aggregate_columns(Std, on, ddof=ddof, ignore_nulls=ignore_nulls)

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
