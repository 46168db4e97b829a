"""``ember.data.aggregate``: Ray's aggregation objects, for ``Dataset.aggregate`` and
``GroupedData.aggregate``.

An aggregation is computed in two steps: each block (each group of a block, under ``groupby``) makes
a partial accumulator inside the task that made the block, then one task merges the partials of
every block and finalizes them. The built-ins (Count, Sum, Min, Max, Mean, Std, AbsMax) take a
vectorized path: their partials are columns of one pyarrow hash aggregation per block. Anything else
(Quantile, Unique, a user's ``AggregateFn`` or ``AggregateFnV2`` subclass, a subclass of a built-in)
runs the user's Python on each group's rows as a pyarrow.Table, and its accumulators travel pickled.
"""

import functools
import math

import pyarrow as pa
import pyarrow.compute as pc

from ember.data.block import iter_rows

__all__ = [
    "AbsMax",
    "AggregateFn",
    "AggregateFnV2",
    "Count",
    "Max",
    "Mean",
    "Min",
    "Quantile",
    "Std",
    "Sum",
    "Unique",
]


def _check_on(on, required: bool = False):
    if on is None and not required:
        return None
    if not isinstance(on, str):
        raise TypeError(f"on must be a column name, got {on!r}.")
    return on


class AggregateFn:
    """An aggregation in Ray's accumulator style: ``init(key)`` makes a group's empty accumulator,
    ``accumulate_row(acc, row)`` or ``accumulate_block(acc, block)`` (exactly one) folds rows into
    it, ``merge(acc, acc)`` joins two, and ``finalize(acc)`` gives the result, in the column ``name``.
    ``key`` is the group's key value (a tuple for several keys; None for a whole dataset); a block is
    a pyarrow.Table."""

    def __init__(self, init, merge, name, accumulate_row=None, accumulate_block=None, finalize=None):
        for label, fn in (("init", init), ("merge", merge)):
            if not callable(fn):
                raise TypeError(f"AggregateFn: {label} must be callable, got {fn!r}.")
        if (accumulate_row is None) == (accumulate_block is None):
            raise ValueError("AggregateFn: give exactly one of accumulate_row and accumulate_block.")
        for fn in (accumulate_row, accumulate_block, finalize):
            if fn is not None and not callable(fn):
                raise TypeError(f"AggregateFn: {fn!r} is not callable.")
        if not isinstance(name, str) or not name:
            raise TypeError(f"AggregateFn: name must be a non-empty str, got {name!r}.")
        self.name = name
        self._init, self._merge = init, merge
        self._accumulate_row, self._accumulate_block, self._finalize = accumulate_row, accumulate_block, finalize

    def _block_partial(self, key, block: pa.Table):
        """One group's accumulator from its rows in one block."""
        acc = self._init(key)
        if self._accumulate_block is not None:
            return self._accumulate_block(acc, block)
        for row in iter_rows(block):  # as Dataset.iter_rows gives them: a tensor cell is an ndarray
            acc = self._accumulate_row(acc, row)
        return acc

    def _result(self, key, partials: list):
        """The group's result from its blocks' accumulators (none for an empty dataset)."""
        acc = functools.reduce(self._merge, partials) if partials else self._init(key)
        return self._finalize(acc) if self._finalize is not None else acc

    # The vectorized path's description ((kind, column, ignore_nulls, ddof)), or None: only the
    # built-ins below have one, and only as themselves (a subclass may change what they compute).
    def _vector(self):
        return None

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class AggregateFnV2(AggregateFn):
    """Ray's interface for a custom aggregation: subclass it and implement ``aggregate_block(block)``
    (a block's, or a group's, partial accumulator) and ``combine(current_accumulator, new)``;
    override ``finalize(accumulator)`` if the merged accumulator is not the result itself.
    ``zero_factory()`` makes the empty accumulator the partials are combined into."""

    def __init__(self, name: str, zero_factory, *, on, ignore_nulls: bool):
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: name must be a non-empty str, got {name!r}.")
        if not callable(zero_factory):
            raise TypeError(f"{type(self).__name__}: zero_factory must be callable, got {zero_factory!r}.")
        self.name = name
        self.zero_factory = zero_factory
        self._target_col_name = _check_on(on)
        self._ignore_nulls = bool(ignore_nulls)

    def get_target_column(self):
        """The column this aggregation reads (None: the whole row)."""
        return self._target_col_name

    def aggregate_block(self, block: pa.Table):
        """A block's partial accumulator."""
        raise NotImplementedError(f"{type(self).__name__} must implement aggregate_block(block).")

    def combine(self, current_accumulator, new):
        """Two accumulators made one."""
        raise NotImplementedError(f"{type(self).__name__} must implement combine(current_accumulator, new).")

    def finalize(self, accumulator):
        """The result from the merged accumulator (by default the accumulator itself)."""
        return accumulator

    def _block_partial(self, key, block):
        return self.aggregate_block(block)

    def _result(self, key, partials):
        acc = self.zero_factory()
        for partial in partials:
            acc = self.combine(acc, partial)
        return self.finalize(acc)

    def _values(self, block: pa.Table) -> pa.ChunkedArray:
        column = block.column(self._target_col_name)
        return column.drop_null() if self._ignore_nulls else column


