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


class VariableShapeTensorType(pa.ExtensionType):
    """A column of ndarrays of one dtype but differing shapes (Ray's variable-shaped tensor column):
    images of different sizes, say. Each row stores its values flattened (C order) beside its shape;
    the dimension count may differ between rows too (a grayscale HxW beside an RGB HxWxC)."""

    def __init__(self, value_type: pa.DataType):
        storage = pa.struct([("data", pa.large_list(value_type)), ("shape", pa.list_(pa.int64()))])
        super().__init__(storage, "ember.variable_shape_tensor")

    @property
    def value_type(self) -> pa.DataType:
        return self.storage_type.field("data").type.value_type

    def __arrow_ext_serialize__(self) -> bytes:
        return b""  # the value type is in the storage type

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls(storage_type.field("data").type.value_type)

    def __arrow_ext_scalar_class__(self):
        return VariableShapeTensorScalar

    def __reduce__(self):
        return VariableShapeTensorType, (self.value_type,)

    def __str__(self) -> str:
        return f"VariableShapeTensorType(dtype={self.value_type})"


class VariableShapeTensorScalar(pa.ExtensionScalar):
    def as_py(self, **kwargs):
        if self.value is None:
            return None
        data, shape = self.value["data"].values, self.value["shape"].as_py()
        return data.to_numpy(zero_copy_only=False).reshape(shape)


# Registered so that the type survives Arrow IPC and Parquet (pickling a table needs no registry).
try:
    pa.register_extension_type(VariableShapeTensorType(pa.uint8()))
except pa.ArrowKeyError:  # already registered: this module was imported under a second name
    pass


def _is_tensor(column_type) -> bool:
    return isinstance(column_type, (pa.FixedShapeTensorType, VariableShapeTensorType))


def variable_tensor_array(arrays) -> pa.ExtensionArray:
    """A variable-shaped tensor column from ndarrays of one dtype (any shapes)."""
    arrays = [np.asarray(a) for a in arrays]
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise TypeError(f"A tensor column's arrays must share one dtype, got {sorted(map(str, dtypes))}.")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float64)
    value_type = pa.from_numpy_dtype(dtype)
    sizes = np.fromiter((a.size for a in arrays), np.int64, len(arrays))
    offsets = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.empty(0, dtype)
    data = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, value_type))
    shapes = pa.array([list(a.shape) for a in arrays], pa.list_(pa.int64()))
    storage = pa.StructArray.from_arrays([data, shapes], names=["data", "shape"])
    return pa.ExtensionArray.from_storage(VariableShapeTensorType(value_type), storage)


def _as_variable(chunk: pa.Array) -> pa.Array:
    """A fixed-shape tensor chunk as a variable-shaped one (the values are not copied)."""
    if isinstance(chunk.type, VariableShapeTensorType):
        return chunk
    shape = list(chunk.type.shape)
    width = int(np.prod(shape))
    storage = chunk.storage
    values = storage.flatten()  # honours the chunk's offset, as .values would not
    offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int64) * width)
    data = pa.LargeListArray.from_arrays(offsets, values)
    shapes = pa.array([shape] * len(chunk), pa.list_(pa.int64()))
    variable = pa.StructArray.from_arrays([data, shapes], names=["data", "shape"])
    return pa.ExtensionArray.from_storage(VariableShapeTensorType(chunk.type.value_type), variable)


def _variable_to_numpy(column: pa.ChunkedArray, zero_copy: bool) -> np.ndarray:
    """One ndarray per row, in a 1-D object array (Ray's batch of ragged tensors)."""
    out = np.empty(len(column), dtype=object)
    row = 0
    for chunk in column.chunks:
        storage = chunk.storage
        data = storage.field("data")
        # A sliced chunk's offsets index into its parent's values, of which it uses one range.
        offsets = data.offsets.to_numpy()
        start = int(offsets[0]) if len(offsets) else 0
        flat = data.values.to_numpy(zero_copy_only=False)[start : int(offsets[-1]) if len(offsets) else 0]
        offsets = offsets - start
        if not zero_copy and not flat.flags.writeable:
            # One copy for the chunk, so that each row's array may be changed in place.
            flat = flat.copy()
        for shape, lo, hi in zip(storage.field("shape").to_pylist(), offsets[:-1], offsets[1:]):
            out[row] = flat[lo:hi].reshape(shape)
            row += 1
    return out


