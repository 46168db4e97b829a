"""groupby and Dataset.aggregate: partial aggregates per block, combined in one final task;
map_groups by hash shuffle. What each aggregation computes is in ``ember.data.aggregate``."""

import functools

import cloudpickle
import pyarrow as pa
import pyarrow.compute as pc

import ember
from ember.data import block as blk
from ember.data.aggregate import (
    NO_MOMENTS,
    AggregateFn,
    Count,
    Max,
    Mean,
    Min,
    Std,
    Sum,
    combine_moments,
    std_of,
    vector_of,
)
from ember.data.all_to_all import _remote, _resolve, shuffle_blocks
from ember.data.plan import AllToAll, MapOp, Stage


def _parts(spec) -> list:
    """The partial columns (part, column, skip_nulls) a vectorized aggregation needs from each block."""
    kind, column, ignore_nulls, _ = spec
    if kind == "count":
        return [("rows", None, True)] if column is None or not ignore_nulls else [("count", column, True)]
    if kind == "mean":
        return [("sum", column, ignore_nulls), ("count", column, True)]
    if kind == "std":  # each block's (count, mean, variance) per group, merged in the final task
        return [(part, column, ignore_nulls) for part in ("std_count", "std_mean", "std_variance")]
    return [(kind, column, ignore_nulls)]


def _part_name(part) -> str:
    kind, column, skip = part
    return f"{kind}|{column or ''}|{int(skip)}"


# part kind -> (pyarrow function on a block, pyarrow function combining the blocks' partials; "list":
# the final task combines each group's list of partials itself)
_FUNCTIONS = {
    "rows": ("count_all", "sum"),
    "count": ("count", "sum"),
    "sum": ("sum", "sum"),
    "min": ("min", "min"),
    "max": ("max", "max"),
    "abs_max": ("max", "max"),
    "std_count": ("count", "list"),
    "std_mean": ("mean", "list"),
    "std_variance": ("variance", "list"),
}


def _options(kind: str, skip: bool):
    if kind == "count":
        return pc.CountOptions(mode="only_valid")
    if kind == "std_count":  # nulls not ignored are counted: a null mean with values then means "had a null"
        return pc.CountOptions(mode="only_valid" if skip else "all")
    if kind == "std_variance":
        return pc.VarianceOptions(ddof=0, skip_nulls=skip, min_count=1)
    # min_count=1: a group with no values gets null, as Ray's None
    return pc.ScalarAggregateOptions(skip_nulls=skip, min_count=1)


def _std_of_blocks(counts: list, means: list, variances: list, ddof: int):
    """A group's standard deviation from its blocks' counts, means and variances."""
    moments = NO_MOMENTS
    for count, mean, variance in zip(counts, means, variances):
        if not count:  # the block had no values of this group
            continue
        if mean is None or variance is None:  # ... or a null, not ignored
            return None
        moments = combine_moments(moments, (count, mean, variance * count))
    return std_of(moments, ddof)


def _merged_name(part) -> str:
    """The column of ``part`` once the blocks' partials are combined (see _group_by)."""
    return f"{_part_name(part)}_{_FUNCTIONS[part[0]][1]}"


def _group_by(table: pa.Table, keys: list, aggregations: list) -> pa.Table:
    """``table`` grouped by ``keys``, one output column per (input, function, options), named
    '<input>_<function>'. One thread: the task holds one CPU, and Acero's pool would hand the work to
    other threads that then wait for a core on a busy node while this one sleeps."""
    return table.group_by(keys, use_threads=False).aggregate(aggregations)


def _check_columns(table: pa.Table, aggs: list) -> None:
    for agg in aggs:
        spec = vector_of(agg)
        column = spec[1] if spec else getattr(agg, "_target_col_name", None)
        if column is not None and column not in table.column_names:
            raise ValueError(f"{agg.name}: the dataset has no column {column!r}; its columns are {table.column_names}.")