def _name(kind: str, on, alias_name) -> str:
    if alias_name is not None:
        if not isinstance(alias_name, str) or not alias_name:
            raise TypeError(f"alias_name must be a non-empty str, got {alias_name!r}.")
        return alias_name
    return f"{kind}({on or ''})"


def _has_null(block, on) -> bool:
    return block.column(on).null_count > 0


class Count(AggregateFnV2):
    """Rows (``on=None``), or the values of column ``on``: all of them, nulls included, unless
    ``ignore_nulls``. Named ``count()`` / ``count(on)``."""

    def __init__(self, on=None, ignore_nulls: bool = False, alias_name=None):
        super().__init__(_name("count", on, alias_name), lambda: 0, on=on, ignore_nulls=ignore_nulls)

    def aggregate_block(self, block):
        if self._target_col_name is None or not self._ignore_nulls:
            return block.num_rows
        return block.num_rows - block.column(self._target_col_name).null_count

    def combine(self, current_accumulator, new):
        return current_accumulator + new

    def _vector(self):
        return ("count", self._target_col_name, self._ignore_nulls, None)


class _Reducing(AggregateFnV2):
    """Sum, Min and Max: a pyarrow reduction of a column, None for no values, and None for any null
    unless ``ignore_nulls``."""

    _kind = ""

    def __init__(self, on=None, ignore_nulls: bool = True, alias_name=None):
        super().__init__(
            _name(self._kind, on, alias_name), lambda: None, on=_check_on(on, True), ignore_nulls=ignore_nulls
        )

    def _reduce(self, values):
        return getattr(pc, self._kind)(values).as_py()

    def aggregate_block(self, block):
        if not self._ignore_nulls and _has_null(block, self._target_col_name):
            return _NULL
        return self._reduce(self._values(block))

    def combine(self, current_accumulator, new):
        if current_accumulator is _NULL or new is _NULL:
            return _NULL
        if current_accumulator is None or new is None:
            return new if current_accumulator is None else current_accumulator
        return self._reduce(pa.array([current_accumulator, new]))

    def finalize(self, accumulator):
        return None if accumulator is _NULL else accumulator

    def _vector(self):
        return (self._kind, self._target_col_name, self._ignore_nulls, None)


class _Null:
    """The accumulator of a column that held a null when nulls are not ignored (pickles as itself)."""

    def __reduce__(self):
        return "_NULL"


_NULL = _Null()


class Sum(_Reducing):
    """The sum of column ``on``. Named ``sum(on)``."""

    _kind = "sum"


class Min(_Reducing):
    """The least value of column ``on``. Named ``min(on)``."""

    _kind = "min"


class Max(_Reducing):
    """The greatest value of column ``on``. Named ``max(on)``."""

    _kind = "max"


class AbsMax(_Reducing):
    """The greatest absolute value of column ``on``. Named ``abs_max(on)``."""

    _kind = "abs_max"

    def _reduce(self, values):
        return pc.max(pc.abs(values)).as_py()


class Mean(AggregateFnV2):
    """The mean of column ``on`` (None for no values, or for any null unless ``ignore_nulls``).
    Named ``mean(on)``."""

    def __init__(self, on=None, ignore_nulls: bool = True, alias_name=None):
        super().__init__(
            _name("mean", on, alias_name), lambda: [0, 0], on=_check_on(on, True), ignore_nulls=ignore_nulls
        )

    def aggregate_block(self, block):
        if not self._ignore_nulls and _has_null(block, self._target_col_name):
            return _NULL
        values = self._values(block)
        return [pc.sum(values).as_py() or 0, len(values)]

    def combine(self, current_accumulator, new):
        if current_accumulator is _NULL or new is _NULL:
            return _NULL
        return [current_accumulator[0] + new[0], current_accumulator[1] + new[1]]

    def finalize(self, accumulator):
        if accumulator is _NULL or not accumulator[1]:
            return None
        return accumulator[0] / accumulator[1]

    def _vector(self):
        return ("mean", self._target_col_name, self._ignore_nulls, None)