def column_to_numpy(column: pa.ChunkedArray, zero_copy: bool = False) -> np.ndarray:
    """A column as numpy; tensor columns come back as one ndarray of shape (rows, *shape), or, with
    shapes that differ, as an object array holding one ndarray per row; object columns as an object
    array of the values."""
    if isinstance(column.type, PickledType):
        return _objects(column)
    if isinstance(column.type, VariableShapeTensorType):
        return _variable_to_numpy(column, zero_copy)
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


def _rows_of(array: np.ndarray) -> np.ndarray:
    """An object array holding one ndarray per row of ``array`` (each row's own copy)."""
    if array.dtype == object:
        return array
    array = np.array(array)  # the rows must not be views of a read-only block
    out = np.empty(len(array), dtype=object)
    out[:] = list(array)
    return out


def to_pandas(table: pa.Table):
    """A block as a DataFrame: a tensor column holds one ndarray per row (of the tensor's shape, as
    Ray's pandas batches give it, not Arrow's flattened lists), an object column the objects (not
    their pickles)."""
    special = [n for n in table.column_names if _is_tensor(table.column(n).type) or _is_objects(table.column(n))]
    if not special:
        return table.to_pandas()
    frame = table.drop_columns(special).to_pandas()
    if not len(frame.columns):
        import pandas as pd

        frame = pd.DataFrame(index=range(table.num_rows))
    for name in special:
        column = table.column(name)
        frame[name] = _objects(column) if _is_objects(column) else _rows_of(column_to_numpy(column))
    return frame[table.column_names]


def _is_objects(column) -> bool:
    return isinstance(column.type, PickledType)


def _frame_to_table(frame) -> pa.Table:
    """A DataFrame as a block; columns of ndarrays with two or more dimensions (which Arrow's pandas
    conversion refuses) become tensor columns."""
    tensors = [
        name
        for name in frame.columns
        if frame[name].dtype == object
        and len(frame)
        and all(isinstance(v, np.ndarray) for v in frame[name])
        and any(v.ndim >= 2 for v in frame[name])
    ]
    if not tensors:
        try:
            return pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # A column of objects Arrow cannot type (such as a batch's object column given back).
            return pa.table({str(name): _array_of(list(frame[name])) for name in frame.columns})
    rest = pa.Table.from_pandas(frame.drop(columns=tensors), preserve_index=False)
    columns = {str(name): rest.column(str(name)) for name in frame.columns if name not in tensors}
    columns.update({str(name): _array_of(list(frame[name])) for name in tensors})
    return pa.table({str(name): columns[str(name)] for name in frame.columns})


def _ragged_tensors(values) -> bool:
    """Numeric ndarrays of one dtype, not all of one shape, and not all 1-D (ragged 1-D arrays stay
    Arrow lists, as before)."""
    arrays = [v for v in values if isinstance(v, np.ndarray)]
    if len(arrays) != len(values) or not arrays:
        return False
    if len({a.dtype for a in arrays}) != 1 or arrays[0].dtype.kind not in "biuf":
        return False
    return len({a.shape for a in arrays}) > 1 and any(a.ndim != 1 for a in arrays)


