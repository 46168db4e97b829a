"""Dataset's all-to-all methods (shuffles, sorts, groupby, splits), with sampling and the dataset's
sizes, kept apart from the rest of the class."""

import functools
import math
import numbers

import numpy as np

from ember.data import all_to_all as a2a
from ember.data.aggregate import Max, Mean, Min, Std, Sum
from ember.data.plan import AllToAll, InputData, MapOp, Read, Stage


def _check_seed(seed, what: str) -> None:
    # numpy's generators take only non-negative integers: a bad seed fails here, not in every task.
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"{what}: seed must be a non-negative int or None, got {seed!r}.")


def _source_blocks(plan) -> int:
    """How many blocks the plan's sources start with: read tasks, and blocks in the store that hold
    rows (an in-memory source of no rows is one empty block, where Ray has none)."""
    return sum(
        len(op.tasks) if isinstance(op, Read) else sum(1 for _, meta in op.bundles if meta.num_rows)
        for op in plan.chain()
        if isinstance(op, (Read, InputData))
    )


def _classes():
    from ember.data.dataset import Dataset, MaterializedDataset

    return Dataset, MaterializedDataset


class AllToAllMethods:
    """Mixed into Dataset: operations that need every block before they produce any, with the ones
    that sample rows, cut the dataset at rows and report its sizes."""

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

    def join(
        self,
        ds,
        join_type: str,
        num_partitions: int,
        on=("id",),
        right_on=None,
        left_suffix: str | None = None,
        right_suffix: str | None = None,
        *,
        partition_size_hint: int | None = None,
        aggregator_ray_remote_args: dict | None = None,
        validate_schemas: bool = False,
    ):
        """Rows of this dataset joined with those of ``ds`` where the key columns ``on`` (``right_on``
        on the right, by default the same names) are equal. ``join_type``: "inner", "left_outer",
        "right_outer", "full_outer", "left_semi", "right_semi", "left_anti" or "right_anti". Both
        sides are hash-partitioned into ``num_partitions`` output blocks, each joined by one task
        (``aggregator_ray_remote_args`` are its options). The keys appear once, named as on the left;
        a column both sides have needs ``left_suffix`` or ``right_suffix``. Rows come in no particular
        order. ``partition_size_hint`` is accepted and ignored, as Ray now does."""
        from ember.data.join import JOIN_TYPES, check_keys, join_blocks

        if not isinstance(ds, _classes()[0]):
            raise TypeError(f"join: ds must be a Dataset, got {type(ds).__name__}.")
        if join_type not in JOIN_TYPES:
            raise ValueError(f"join: join_type must be one of {', '.join(JOIN_TYPES)}; got {join_type!r}.")
        if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) or num_partitions < 1:
            raise ValueError(f"join: num_partitions must be a positive int, got {num_partitions!r}.")
        keys = check_keys(on, "on")
        right_keys = check_keys(right_on, "right_on") if right_on is not None else keys
        if len(right_keys) != len(keys):
            raise ValueError(f"join: on {keys} and right_on {right_keys} must name as many columns.")
        for suffix in (left_suffix, right_suffix):
            if suffix is not None and not isinstance(suffix, str):
                raise TypeError(f"join: a suffix must be a str, got {suffix!r}.")
        if validate_schemas:
            for side, side_keys, name in ((self, keys, "left"), (ds, right_keys, "right")):
                names = side.columns()  # once: it may run part of the plan
                missing = [k for k in side_keys if k not in names]
                if missing:
                    raise ValueError(f"join: the {name} dataset has no column {missing[0]!r}.")
        fn = functools.partial(
            join_blocks,
            join_type,
            num_partitions,
            keys,
            right_keys,
            (left_suffix, right_suffix),
            dict(aggregator_ray_remote_args or {}),
        )
        return _classes()[0](AllToAll(f"Join[{join_type}]", [self._plan, ds._plan], fn))

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
        """(train, test), materialized: the last ``test_size`` rows (an int, or a fraction) form the
        test set. The two share the dataset's blocks; only the block the cut falls in is sliced."""
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
        train, test = mat.split_at_indices([total - test_rows])
        return train, test

    def streaming_train_test_split(
        self, test_size: float, *, split_type: str = "random", hash_column: str | None = None, seed=None, **remote_args
    ) -> tuple:
        """(train, test), lazy: each row goes to the test set with probability ``test_size``, drawn
        per block from a stream keyed by ``seed`` and the block's place ("random"), or by a hash of
        its ``hash_column`` value ("hash", the same rows as Ray picks). Nothing is materialized:
        each side runs the plan itself, so the sides are complementary when the plan makes the same
        blocks each time (a "random" split of a plan whose block order varies is not)."""
        if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real) or not 0 < test_size < 1:
            raise ValueError(f"streaming_train_test_split: test_size must be between 0 and 1, got {test_size!r}.")
        if split_type not in ("random", "hash"):
            raise ValueError(f"streaming_train_test_split: split_type must be 'random' or 'hash', got {split_type!r}.")
        if split_type == "hash":
            if seed is not None:
                raise ValueError("streaming_train_test_split: seed is not supported for a hash split.")
            if not isinstance(hash_column, str):
                raise ValueError("streaming_train_test_split: a hash split needs hash_column (a column name).")
        elif hash_column is not None:
            raise ValueError("streaming_train_test_split: hash_column is not supported for a random split.")
        _check_seed(seed, "streaming_train_test_split")
        from ember.data.dataset import _remote_args

        remote_args = _remote_args(None, None, None, None, remote_args)
        sides = []
        for side, train in (("train", True), ("test", False)):
            stage = Stage("split_side", extra=(float(test_size), split_type, seed, hash_column, train), light=True)
            sides.append(_classes()[0](MapOp(f"TrainTestSplit({side})", self._plan, stage, None, remote_args)))
        return tuple(sides)

    # ---- sampling, block order, splits at rows ---------------------------------------------------

    def random_sample(self, fraction: float, *, seed: int | None = None):
        """Each row kept with probability ``fraction`` (about ``fraction`` of the rows, in their
        order). With ``seed`` the same rows are kept on every execution of the same blocks."""
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
            raise ValueError(f"random_sample: fraction must be between 0 and 1, got {fraction!r}.")
        _check_seed(seed, "random_sample")
        if _source_blocks(self._plan) == 0:
            raise ValueError("Cannot sample from an empty Dataset.")
        stage = Stage("random_sample", extra=(float(fraction), seed), light=True)
        return _classes()[0](MapOp(f"RandomSample({fraction})", self._plan, stage))

    def randomize_block_order(self, *, seed: int | None = None):
        """The same blocks in a random order, each block's rows as they were: a cheap shuffle before
        ``split`` (the same order for the same ``seed`` and blocks)."""
        _check_seed(seed, "randomize_block_order")
        return _classes()[0](AllToAll("RandomizeBlockOrder", [self._plan], functools.partial(a2a.permute_blocks, seed)))

    def split_at_indices(self, indices: list) -> list:
        """Materialize the dataset and cut it before each of the sorted row ``indices``, as
        ``np.split`` does: ``len(indices) + 1`` materialized datasets; an index past the end gives
        empty ones."""
        indices = list(indices)
        if len(indices) < 1:
            raise ValueError("split_at_indices: indices must be at least of length 1.")
        for index in indices:
            if not isinstance(index, numbers.Integral) or isinstance(index, bool):
                raise TypeError(f"split_at_indices: indices must be ints, got {index!r}.")
        if sorted(indices) != indices:
            raise ValueError(f"split_at_indices: indices must be sorted, got {indices}.")
        if indices[0] < 0:
            raise ValueError(f"split_at_indices: indices must be non-negative, got {indices}.")
        bundles = self.materialize()._plan.bundles
        pieces = a2a.split_bundles_at(bundles, [int(i) for i in indices])
        return [_classes()[1](InputData(piece, "Split")) for piece in pieces]

    def split_proportionately(self, proportions: list) -> list:
        """Materialize the dataset and split it by ``proportions`` of its rows (each above 0, their
        sum below 1): ``len(proportions) + 1`` materialized datasets, the last with the rest, none
        empty (ValueError when there are too few rows for that)."""
        proportions = list(proportions)
        if len(proportions) < 1:
            raise ValueError("split_proportionately: proportions must be at least of length 1.")
        for p in proportions:
            if isinstance(p, bool) or not isinstance(p, numbers.Real):
                raise TypeError(f"split_proportionately: proportions must be numbers, got {p!r}.")
        if sum(proportions) >= 1:
            raise ValueError(f"split_proportionately: proportions must sum to less than 1, got {proportions}.")
        if any(p <= 0 for p in proportions):
            raise ValueError(f"split_proportionately: proportions must be bigger than 0, got {proportions}.")
        mat = self.materialize()
        indices = a2a.proportion_cuts(mat.count(), proportions)
        return mat.split_at_indices(indices)

    # ---- sizes ------------------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """The in-memory size of the blocks in bytes, from their metadata (the plan runs first unless
        the blocks are already in the store; none is fetched)."""
        if isinstance(self._plan, InputData):
            return sum(meta.size_bytes for _, meta in self._plan.bundles)
        return sum(meta.size_bytes for _, meta in self._bundles())

    def input_files(self) -> list:
        """The files the dataset's reads read, in order ([] for in-memory or materialized data)."""
        files = {}  # ordered, each file once
        for op in self._plan.chain():
            if isinstance(op, Read):
                files.update((f, None) for task in op.tasks for f in task.input_files)
        return list(files)

    def num_blocks(self) -> int:
        """Only a MaterializedDataset knows its block count: a plan's blocks are only known once it
        has run (a read may make more or fewer than it planned)."""
        raise NotImplementedError(
            "num_blocks() is only available on a MaterializedDataset: call ds.materialize() first."
        )
