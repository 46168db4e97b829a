"""Sources: ``range``, ``from_*`` and the file readers, each a list of read tasks or stored blocks.

Everything that can fail about the arguments (a missing path, no files, files of the wrong format
or with mismatched schemas for Parquet) fails here, at the call, not later inside a task.
"""

import builtins
import dataclasses
import fnmatch
import functools
import glob
import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

import ember
from ember.data import block as blk
from ember.data.context import DataContext, cluster_resources
from ember.data.partitioning import Partitioning, PartitionStyle, partition_fields
from ember.data.plan import InputData, Read


class BlockReadTask:
    """Ember's own read task (ranges, files): ``fn(columns, limit)`` makes one block; num_rows,
    size_bytes and schema are estimates or None; ``input_files``: the files it reads
    (Dataset.input_files). A custom Datasource's tasks are ``datasource.ReadTask``, read alike."""

    def __init__(self, fn, num_rows=None, size_bytes=None, schema=None, input_files=()):
        self.fn, self.num_rows, self.size_bytes, self.schema = fn, num_rows, size_bytes, schema
        self.input_files = list(input_files)

    def read(self, columns=None, limit=None) -> pa.Table:
        return blk.trim(self.fn(columns, limit), columns, limit)


def _min_blocks(ctx: DataContext) -> int:
    if ctx.read_op_min_num_blocks is not None:
        return ctx.read_op_min_num_blocks
    try:
        cpus = cluster_resources().get("CPU", 4) if ember.is_initialized() else 4
    except Exception:
        cpus = 4
    return max(8, int(2 * cpus))


def _num_blocks(rows: int, row_bytes: int, override) -> int:
    if override is not None:
        if not isinstance(override, int) or isinstance(override, bool) or override < 1:
            raise ValueError(f"override_num_blocks must be a positive int, got {override!r}.")
        return max(1, min(override, rows)) if rows else 1
    ctx = DataContext.get_current()
    by_size = math.ceil(rows * row_bytes / ctx.target_max_block_size)
    return max(1, min(rows, max(_min_blocks(ctx), by_size)))


def _bounds(rows: int, n: int) -> list:
    return [(rows * i // n, rows * (i + 1) // n) for i in builtins.range(n)]


def _range_block(start, end, shape, columns, limit):
    if limit is not None:
        end = min(end, start + limit)
    ids = np.arange(start, end, dtype=np.int64)
    if shape is None:
        return pa.table({"id": ids})
    data = np.broadcast_to(ids.reshape((-1,) + (1,) * len(shape)), (len(ids),) + tuple(shape))
    return pa.table({"data": blk._array_of(np.ascontiguousarray(data))})


def range(n: int, *, override_num_blocks: int | None = None, concurrency=None):  # noqa: A001 (Ray's name)
    """A dataset of the integers ``0 .. n-1`` in the column ``"id"``."""
    return _range("ReadRange", n, None, override_num_blocks)


def range_tensor(n: int, *, shape: tuple = (1,), override_num_blocks: int | None = None, concurrency=None):
    """A dataset of ``n`` tensors of ``shape`` in the column ``"data"``, row i filled with i."""
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}.")
    return _range("ReadRangeTensor", n, shape, override_num_blocks)


def _range(name, n, shape, override):
    from ember.data.dataset import Dataset

    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    row_bytes = 8 * (math.prod(shape) if shape else 1)
    schema = _range_block(0, 0, shape, None, None).schema
    tasks = [
        BlockReadTask(functools.partial(_range_block, lo, hi, shape), hi - lo, (hi - lo) * row_bytes, schema)
        for lo, hi in _bounds(n, _num_blocks(n, row_bytes, override))
    ]
    return Dataset(Read(name, tasks))


# ---- in-memory sources ----------------------------------------------------------------------------


def _from_tables(name: str, tables: list):
    from ember.data.dataset import MaterializedDataset

    bundles = [(ember.put(t), blk.metadata_of(t)) for t in tables]
    return MaterializedDataset(InputData(bundles, name))


def from_items(items: list, *, override_num_blocks: int | None = None):
    """A dataset of Python objects: dicts become rows; anything else becomes ``{"item": value}``."""
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"from_items expects a list, got {type(items).__name__}.")
    rows = [item if isinstance(item, dict) else {"item": item} for item in items]
    n = _num_blocks(len(rows), 64, override_num_blocks)
    return _from_tables(
        "FromItems", [blk.from_rows(list(rows[lo:hi])) for lo, hi in _bounds(len(rows), n)] or [pa.table({})]
    )