def _c_strides(shape, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _array_of(values) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1 and len(values):
        # What a ragged tensor column gave a user function, returned as it came.
        if _ragged_tensors(list(values)):
            return variable_tensor_array(list(values))
    if isinstance(values, np.ndarray) and values.ndim > 1:
        if len(values) == 0:
            value_type = pa.from_numpy_dtype(values.dtype)
            storage = pa.array([], pa.list_(value_type, int(np.prod(values.shape[1:]))))
            return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, values.shape[1:]), storage)
        values = np.ascontiguousarray(values)
        if values.strides != _c_strides(values.shape, values.itemsize):
            # numpy leaves any stride on an axis of length 1 (0 after np.newaxis), which Arrow
            # refuses on the first axis and reads as a permuted layout on the others; a copy has
            # the plain C strides.
            values = values.copy()
        return pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    if isinstance(values, list) and values and isinstance(values[0], np.ndarray):
        shapes = {v.shape for v in values}
        if len(shapes) == 1 and values[0].ndim >= 1:
            return pa.FixedShapeTensorArray.from_numpy_ndarray(np.stack(values))
        if _ragged_tensors(values):
            return variable_tensor_array(values)
        return pa.array([v.tolist() for v in values])
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return object_array(values)


def object_array(values) -> pa.ExtensionArray:
    """An object column: each value pickled, given back as the object (Arrow cannot type them)."""
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
        return _frame_to_table(batch)
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
        tables = _unify_tensors(tables)
        return pa.concat_tables(tables, promote_options="permissive")


def _variable_of(types: list):
    """The variable-shaped tensor type that ``types`` (a column's, in several blocks) join as, when
    they are tensor types of one dtype and different shapes; else None."""
    if all(t == types[0] for t in types) or not all(_is_tensor(t) for t in types):
        return None
    if len({str(t.value_type) for t in types}) > 1:
        return None  # different dtypes: not joined
    return VariableShapeTensorType(types[0].value_type)


def unify_schemas(first: pa.Schema, other: pa.Schema) -> pa.Schema | None:
    """One schema for blocks of ``first`` and ``other``, or None where they differ in more than the
    shapes of a tensor column of one dtype, which becomes variable-shaped: files written block by
    block from ragged images carry a fixed shape each, and ``concat`` joins such blocks the same way."""
    if first.equals(other, check_metadata=False):
        return first
    if first.names != other.names:
        return None
    fields = []
    for mine, theirs in zip(first, other):
        if mine.type != theirs.type:
            variable = _variable_of([mine.type, theirs.type])
            if variable is None:
                return None
            mine = mine.with_type(variable)
        fields.append(mine)
    return pa.schema(fields, metadata=first.metadata)


def _unify_tensors(tables: list) -> list:
    """Blocks whose tensor columns differ in shape (images of different sizes read into different
    blocks) concatenate as one variable-shaped tensor column; other differences are left for
    concat_tables to refuse."""
    changed = {}
    for name in tables[0].column_names:
        variable = _variable_of([t.column(name).type for t in tables if name in t.column_names])
        if variable is not None:
            changed[name] = variable
    if not changed:
        return tables
    out = []
    for table in tables:
        for name, variable in changed.items():
            if name in table.column_names:
                chunks = [_as_variable(c) for c in table.column(name).chunks]
                table = table.set_column(table.column_names.index(name), name, pa.chunked_array(chunks, variable))
        out.append(table)
    return out


def trim(table: pa.Table, columns, limit) -> pa.Table:
    """The ``columns`` (in that order) and first ``limit`` rows of a block a read task made (the
    executor asks every read task, built-in or a custom Datasource's, for these)."""
    if columns is not None and table.column_names != list(columns):
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise KeyError(f"no column(s) {missing} in {table.column_names}")
        table = table.select(columns)
    if limit is not None and table.num_rows > limit:
        table = table.slice(0, limit)
    return table


def split_rows(table: pa.Table, max_rows: int) -> list:
    if max_rows is None or table.num_rows <= max_rows:
        return [table]
    return [table.slice(i, max_rows) for i in range(0, table.num_rows, max_rows)]
