"""groupby: partial aggregates per block, combined in one final task; map_groups by hash shuffle."""

import functools
import math

import pyarrow as pa

import ember
from ember.data import block as blk
from ember.data.all_to_all import _remote, _resolve, shuffle_blocks
from ember.data.plan import AllToAll, MapOp, Stage

_PARTIALS = {
    "count": ("count",),
    "sum": ("sum",),
    "min": ("min",),
    "max": ("max",),
    "mean": ("sum", "count"),
    "std": ("sum", "count", "sumsq"),
}


def _needed(specs: list) -> list:
    """The distinct partials (part, column) that ``specs`` need."""
    needed = []
    for kind, column in specs:
        for part in _PARTIALS[kind]:
            item = (part, column if kind != "count" else None)
            if item not in needed:
                needed.append(item)
    return needed


def _pyarrow_agg(part, column):
    if part == "count":
        if column is None:  # count(): the group's rows
            return [], "count_all", "count_all"
        # A mean's or std's count: the column's non-null values (as Ray's ignore_nulls), one per column.
        return column, "count", f"{column}_count"
    if part == "sumsq":
        return f"__sq_{column}", "sum", f"__sq_{column}_sum"
    return column, part, f"{column}_{part}"


def _partial(table: pa.Table, keys: list, specs: list):
    """Per-block partial aggregates: one row per group, columns named '<part>|<column>'."""
    work = table
    for kind, column in specs:
        if kind == "std" and f"__sq_{column}" not in work.column_names:
            values = pa.compute.cast(table.column(column), pa.float64())
            work = work.append_column(f"__sq_{column}", pa.compute.multiply(values, values))
    needed = _needed(specs)
    # One thread: the task holds one CPU, and Acero's pool would hand the work to other threads that
    # then wait for a core on a busy node while this one sleeps.
    grouped = work.group_by(keys, use_threads=False).aggregate([_pyarrow_agg(p, c)[:2] for p, c in needed])
    columns = {k: grouped.column(k) for k in keys}
    for part, column in needed:
        columns[f"{part}|{column}"] = grouped.column(_pyarrow_agg(part, column)[2])
    return pa.table(columns)


_COMBINE = {"count": "sum", "sum": "sum", "sumsq": "sum", "min": "min", "max": "max"}


def _final(keys: list, specs: list, ddof: int, *partials):
    table = blk.concat([p for p in partials if p.num_rows])
    if not table.num_rows:
        result = pa.table({k: [] for k in keys})
        return result, blk.metadata_of(result)
    names = [n for n in table.column_names if n not in keys]
    merged = table.group_by(keys, use_threads=False).aggregate([(n, _COMBINE[n.split("|", 1)[0]]) for n in names])

    def get(part, column):
        return merged.column(f"{part}|{column}_{_COMBINE[part]}")

    out = {k: merged.column(k) for k in keys}
    for kind, column in specs:
        if kind == "count":
            out["count()"] = get("count", None)
        elif kind in ("sum", "min", "max"):
            out[f"{kind}({column})"] = get(kind, column)
        elif kind == "mean":
            sums, counts = get("sum", column).to_pylist(), get("count", column).to_pylist()
            out[f"mean({column})"] = [s / c if c else None for s, c in zip(sums, counts)]
        else:
            values = []
            for s, c, q in zip(*(get(p, column).to_pylist() for p in ("sum", "count", "sumsq"))):
                values.append(math.sqrt(max(q - s * s / c, 0.0) / (c - ddof)) if c and c > ddof else None)
            out[f"std({column})"] = values
    result = pa.table(out)
    if keys:
        result = result.sort_by([(k, "ascending") for k in keys])
    return result, blk.metadata_of(result)


def partial_stage(keys: list, specs: list, table: pa.Table) -> pa.Table:
    """The map stage before the barrier: a block becomes its few partial rows inside the task that
    made it (fused with the read), so the blocks themselves never wait in the store for the barrier."""
    if not table.num_rows:
        return pa.table({})
    return _partial(table, keys, specs)


def aggregate_blocks(keys, specs, ddof, groups):
    partials = [ref for ref, meta in groups[0] if meta.num_rows]
    return _resolve([_remote(_final, num_returns=2).options(name="Aggregate").remote(keys, specs, ddof, *partials)])


class GroupedData:
    """The result of ``Dataset.groupby(key)``: aggregations and ``map_groups``."""

    def __init__(self, dataset, key):
        keys = [key] if isinstance(key, str) else list(key or [])
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"groupby keys must be column names, got {k!r}.")
        self._dataset, self._keys = dataset, keys

    def _aggregate(self, specs, ddof=1):
        from ember.data.dataset import Dataset

        label = ", ".join(f"{k}({c or ''})" for k, c in specs)
        stage = Stage(
            "map_batches", functools.partial(partial_stage, self._keys, specs), batch_format="pyarrow", light=True
        )
        partials = MapOp("AggregatePartial", self._dataset._plan, stage)
        fn = functools.partial(aggregate_blocks, self._keys, specs, ddof)
        return Dataset(AllToAll(f"Aggregate[{label}]", [partials], fn))

    @staticmethod
    def _on(on) -> list:
        if on is None:
            raise ValueError("Name the column(s) to aggregate with on=.")
        return [on] if isinstance(on, str) else list(on)

    def count(self):
        """Rows per group, in the column ``count()``."""
        return self._aggregate([("count", None)])

    def sum(self, on=None):  # noqa: A003
        return self._aggregate([("sum", c) for c in self._on(on)])

    def min(self, on=None):  # noqa: A003
        return self._aggregate([("min", c) for c in self._on(on)])

    def max(self, on=None):  # noqa: A003
        return self._aggregate([("max", c) for c in self._on(on)])

    def mean(self, on=None):
        return self._aggregate([("mean", c) for c in self._on(on)])

    def std(self, on=None, ddof: int = 1):
        return self._aggregate([("std", c) for c in self._on(on)], ddof)

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