def _partial(table: pa.Table, keys: list, aggs: list) -> pa.Table:
    """One block's partial aggregates: a row per group holding the keys, a column per vectorized
    partial ('<part>|<column>|<skip_nulls>') and a column of pickled accumulators per other aggregation."""
    _check_columns(table, aggs)
    inputs, aggregations, names = {k: table.column(k) for k in keys}, [], []
    for part in dict.fromkeys(p for agg in aggs if vector_of(agg) for p in _parts(vector_of(agg))):
        kind, column, skip = part
        function = _FUNCTIONS[kind][0]
        if kind == "rows":
            aggregations.append(([], function))
            names.append((_part_name(part), function))
            continue
        values = table.column(column)
        if kind in ("std_mean", "std_variance"):  # also a block's all-null column, typed null
            values = pc.cast(values, pa.float64())
        elif kind == "abs_max":
            values = pc.abs(values)
        name = f"in{len(inputs)}"
        inputs[name] = values
        aggregations.append((name, function, _options(kind, skip)))
        names.append((_part_name(part), f"{name}_{function}"))
    generic = [i for i, agg in enumerate(aggs) if not vector_of(agg)]
    if generic and keys:  # each group's rows, to hand the group to the aggregation as a table
        inputs["rows_of_group"] = pa.array(range(table.num_rows), pa.int64())
        aggregations.append(("rows_of_group", "list"))
    if not inputs:  # count() alone of a whole dataset: a table of no columns would have no rows
        inputs["rows"] = pa.nulls(table.num_rows)
    grouped = _group_by(pa.table(inputs), keys, aggregations)
    columns = {k: grouped.column(k) for k in keys}
    for part_name, output in names:
        columns[part_name] = grouped.column(output)
    if generic:
        if keys:
            group_keys = _key_values(grouped, keys)
            groups = [table.take(rows) for rows in grouped.column("rows_of_group_list").to_pylist()]
        else:
            group_keys, groups = [None], [table]
        for i in generic:
            accumulators = [aggs[i]._block_partial(key, group) for key, group in zip(group_keys, groups)]
            columns[f"acc|{i}"] = pa.array([cloudpickle.dumps(a) for a in accumulators], pa.binary())
    return pa.table(columns)


def _key_values(table: pa.Table, keys: list) -> list:
    """Each row's group key as Ray's AggregateFn.init gets it: the value, a tuple of several, None for none."""
    if not keys:
        return [None] * table.num_rows
    values = [table.column(k).to_pylist() for k in keys]
    return values[0] if len(keys) == 1 else list(zip(*values))


def _output_names(aggs: list) -> list:
    """The aggregations' column names, a repeated one suffixed '_2', '_3'... as Ray names them."""
    names, seen = [], {}
    for agg in aggs:
        seen[agg.name] = seen.get(agg.name, 0) + 1
        names.append(agg.name if seen[agg.name] == 1 else f"{agg.name}_{seen[agg.name]}")
    return names


def _final(keys: list, aggs: list, *partials):
    """Every block's partials merged per group, then finalized: one row per group, ordered by key."""
    table = blk.concat([p for p in partials if p.num_rows])
    if not table.num_rows and keys:
        result = pa.table({k: [] for k in keys} | {name: [] for name in _output_names(aggs)})
        return result, blk.metadata_of(result)
    parts = list(dict.fromkeys(p for agg in aggs if vector_of(agg) for p in _parts(vector_of(agg))))
    generic = [f"acc|{i}" for i, agg in enumerate(aggs) if not vector_of(agg)]
    listed = [_part_name(p) for p in parts if _FUNCTIONS[p[0]][1] == "list"] + generic
    parts = [p for p in parts if _FUNCTIONS[p[0]][1] != "list"]
    # A count is never null; the others skip a null partial only if they ignore nulls.
    combine = [(_part_name(p), _FUNCTIONS[p[0]][1], pc.ScalarAggregateOptions(skip_nulls=p[2])) for p in parts]
    if keys:
        merged = _group_by(table, keys, combine + [(n, "list") for n in listed])
        lists = {n: merged.column(f"{n}_list").to_pylist() for n in listed}
    else:  # one group, which a dataset without rows still has (count 0, the rest None)
        if table.num_rows and combine:
            merged = _group_by(table, [], combine)
        else:
            merged = pa.table({_merged_name(p): pa.nulls(1) for p in parts} | {"group": pa.nulls(1)})
        lists = {n: [table.column(n).to_pylist() if table.num_rows else []] for n in listed}
    out = {k: merged.column(k) for k in keys}
    group_keys = _key_values(merged, keys)
    for name, (i, agg) in zip(_output_names(aggs), enumerate(aggs)):
        spec = vector_of(agg)
        if spec is None:
            partials = lists[f"acc|{i}"]
            values = [agg._result(key, [cloudpickle.loads(b) for b in accs]) for key, accs in zip(group_keys, partials)]
            out[name] = blk._array_of(values)
            continue

        def get(part):
            return merged.column(_merged_name(part)).to_pylist()

        kind, column, ignore_nulls, ddof = spec
        if kind == "count":
            out[name] = pa.array([n or 0 for n in get(_parts(spec)[0])], pa.int64())
        elif kind == "mean":
            sums, counts = get(("sum", column, ignore_nulls)), get(("count", column, True))
            out[name] = pa.array([s / c if s is not None and c else None for s, c in zip(sums, counts)], pa.float64())
        elif kind == "std":
            blocks = [lists[_part_name(part)] for part in _parts(spec)]
            out[name] = pa.array([_std_of_blocks(*group, ddof) for group in zip(*blocks)], pa.float64())
        else:
            out[name] = merged.column(_merged_name(_parts(spec)[0]))
    result = pa.table(out)
    if keys:
        result = result.sort_by([(k, "ascending") for k in keys])
    return result, blk.metadata_of(result)


