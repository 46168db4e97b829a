"""Blocks (pyarrow Tables) and the batch formats user functions see.

A block travels through the object store; its metadata (rows, bytes, schema) stays beside its ref
on the driver so that counts, schemas and the executor's memory budget need no fetch.
"""

import pickle
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

BATCH_FORMATS = ("default", "numpy", "pandas", "pyarrow")


class _PickledScalar(pa.ExtensionScalar):
    def as_py(self, **kwargs):
        return None if self.value is None else pickle.loads(self.value.as_py())


class PickledType(pa.ExtensionType):
    """A column of Python objects Arrow cannot type (tuples of mixed values, arbitrary classes), one
    pickle per row, that rows and batches give back as the objects (Ray's object columns).

    Deliberately not registered with pyarrow: blocks carry the type through the object store (a
    pickled table names this class), but a file read back (Parquet keeps extension metadata) gives
    plain bytes, so reading a data file never unpickles what is in it.
    """

    def __init__(self):
        super().__init__(pa.binary(), "ember.pickled")

    def __arrow_ext_serialize__(self):
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls()

    def __arrow_ext_scalar_class__(self):
        return _PickledScalar


def _objects(column) -> np.ndarray:
    values = column.to_pylist()
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # item by item: numpy would unpack tuples and lists
        out[i] = value
    return out


def to_pandas(table: pa.Table):
    """A block as a pandas DataFrame, object columns holding the objects (not their pickles)."""
    df = table.to_pandas()
    for name in table.column_names:
        if isinstance(table.column(name).type, PickledType):
            df[name] = _objects(table.column(name))
    return df


@dataclass(frozen=True)
class BlockMetadata:
    """What the driver knows about a block without fetching it (Ray's ``BlockMetadata``): rows, bytes
    in memory and schema (None where unknown), the files it was read from (a tuple), and Ray's
    execution statistics fields, which Ember keeps but does not fill in.

    Positionally (num_rows, size_bytes, schema), as Ray's older versions; Ray 2.60's third positional
    field is exec_stats, so code that is to run on both names the fields."""

    num_rows: int | None
    size_bytes: int | None
    schema: pa.Schema | None = None
    input_files: tuple | None = None
    exec_stats: object = None
    task_exec_stats: object = None

    def __post_init__(self):
        if self.input_files is not None and not isinstance(self.input_files, tuple):
            # A tuple keeps the frozen metadata hashable.
            object.__setattr__(self, "input_files", tuple(self.input_files))


def metadata_of(table: pa.Table) -> BlockMetadata:
    return BlockMetadata(table.num_rows, table.nbytes, table.schema)


def check_batch_format(batch_format) -> str:
    if batch_format is None:
        return "default"
    if batch_format not in BATCH_FORMATS:
        raise ValueError(f"batch_format must be one of {', '.join(map(repr, BATCH_FORMATS))}, got {batch_format!r}.")
    return batch_format


def _is_tensor(column_type) -> bool:
    return isinstance(column_type, pa.FixedShapeTensorType)


def column_to_numpy(column: pa.ChunkedArray, zero_copy: bool = False) -> np.ndarray:
    """A column as numpy; tensor columns come back as one ndarray of shape (rows, *shape), object
    columns as an object array of the values."""
    if isinstance(column.type, PickledType):
        return _objects(column)
    if _is_tensor(column.type):
        chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        return chunk.to_numpy_ndarray()
    if column.num_chunks == 1:
        try:
            return column.chunk(0).to_numpy(zero_copy_only=True)
        except pa.ArrowInvalid:
            pass
    values = column.to_numpy()
    if values.dtype == object and pa.types.is_list(column.type):
        # Equal-length lists read best as one 2-D array, as Ray shows them.
        try:
            return np.stack(values)
        except ValueError:
            return values
    return values


def to_batch(table: pa.Table, batch_format: str, zero_copy: bool = False):
    """Convert a block to the batch format a user function asked for."""
    if batch_format == "pyarrow":
        return table
    if batch_format == "pandas":
        return to_pandas(table)
    batch = {name: column_to_numpy(table.column(name), zero_copy) for name in table.column_names}
    if not zero_copy:
        # Arrays mapped from the shared-memory store are read-only; a user function that mutates
        # its batch in place (as Ray's default allows) needs its own copy.
        batch = {k: (v.copy() if isinstance(v, np.ndarray) and not v.flags.writeable else v) for k, v in batch.items()}
    return batch


def _array_of(values) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.ndim > 1:
        if len(values) == 0:
            value_type = pa.from_numpy_dtype(values.dtype)
            storage = pa.array([], pa.list_(value_type, int(np.prod(values.shape[1:]))))
            return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, values.shape[1:]), storage)
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))
    if isinstance(values, list) and values and isinstance(values[0], np.ndarray):
        shapes = {v.shape for v in values}
        if len(shapes) == 1 and values[0].ndim >= 1:
            return pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(values))
        return pa.array([v.tolist() for v in values])
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # Values Arrow cannot type (arbitrary Python objects) travel pickled, one binary per row.
        storage = pa.array([pickle.dumps(v) for v in values], type=pa.binary())
        return pa.ExtensionArray.from_storage(PickledType(), storage)


def from_batch(batch) -> pa.Table:
    """Turn what a user function returned (dict of arrays, DataFrame, Table) into a block."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, dict):
        columns = {str(name): _array_of(values) for name, values in batch.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"A batch's columns must have equal lengths, got {sorted(lengths)}.")
        return pa.table(columns)
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None and isinstance(batch, pd.DataFrame):
        try:
            return pa.Table.from_pandas(batch, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # A column of objects Arrow cannot type (such as a batch's object column given back).
            return pa.table({str(name): _array_of(list(batch[name])) for name in batch.columns})
    raise TypeError(
        f"A batch must be a dict of column arrays, a pandas.DataFrame or a pyarrow.Table; got {type(batch).__name__}."
    )


def from_rows(rows: list) -> pa.Table:
    """A block from a list of row dicts (keys of the first row name the columns)."""
    if not rows:
        return pa.table({})
    for row in rows:
        if not isinstance(row, dict):
            raise TypeError(f"A row must be a dict, got {type(row).__name__}: {row!r:.80}")
    names = list(rows[0])
    for row in rows:
        for name in row:
            if name not in names:
                names.append(name)
    return pa.table({str(n): _array_of([row.get(n) for row in rows]) for n in names})


def iter_rows(table: pa.Table):
    """Rows of a block as dicts; tensor columns give one ndarray per row."""
    tensors = {n: column_to_numpy(table.column(n)) for n in table.column_names if _is_tensor(table.column(n).type)}
    if not tensors:
        yield from table.to_pylist()
        return
    plain = table.drop_columns(list(tensors)).to_pylist() if len(tensors) < table.num_columns else None
    for i in range(table.num_rows):
        row = {}
        for name in table.column_names:
            row[name] = tensors[name][i] if name in tensors else plain[i][name]
        yield row


def concat(tables: list) -> pa.Table:
    tables = [t for t in tables if t.num_columns or t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid:
        return pa.concat_tables(tables, promote_options="permissive")


def split_rows(table: pa.Table, max_rows: int) -> list:
    if max_rows is None or table.num_rows <= max_rows:
        return [table]
    return [table.slice(i, max_rows) for i in range(0, table.num_rows, max_rows)]
