"""Dataset.join: both sides hash-partitioned by their keys into the same n partitions, then one task
per partition joins its two halves with pyarrow.

pyarrow's hash join only carries a few column types beside the keys (no tensors, for one), so a
partition joins just the keys and each side's row numbers, and every other column is then taken by
row number: any column type joins, and an outer join's missing side becomes nulls.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ember.data import block as blk
from ember.data.all_to_all import _partition, _remote, _resolve, builtins_range

JOIN_TYPES = ("inner", "left_outer", "right_outer", "full_outer", "left_semi", "right_semi", "left_anti", "right_anti")
_LEFT_ROW, _RIGHT_ROW = "__ember_left_row", "__ember_right_row"


def check_keys(keys, what: str) -> list:
    """``keys`` (a column name or a sequence of them) as a list, or TypeError/ValueError."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError(f"join: {what} must name at least one column.")
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"join: {what} must be column names, got {key!r}.")
    return keys


def _side(parts: list, schema, keys: list, other_schema, other_keys: list) -> pa.Table:
    """One side of a partition; a side with no blocks at all (no schema known) is an empty table of
    just its keys, typed as the other side's."""
    table = blk.concat(parts)
    if table.num_columns:
        return table
    if schema is not None:
        return schema.empty_table()
    types = [other_schema.field(k).type if other_schema and k in other_schema.names else pa.null() for k in other_keys]
    return pa.schema(list(zip(keys, types))).empty_table()


def _check_key_columns(table: pa.Table, keys: list) -> None:
    missing = [k for k in keys if k not in table.column_names]
    if missing and (table.num_columns or table.num_rows):
        raise ValueError(f"join: no key column {missing[0]!r}; the columns are {table.column_names}.")


def _partition_by_keys(table: pa.Table, n: int, keys: list):
    """One block's n parts by the hash of its key values (checked first, for a clear error)."""
    _check_key_columns(table, keys)
    return _partition(table, n, "hash", keys)


def _numbered(table: pa.Table, keys: list, names: list, row_name: str) -> pa.Table:
    """The key columns of ``table`` (renamed ``names``) and each row's number."""
    _check_key_columns(table, keys)
    columns = [*(table.column(k) for k in keys), pa.array(np.arange(table.num_rows, dtype=np.int64))]
    return pa.table(columns, [*names, row_name])


def _output_names(left: pa.Table, right: pa.Table, keys, right_keys, left_suffix, right_suffix) -> tuple:
    left_rest = [c for c in left.column_names if c not in keys]
    right_rest = [c for c in right.column_names if c not in right_keys]
    overlap = set(left_rest) & set(right_rest)
    if overlap and left_suffix is None and right_suffix is None:
        raise ValueError(
            f"join: both sides have the columns {sorted(overlap)}: give left_suffix or right_suffix to tell them apart."
        )

    def named(columns, suffix):
        return [(c, c + suffix if c in overlap and suffix else c) for c in columns]

    return named(left.column_names, left_suffix), named(right_rest, right_suffix)


def join_partition(n_left: int, how: tuple, schemas: tuple, *parts):
    """Join partition j: the left side's parts of it (the first ``n_left``) with the right side's."""
    join_type, keys, right_keys, left_suffix, right_suffix = how
    left_schema, right_schema = schemas
    left = _side(list(parts[:n_left]), left_schema, keys, right_schema, right_keys)
    right = _side(list(parts[n_left:]), right_schema, right_keys, left_schema, keys)
    # The right keys renamed: the sides may share key names, and each side's row numbers are all
    # the join has to give back.
    renamed = [f"__ember_right_key{i}" for i in builtins_range(len(right_keys))]
    pairs = _numbered(left, keys, keys, _LEFT_ROW).join(
        _numbered(right, right_keys, renamed, _RIGHT_ROW),
        keys=keys,
        right_keys=renamed,
        join_type=join_type.replace("_", " "),
        coalesce_keys=False,
        use_threads=False,  # the task holds one CPU
    )
    if join_type.startswith("left_") and not join_type.endswith("outer"):  # semi, anti: left rows only
        return _block(left.take(pairs.column(_LEFT_ROW)))
    if join_type.startswith("right_") and not join_type.endswith("outer"):
        return _block(right.take(pairs.column(_RIGHT_ROW)))
    left_names, right_names = _output_names(left, right, keys, right_keys, left_suffix, right_suffix)
    left_rows, right_rows = pairs.column(_LEFT_ROW), pairs.column(_RIGHT_ROW)
    right_key_of = dict(zip(keys, right_keys))
    # The left side's columns in its order, then the right side's other columns.
    columns = {}
    for old, new in left_names:
        values = left.column(old).take(left_rows)
        if old in right_key_of:  # one key column: a row only the right side has takes its key from there
            other = right.column(right_key_of[old]).take(right_rows)
            values = pc.coalesce(values, other.cast(values.type) if other.type != values.type else other)
        columns[new] = values
    columns |= {new: right.column(old).take(right_rows) for old, new in right_names}
    return _block(pa.table(columns))


def _block(table: pa.Table):
    return table, blk.metadata_of(table)


def _schema_of(bundles: list):
    schemas = [meta.schema for _, meta in bundles if meta.schema is not None and len(meta.schema)]
    return schemas[0] if schemas else None


def join_blocks(join_type: str, n: int, keys: list, right_keys: list, suffixes: tuple, task_options: dict, groups):
    """Partition both sides by key hash into ``n`` parts each, then join part j of every left block
    with part j of every right block: ``n`` output blocks."""
    left, right = groups
    mapper = _remote(_partition_by_keys, num_returns=n) if n > 1 else _remote(_partition_by_keys)

    def partitioned(bundles, side_keys, name):
        out = []
        for ref, _ in bundles:
            parts = mapper.options(num_returns=n, name=name).remote(ref, n, side_keys)
            out.append(parts if n > 1 else [parts])
        return out

    left_parts = partitioned(left, keys, "JoinPartitionLeft")
    right_parts = partitioned(right, right_keys, "JoinPartitionRight")
    joiner = _remote(join_partition, num_returns=2)
    how = (join_type, keys, right_keys, *suffixes)
    schemas = (_schema_of(left), _schema_of(right))
    pairs = [
        joiner.options(name="Join", **task_options).remote(
            len(left_parts), how, schemas, *[p[j] for p in left_parts], *[p[j] for p in right_parts]
        )
        for j in builtins_range(n)
    ]
    return _resolve(pairs)