def from_pandas(dfs):
    """A dataset with one block per pandas DataFrame."""
    import pandas as pd

    dfs = [dfs] if isinstance(dfs, pd.DataFrame) else list(dfs)
    for df in dfs:
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_pandas expects DataFrames, got {type(df).__name__}.")
    return _from_tables("FromPandas", [pa.Table.from_pandas(df, preserve_index=False) for df in dfs])


def from_numpy(ndarrays):
    """A dataset with one block per array, in the column ``"data"`` (one row per first-axis entry)."""
    arrays = [ndarrays] if isinstance(ndarrays, np.ndarray) else list(ndarrays)
    for a in arrays:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"from_numpy expects numpy arrays, got {type(a).__name__}.")
    return _from_tables("FromNumpy", [pa.table({"data": blk._array_of(a)}) for a in arrays])


def from_arrow(tables):
    """A dataset with one block per pyarrow Table."""
    tables = [tables] if isinstance(tables, (pa.Table, pa.RecordBatch)) else list(tables)
    return _from_tables("FromArrow", [blk.from_batch(t) for t in tables])


def from_blocks(blocks: list):
    """A dataset with one block per pyarrow Table or pandas DataFrame in ``blocks``, as given."""
    if not isinstance(blocks, (list, tuple)):
        raise TypeError(f"from_blocks expects a list of Tables or DataFrames, got {type(blocks).__name__}.")
    tables = []
    for block in blocks:
        if isinstance(block, pa.Table):
            tables.append(block)
        elif type(block).__name__ == "DataFrame" and type(block).__module__.startswith("pandas"):
            tables.append(pa.Table.from_pandas(block, preserve_index=False))
        else:
            raise TypeError(f"from_blocks expects pyarrow Tables or pandas DataFrames, got {type(block).__name__}.")
    return _from_tables("FromBlocks", tables)


# ---- files ----------------------------------------------------------------------------------------