class Std(AggregateFnV2):
    """The standard deviation of column ``on`` with ``ddof`` delta degrees of freedom (None for
    ``ddof`` or fewer values, or for any null unless ``ignore_nulls``). Named ``std(on)``.

    Blocks are summarized as (count, mean, sum of squared deviations from that mean) and merged by
    Chan's update: a sum of squares would lose every digit of the spread of values far from zero
    (timestamps, prices), where this keeps it."""

    def __init__(self, on=None, ddof: int = 1, ignore_nulls: bool = True, alias_name=None):
        if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
            raise ValueError(f"ddof must be a non-negative int, got {ddof!r}.")
        super().__init__(
            _name("std", on, alias_name), lambda: NO_MOMENTS, on=_check_on(on, True), ignore_nulls=ignore_nulls
        )
        self._ddof = ddof

    def aggregate_block(self, block):
        if not self._ignore_nulls and _has_null(block, self._target_col_name):
            return _NULL
        values = pc.cast(self._values(block), pa.float64())
        if not len(values):
            return NO_MOMENTS
        return (len(values), pc.mean(values).as_py(), pc.variance(values, ddof=0).as_py() * len(values))

    def combine(self, current_accumulator, new):
        if current_accumulator is _NULL or new is _NULL:
            return _NULL
        return combine_moments(current_accumulator, new)

    def finalize(self, accumulator):
        return None if accumulator is _NULL else std_of(accumulator, self._ddof)

    def _vector(self):
        return ("std", self._target_col_name, self._ignore_nulls, self._ddof)


NO_MOMENTS = (0, 0.0, 0.0)


def combine_moments(a: tuple, b: tuple) -> tuple:
    """Two (count, mean, sum of squared deviations) summaries of disjoint values made one."""
    (count_a, mean_a, squares_a), (count_b, mean_b, squares_b) = a, b
    if not count_a or not count_b:
        return b if not count_a else a
    count = count_a + count_b
    delta = mean_b - mean_a
    return (count, mean_a + delta * count_b / count, squares_a + squares_b + delta * delta * count_a * count_b / count)


def std_of(moments: tuple, ddof: int):
    """The standard deviation from a (count, mean, sum of squared deviations) summary (None for
    ``ddof`` or fewer values)."""
    count, _, squares = moments
    if count <= ddof:
        return None
    return math.sqrt(max(squares, 0.0) / (count - ddof))


class Quantile(AggregateFnV2):
    """The ``q`` quantile of column ``on``, linearly interpolated between the values around it (as
    numpy's default). Named ``quantile(on)``. Holds every value of a group in one task."""

    def __init__(self, on=None, q: float = 0.5, ignore_nulls: bool = True, alias_name=None):
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1:
            raise ValueError(f"q must be a number in [0, 1], got {q!r}.")
        super().__init__(_name("quantile", on, alias_name), list, on=_check_on(on, True), ignore_nulls=ignore_nulls)
        self._q = float(q)

    def aggregate_block(self, block):
        if not self._ignore_nulls and _has_null(block, self._target_col_name):
            return _NULL
        return self._values(block).to_pylist()

    def combine(self, current_accumulator, new):
        if current_accumulator is _NULL or new is _NULL:
            return _NULL
        return current_accumulator + new

    def finalize(self, accumulator):
        if accumulator is _NULL or not accumulator:
            return None
        values = sorted(accumulator)
        position = self._q * (len(values) - 1)
        low = math.floor(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)


class Unique(AggregateFnV2):
    """The distinct values of column ``on``, as a list (nulls among them unless ``ignore_nulls``).
    Named ``unique(on)``."""

    def __init__(self, on=None, ignore_nulls: bool = False, alias_name=None):
        super().__init__(_name("unique", on, alias_name), set, on=_check_on(on, True), ignore_nulls=ignore_nulls)

    def aggregate_block(self, block):
        return set(pc.unique(self._values(block)).to_pylist())

    def combine(self, current_accumulator, new):
        return current_accumulator | new

    def finalize(self, accumulator):
        try:
            return sorted(accumulator, key=lambda v: (v is None, v))
        except TypeError:  # values that do not compare: Ray gives no order either
            return list(accumulator)


_BUILT_IN = (Count, Sum, Min, Max, AbsMax, Mean, Std)


def vector_of(agg):
    """The vectorized path's description of ``agg``, or None if it runs as Python on each group."""
    return agg._vector() if type(agg) in _BUILT_IN else None