def partial_stage(keys: list, aggs: list, table: pa.Table) -> pa.Table:
    """The map stage before the barrier: a block becomes its few partial rows inside the task that
    made it (fused with the read), so the blocks themselves never wait in the store for the barrier."""
    if not table.num_rows:
        return pa.table({})
    return _partial(table, keys, aggs)


def aggregate_blocks(keys, aggs, groups):
    partials = [ref for ref, meta in groups[0] if meta.num_rows]
    return _resolve([_remote(_final, num_returns=2).options(name="Aggregate").remote(keys, aggs, *partials)])


class GroupedData:
    """The result of ``Dataset.groupby(key)``: aggregations and ``map_groups``."""

    def __init__(self, dataset, key):
        keys = [key] if isinstance(key, str) else list(key or [])
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"groupby keys must be column names, got {k!r}.")
        self._dataset, self._keys = dataset, keys

    def aggregate(self, *aggs):
        """Each group's aggregates: a Dataset with the key columns and one column per aggregation
        (``ember.data.aggregate``: Count, Sum, Mean... or an AggregateFn of your own), ordered by key."""
        if not aggs:
            raise ValueError("aggregate: give at least one aggregation (from ember.data.aggregate).")
        for agg in aggs:
            if not isinstance(agg, AggregateFn):
                raise TypeError(f"aggregate: {agg!r} is not an AggregateFn (see ember.data.aggregate).")
        from ember.data.dataset import Dataset

        stage = Stage(
            "map_batches", functools.partial(partial_stage, self._keys, list(aggs)), batch_format="pyarrow", light=True
        )
        partials = MapOp("AggregatePartial", self._dataset._plan, stage)
        fn = functools.partial(aggregate_blocks, self._keys, list(aggs))
        return Dataset(AllToAll(f"Aggregate[{', '.join(agg.name for agg in aggs)}]", [partials], fn))

    def _on(self, on) -> list:
        """The columns named by ``on``; None: every column but the keys (Ray's default)."""
        if on is None:
            return [c for c in self._dataset.columns() if c not in self._keys]
        return [on] if isinstance(on, str) else list(on)

    def count(self):
        """Rows per group, in the column ``count()``."""
        return self.aggregate(Count())

    def sum(self, on=None, ignore_nulls: bool = True):  # noqa: A003
        """Each group's sum of the column(s) ``on``, in ``sum(<column>)``."""
        return self.aggregate(*[Sum(c, ignore_nulls) for c in self._on(on)])

    def min(self, on=None, ignore_nulls: bool = True):  # noqa: A003
        """Each group's least value of the column(s) ``on``, in ``min(<column>)``."""
        return self.aggregate(*[Min(c, ignore_nulls) for c in self._on(on)])

    def max(self, on=None, ignore_nulls: bool = True):  # noqa: A003
        """Each group's greatest value of the column(s) ``on``, in ``max(<column>)``."""
        return self.aggregate(*[Max(c, ignore_nulls) for c in self._on(on)])

    def mean(self, on=None, ignore_nulls: bool = True):
        """Each group's mean of the column(s) ``on``, in ``mean(<column>)``."""
        return self.aggregate(*[Mean(c, ignore_nulls) for c in self._on(on)])

    def std(self, on=None, ddof: int = 1, ignore_nulls: bool = True):
        """Each group's standard deviation of the column(s) ``on``, in ``std(<column>)``."""
        return self.aggregate(*[Std(c, ddof, ignore_nulls) for c in self._on(on)])

    def map_groups(self, fn, *, batch_format="default", num_partitions=None):
        """Apply ``fn(batch) -> batch`` to all the rows of each group at once."""
        from ember.data.dataset import Dataset

        if not callable(fn):
            raise TypeError(f"map_groups: fn must be callable, got {type(fn).__name__}.")
        batch_format = blk.check_batch_format(batch_format)
        keys = self._keys
        fn_all = functools.partial(
            shuffle_blocks, "hash", num_partitions, lambda i: keys, lambda j: (keys, fn, batch_format), "MapGroups"
        )
        return Dataset(AllToAll(f"MapGroups({getattr(fn, '__name__', 'fn')})", [self._dataset._plan], fn_all))


_ = ember  # the tasks above run through ember.remote (all_to_all._remote)