def _split_uri(path: str, filesystem):
    if filesystem is not None:
        return filesystem, path
    if "://" in path and not path.startswith("file://"):
        return pafs.FileSystem.from_uri(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _hidden(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith(".") or name.startswith("_")


def resolve_paths(paths, filesystem=None, file_extensions=None) -> tuple:
    """Expand files, directories (recursively), globs and lists into (filesystem, [(path, size)])."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    elif not isinstance(paths, (list, tuple)) or not paths:
        raise ValueError(f"paths must be a path or a non-empty list of paths, got {paths!r}.")
    fs, found = filesystem, []
    for raw in paths:
        fs, path = _split_uri(os.fspath(raw), filesystem)
        if any(ch in path for ch in "*?["):
            if isinstance(fs, pafs.LocalFileSystem):
                matches = sorted(glob.glob(path, recursive=True))
            else:
                base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
                infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
                matches = sorted(i.path for i in infos if fnmatch.fnmatch(i.path, path))
            if not matches:
                raise FileNotFoundError(f"No files match the pattern {raw!r}.")
            expanded = matches
        else:
            expanded = [path]
        for item in expanded:
            info = fs.get_file_info(item)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"No such file or directory: {raw!r}.")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(item, recursive=True))
                files = sorted(
                    (i for i in infos if i.type == pafs.FileType.File and not _hidden(i.path[len(item) :])),
                    key=lambda i: i.path,
                )
                if file_extensions:
                    files = [i for i in files if i.path.rsplit(".", 1)[-1].lower() in file_extensions]
                found.extend((i.path, i.size) for i in files)
            else:
                found.append((item, info.size))
    if not found:
        raise FileNotFoundError(f"No files found at {paths!r}.")
    return fs, found


def _group(files: list, override) -> list:
    n = len(files) if override is None else max(1, min(override, len(files)))
    return [files[lo:hi] for lo, hi in _bounds(len(files), n)]


def _read_files(fs, paths, reader, include_paths, columns, limit):
    tables, rows = [], 0
    for path in paths:
        with fs.open_input_stream(path) as stream:
            try:
                table = reader(stream, columns)
            except (pa.ArrowInvalid, ValueError, UnicodeDecodeError) as error:
                raise type(error)(f"Could not read {path}: {error}") from error
        if include_paths:
            table = table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    return blk.concat(tables)


def _file_read(name, paths, filesystem, reader, override_num_blocks, include_paths, file_extensions=None):
    from ember.data.dataset import Dataset

    fs, files = resolve_paths(paths, filesystem, file_extensions)
    tasks = [
        BlockReadTask(
            functools.partial(_read_files, fs, [p for p, _ in group], reader, include_paths),
            size_bytes=sum(s or 0 for _, s in group),
            input_files=[p for p, _ in group],
        )
        for group in _group(files, override_num_blocks)
    ]
    return Dataset(Read(name, tasks))


def _csv_reader(options, stream, columns):
    import pyarrow.csv as pacsv

    convert = options.get("convert_options")
    if columns is not None:
        convert = convert or pacsv.ConvertOptions()
        convert.include_columns = list(columns)
    return pacsv.read_csv(
        stream,
        read_options=options.get("read_options"),
        parse_options=options.get("parse_options"),
        convert_options=convert,
    )


def _json_reader(options, stream, columns):
    import pyarrow.json as pajson

    table = pajson.read_json(
        stream, read_options=options.get("read_options"), parse_options=options.get("parse_options")
    )
    return table.select(columns) if columns is not None else table


def _text_reader(encoding, drop_empty_lines, stream, columns):
    lines = stream.read().decode(encoding).splitlines()
    if drop_empty_lines:
        lines = [line for line in lines if line.strip()]
    return pa.table({"text": pa.array(lines, pa.string())})


def _numpy_reader(stream, columns):
    return pa.table({"data": blk._array_of(np.load(io.BytesIO(stream.read()), allow_pickle=False))})


def _orc_reader(stream, columns):
    import pyarrow.orc as paorc

    # ORC needs random access (its footer is at the end): the file is read into memory first.
    return paorc.read_table(pa.BufferReader(stream.read()), columns=None if columns is None else list(columns))


def _binary_reader(stream, columns):
    return pa.table({"bytes": pa.array([stream.read()], pa.binary())})


def read_csv(
    paths, *, filesystem=None, include_paths=False, override_num_blocks=None, file_extensions=None, **arrow_csv_args
):
    """Read CSV files (``read_options``/``parse_options``/``convert_options`` go to pyarrow.csv)."""
    reader = functools.partial(_csv_reader, dict(arrow_csv_args))
    return _file_read("ReadCSV", paths, filesystem, reader, override_num_blocks, include_paths, file_extensions)


def read_json(
    paths, *, filesystem=None, include_paths=False, override_num_blocks=None, file_extensions=None, **arrow_json_args
):
    """Read JSON lines files (one object per line) with pyarrow.json."""
    reader = functools.partial(_json_reader, dict(arrow_json_args))
    return _file_read("ReadJSON", paths, filesystem, reader, override_num_blocks, include_paths, file_extensions)


def read_text(
    paths,
    *,
    encoding="utf-8",
    drop_empty_lines=True,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=None,
):
    """Read text files into the column ``"text"``, one row per line."""
    reader = functools.partial(_text_reader, encoding, drop_empty_lines)
    return _file_read("ReadText", paths, filesystem, reader, override_num_blocks, include_paths, file_extensions)


def read_numpy(paths, *, filesystem=None, include_paths=False, override_num_blocks=None, file_extensions=None):
    """Read ``.npy`` files into the column ``"data"``, one row per first-axis entry."""
    return _file_read(
        "ReadNumpy", paths, filesystem, _numpy_reader, override_num_blocks, include_paths, file_extensions
    )


def read_binary_files(paths, *, filesystem=None, include_paths=False, override_num_blocks=None, file_extensions=None):
    """Read whole files as bytes into the column ``"bytes"`` (and ``"path"`` with include_paths)."""
    return _file_read(
        "ReadBinary", paths, filesystem, _binary_reader, override_num_blocks, include_paths, file_extensions
    )


def read_orc(paths, *, filesystem=None, include_paths=False, override_num_blocks=None, file_extensions=("orc",)):
    """Read ORC files with pyarrow.orc; a select_columns after it reads only those columns. In a
    directory only files ending in ``file_extensions`` are read (``.orc`` by default, as Ray)."""
    return _file_read("ReadORC", paths, filesystem, _orc_reader, override_num_blocks, include_paths, file_extensions)


# ---- parquet --------------------------------------------------------------------------------------


def _open_for_parquet(fs, path: str):
    """A local file is memory-mapped: the reader decompresses straight from the page cache instead
    of first copying each column chunk out of it (a read() per chunk), which took a tenth of a read
    task's CPU (system time 0.45 -> 0.25 s per 2 GB of Parquet). The decoded table owns its memory
    either way: nothing of the block refers to the mapping once the read returns."""
    if isinstance(fs, pafs.LocalFileSystem):
        return pa.memory_map(path)
    return fs.open_input_file(path)


def _read_parquet_pieces(fs, pieces, filter_expr, partitions, columns, limit):
    """``partitions``: None, or the partition fields and, by path, what each file's directories say
    of its rows (``partitioning.partition_fields``): the scan adds those columns and skips the files
    a filter on them rules out."""
    import pyarrow.parquet as pq

    tables, rows = [], 0
    for path, row_groups in pieces:
        if filter_expr is None and limit is None and partitions is None:
            # The plain reader: a column comes back as one contiguous chunk (the scanner cuts it into
            # batches), so numpy batches of a whole block need no copy, and a block has a handful of
            # buffers for the store instead of one per batch and column. One thread: the task is the
            # unit of parallelism, and each has one CPU.
            with _open_for_parquet(fs, path) as source:
                table = pq.ParquetFile(source).read_row_groups(row_groups, columns=columns, use_threads=False)
            tables.append(table)
            rows += table.num_rows
            continue
        # Only here: the plain reader above needs no pyarrow.dataset, whose import a worker would
        # otherwise pay in its first read task.
        import pyarrow.dataset as pds

        schema = None
        if partitions is None:
            fragment = pds.ParquetFileFormat().make_fragment(path, filesystem=fs, row_groups=row_groups)
        else:
            fields, expressions = partitions
            fragment = pds.ParquetFileFormat().make_fragment(
                path, filesystem=fs, row_groups=row_groups, partition_expression=expressions.get(path)
            )
            physical = fragment.physical_schema
            schema = pa.schema([*physical, *(f for f in fields if f.name not in physical.names)], physical.metadata)
        scanner = pds.Scanner.from_fragment(fragment, schema=schema, columns=columns, filter=filter_expr)
        table = scanner.head(limit - rows) if limit is not None else scanner.to_table()
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    return blk.concat(tables)


# A Parquet read block holds whole row groups up to this many (in-memory) bytes, or one larger
# group. Blocks of a 64 MB file each made iter_batches and a fused actor-pool map about half as
# fast as blocks of its 13 MB row groups on 2 CPUs (benchmarks/data.py): a large block is
# allocated, page-faulted and copied into the store whole, its numpy intermediates do not fit in
# cache, and a pipeline of 32 large blocks has long start-up and tail phases on two workers.
PARQUET_BLOCK_BYTES = 16 * 1024 * 1024
# ... but a read whose task runs no user function (a plain read into iter_batches, a groupby's
# partial aggregates) has no intermediates to keep in cache, and each block costs the same fixed
# work whatever its size (a task, a Parquet footer, a store object created, mapped and freed): such
# reads make blocks up to this size, as long as the dataset still makes ``_min_blocks`` of them.
# 48 MiB took 10-15% off the CPU of the iter_batches row against 16 MiB (2 GB, 2 CPUs).
PARQUET_LIGHT_BLOCK_BYTES = 48 * 1024 * 1024


def _column_bytes(schema: pa.Schema, row_group) -> dict:
    """A row group's in-memory bytes per top-level column: rows x width for fixed-width types
    (Parquet's own sizes are those of its encodings: a dictionary-encoded int64 column reports a
    sixth of what it takes in Arrow), Parquet's uncompressed size for the others."""
    sizes = {}
    for j in builtins.range(row_group.num_columns):
        chunk = row_group.column(j)
        name = chunk.path_in_schema.split(".", 1)[0]
        sizes[name] = sizes.get(name, 0) + chunk.total_uncompressed_size
    for name in sizes:
        index = schema.get_field_index(name)
        if index >= 0:
            try:
                width = schema.field(index).type.bit_width
            except ValueError:  # not a fixed-width type
                continue
            sizes[name] = row_group.num_rows * width // 8
    return sizes


def _bytes_read(sizes: dict, columns) -> int:
    return sum(sizes.values()) if columns is None else sum(sizes.get(c, 0) for c in columns)


def _parquet_pieces(file_groups: list, columns, target: int) -> list:
    """``((path, row group ids), rows, bytes)`` per block: consecutive row groups of one file up to
    ``target`` bytes of the ``columns`` read (all when None)."""
    pieces = []
    for path, groups in file_groups:
        current, rows, nbytes = [], 0, 0
        for group_id, group_rows, sizes in groups:
            size = _bytes_read(sizes, columns)
            if current and nbytes + size > target:
                pieces.append(((path, current), rows, nbytes))
                current, rows, nbytes = [], 0, 0
            current.append(group_id)
            rows += group_rows
            nbytes += size
        pieces.append(((path, current), rows, nbytes))
    return pieces


def _parquet_tasks(
    fs, file_groups, schema, filter_expr, override, partitions, columns, light: bool, pushed=None
) -> list:
    """The read tasks of a Parquet dataset for ``columns``; ``light``: no user function runs in the
    read's tasks, so blocks may be larger (``PARQUET_LIGHT_BLOCK_BYTES``); ``pushed``: a filter of the
    Dataset's (``Dataset.filter(expr=...)``) the scan applies as well as read_parquet's own."""
    if pushed is not None:
        filter_expr = pushed if filter_expr is None else filter_expr & pushed
    ctx = DataContext.get_current()
    target = min(ctx.target_max_block_size, PARQUET_BLOCK_BYTES)
    if light and override is None:
        total = sum(_bytes_read(sizes, columns) for _, groups in file_groups for _, _, sizes in groups)
        wide = min(ctx.target_max_block_size, PARQUET_LIGHT_BLOCK_BYTES, total // _min_blocks(ctx))
        target = max(target, wide)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    tasks = []
    for group in _group(_parquet_pieces(file_groups, columns, target), override):
        files = list(dict.fromkeys(path for (path, _), _, _ in group))
        mine = None
        if partitions is not None:  # a task carries what its own files' directories say
            fields, expressions = partitions
            mine = (fields, {path: expressions[path] for path in files if path in expressions})
        tasks.append(
            BlockReadTask(
                functools.partial(_read_parquet_pieces, fs, [p for p, _, _ in group], filter_expr, mine),
                num_rows=None if filter_expr is not None else sum(r for _, r, _ in group),
                size_bytes=sum(b for _, _, b in group),
                schema=schema,
                input_files=files,
            )
        )
    return tasks


def read_parquet(
    paths,
    *,
    filesystem=None,
    columns=None,
    filter=None,
    override_num_blocks=None,  # noqa: A002
    file_extensions=None,
    partitioning=Partitioning(PartitionStyle.HIVE),
    **arrow_parquet_args,
):
    """Read Parquet files; ``columns`` and ``filter`` (a pyarrow.dataset expression) are pushed into
    the scan, so unread columns and filtered-out row groups never leave the file. ``partitioning``
    (a ``Partitioning``; Hive-style ``name=value`` directories by default, None for none) adds the
    values the files' directories carry as columns after the files' own, strings unless its
    ``field_types`` say otherwise; a filter on them skips the files they rule out."""
    import pyarrow.dataset as pds

    from ember.data.dataset import Dataset

    fs, files = resolve_paths(paths, filesystem, file_extensions)
    file_format = pds.ParquetFileFormat()
    file_groups, first = [], None
    for path, _ in files:
        try:
            fragment = file_format.make_fragment(path, filesystem=fs)
            schema = fragment.physical_schema
            fragment.ensure_complete_metadata()
            metadata = fragment.metadata
            groups = [
                (group.id, group.num_rows, _column_bytes(schema, metadata.row_group(group.id)))
                for group in fragment.row_groups
            ]
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{path} is not a readable Parquet file: {error}") from None
        if first is None:
            first = (path, schema)
        else:
            unified = blk.unify_schemas(first[1], schema)
            if unified is None:
                first_text = first[1].to_string(show_schema_metadata=False)
                raise ValueError(
                    f"Parquet files have mismatched schemas: {first[0]} has {first_text}"
                    f" but {path} has {schema.to_string(show_schema_metadata=False)}."
                )
            first = (first[0], unified)
        file_groups.append((path, groups))
    partitions = None
    if partitioning is not None:
        if not isinstance(partitioning, Partitioning):
            raise TypeError(f"partitioning must be a Partitioning or None, got {type(partitioning).__name__}.")
        if partitioning.base_dir:  # spelled as the paths are: absolute, no scheme
            partitioning = dataclasses.replace(partitioning, base_dir=_split_uri(partitioning.base_dir, filesystem)[1])
        fields, expressions = partition_fields(partitioning, [path for path, _ in file_groups], first[1].names)
        if fields:
            first = (first[0], pa.schema([*first[1], *fields], first[1].metadata))
            partitions = (fields, expressions)
    if columns is not None:
        missing = [c for c in columns if c not in first[1].names]
        if missing:
            raise ValueError(f"read_parquet: no column(s) {missing} in {first[1].names}.")
        columns = list(columns)
    plan_tasks = functools.partial(_parquet_tasks, fs, file_groups, first[1], filter, override_num_blocks, partitions)
    tasks = plan_tasks(columns, False)
    # The executor plans the tasks again once it knows which columns are read (a select pushed
    # down) and whether a user function runs in them.
    return Dataset(Read("ReadParquet", tasks, columns=columns, plan_tasks=plan_tasks, filterable=True))
