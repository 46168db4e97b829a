"""Sources: ``range``, ``from_*`` and the file readers, each a list of read tasks or stored blocks
(``read_parquet``, which plans by row groups, is in ``parquet.py``).

Everything that can fail about the arguments (a missing path, no files, a partition value of the
wrong type) fails here, at the call, not later inside a task.
"""

import builtins
import dataclasses
import fnmatch
import functools
import glob
import io
import math
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

import ember
from ember.data import block as blk
from ember.data import partitioning as partition
from ember.data.context import DataContext, cluster_resources
from ember.data.partitioning import Partitioning, PartitionStyle
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
    for block in blocks:
        if isinstance(block, dict):  # a batch, not a block: blk.from_batch would take it
            raise TypeError("from_blocks expects pyarrow Tables or pandas DataFrames, got a dict.")
    return _from_tables("FromBlocks", [blk.from_batch(block) for block in blocks])


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


def resolve_paths(paths, filesystem=None, file_extensions=None, ignore_missing_paths: bool = False) -> tuple:
    """Expand files, directories (recursively), globs and lists into (filesystem, [(path, size)]);
    with ``ignore_missing_paths`` a path or pattern that finds nothing is skipped (FileNotFoundError
    only when nothing is found at all)."""
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
            if not matches and not ignore_missing_paths:
                raise FileNotFoundError(f"No files match the pattern {raw!r}.")
            expanded = matches
        else:
            expanded = [path]
        for item in expanded:
            info = fs.get_file_info(item)
            if info.type == pafs.FileType.NotFound:
                if ignore_missing_paths:
                    continue
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


@dataclasses.dataclass
class ReadArgs:
    """Ray's arguments about a file read itself rather than its format, taken by every file reader
    and checked at the call: the read tasks' resources (``num_cpus``, ``num_gpus``, ``memory``,
    ``ray_remote_args``) and ``concurrency``, ``shuffle="files"``, ``ignore_missing_paths`` and the
    number of blocks (``override_num_blocks``, or the deprecated ``parallelism``)."""

    remote_args: dict
    concurrency: int | None
    shuffle: bool
    ignore_missing_paths: bool
    override_num_blocks: int | None

    NAMES = (
        "parallelism",
        "num_cpus",
        "num_gpus",
        "memory",
        "ray_remote_args",
        "concurrency",
        "shuffle",
        "ignore_missing_paths",
    )

    @classmethod
    def take(cls, reader: str, args: dict, format_keys=(), override_num_blocks=None):
        """Split a reader's keyword arguments: (ReadArgs, the file format's own). Any other argument
        is refused here rather than ignored: Ray hands such arguments on to pyarrow."""
        from ember.data.datasource import _parallelism, task_options

        read = {name: args.pop(name) for name in cls.NAMES if name in args}
        unknown = sorted(name for name in args if name not in format_keys)
        if unknown:
            takes = f" (its format's options: {', '.join(format_keys)})" if format_keys else ""
            raise TypeError(f"{reader}() does not take {', '.join(unknown)}{takes}.")
        shuffle = read.get("shuffle")
        if shuffle not in (None, "files"):
            raise ValueError(f"{reader}: shuffle must be None or 'files', got {shuffle!r}.")
        ignore_missing_paths = read.get("ignore_missing_paths", False)
        if not isinstance(ignore_missing_paths, bool):
            raise TypeError(f"{reader}: ignore_missing_paths must be a bool, got {ignore_missing_paths!r}.")
        parallelism = read.get("parallelism", -1)
        if override_num_blocks is not None or parallelism not in (None, -1):
            override_num_blocks = _parallelism(None, parallelism, override_num_blocks)
        remote_args, cap = task_options(
            reader,
            read.get("concurrency"),
            read.get("ray_remote_args"),
            True,
            num_cpus=read.get("num_cpus"),
            num_gpus=read.get("num_gpus"),
            memory=read.get("memory"),
        )
        return cls(remote_args, cap, shuffle == "files", ignore_missing_paths, override_num_blocks), args

    def files(self, paths, filesystem, file_extensions) -> tuple:
        """(filesystem, [(path, size)]) to read, in a random order with ``shuffle="files"``."""
        fs, files = resolve_paths(paths, filesystem, file_extensions, self.ignore_missing_paths)
        if self.shuffle:
            random.shuffle(files)
        return fs, files


def _group(files: list, override) -> list:
    n = len(files) if override is None else max(1, min(override, len(files)))
    return [files[lo:hi] for lo, hi in _bounds(len(files), n)]


def _partitions(partitioning, filesystem, paths: list, columns: list):
    """None, or the partition fields of ``paths`` and each file's values
    (``partitioning.partition_fields``), for a reader's ``partitioning`` argument."""
    if partitioning is None:
        return None
    if not isinstance(partitioning, Partitioning):
        raise TypeError(f"partitioning must be a Partitioning or None, got {type(partitioning).__name__}.")
    if partitioning.base_dir:  # spelled as the paths are: absolute, no scheme
        partitioning = dataclasses.replace(partitioning, base_dir=_split_uri(partitioning.base_dir, filesystem)[1])
    fields, values = partition.partition_fields(partitioning, paths, columns)
    return (fields, values) if fields else None


def read_in_order(items, read_one, include_paths: bool, limit) -> pa.Table:
    """One block: ``read_one(item, rows still wanted or None)`` for each of ``items`` (a path, or a
    (path, row groups) piece) in order, with a "path" column when ``include_paths``, until ``limit``
    rows are read."""
    tables, rows = [], 0
    for item in items:
        table = read_one(item, None if limit is None else limit - rows)
        if include_paths:
            path = item if isinstance(item, str) else item[0]
            table = table.append_column("path", pa.repeat(pa.scalar(path), table.num_rows))
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    return blk.concat(tables)


def _read_files(fs, paths, reader, include_paths, partitions, columns, limit):
    """``partitions``: None, or the partition fields and the values of those of ``paths`` that
    carry any, added as columns after each file's own."""
    added = {field.name for field in partitions[0]} if partitions else set()
    if include_paths:
        added.add("path")
    data_columns = None if columns is None else [c for c in columns if c not in added]

    def read_one(path, _rows_wanted):
        with fs.open_input_stream(path) as stream:
            try:
                table = reader(stream, data_columns)
            except (pa.ArrowInvalid, ValueError, UnicodeDecodeError) as error:
                raise type(error)(f"Could not read {path}: {error}") from error
        if partitions:
            table = partition.add_columns(table, partitions[0], partitions[1].get(path))
        return table

    return read_in_order(paths, read_one, include_paths, limit)


def _file_read(name, paths, filesystem, reader, read: ReadArgs, include_paths, file_extensions, partitioning):
    from ember.data.dataset import Dataset

    fs, files = read.files(paths, filesystem, file_extensions)
    # The files' own columns are known only as they are read: add_columns leaves a file's own be.
    partitions = _partitions(partitioning, filesystem, [p for p, _ in files], [])
    tasks = []
    for group in _group(files, read.override_num_blocks):
        group_paths = [p for p, _ in group]
        mine = None if partitions is None else (partitions[0], {p: partitions[1].get(p) for p in group_paths})
        tasks.append(
            BlockReadTask(
                functools.partial(_read_files, fs, group_paths, reader, include_paths, mine),
                size_bytes=sum(s or 0 for _, s in group),
                input_files=group_paths,
            )
        )
    return Dataset(Read(name, tasks, remote_args=read.remote_args, concurrency=read.concurrency))


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
    paths,
    *,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=None,
    partitioning=Partitioning(PartitionStyle.HIVE),
    **arrow_csv_args,
):
    """Read CSV files (``read_options``/``parse_options``/``convert_options`` go to pyarrow.csv);
    ``partitioning`` as ``read_parquet``'s (Hive directories by default, as Ray). Ray's read
    arguments (``num_cpus``, ``ray_remote_args``, ``concurrency``, ``shuffle="files"``,
    ``ignore_missing_paths``, ...: ``ReadArgs``) are taken too; any other is refused."""
    read, options = ReadArgs.take(
        "read_csv", arrow_csv_args, ("read_options", "parse_options", "convert_options"), override_num_blocks
    )
    reader = functools.partial(_csv_reader, options)
    return _file_read("ReadCSV", paths, filesystem, reader, read, include_paths, file_extensions, partitioning)


def read_json(
    paths,
    *,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=None,
    partitioning=Partitioning(PartitionStyle.HIVE),
    **arrow_json_args,
):
    """Read JSON lines files (one object per line) with pyarrow.json (``read_options`` and
    ``parse_options`` go to it); ``partitioning`` and Ray's read arguments as ``read_csv``'s."""
    read, options = ReadArgs.take("read_json", arrow_json_args, ("read_options", "parse_options"), override_num_blocks)
    reader = functools.partial(_json_reader, options)
    return _file_read("ReadJSON", paths, filesystem, reader, read, include_paths, file_extensions, partitioning)


def read_text(
    paths,
    *,
    encoding="utf-8",
    drop_empty_lines=True,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=None,
    partitioning=None,
    **read_args,
):
    """Read text files into the column ``"text"``, one row per line (``partitioning``: see
    ``read_parquet``, none by default as Ray; Ray's read arguments as ``read_csv``'s)."""
    read, _ = ReadArgs.take("read_text", read_args, (), override_num_blocks)
    reader = functools.partial(_text_reader, encoding, drop_empty_lines)
    return _file_read("ReadText", paths, filesystem, reader, read, include_paths, file_extensions, partitioning)


def read_numpy(
    paths,
    *,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=None,
    partitioning=None,
    **read_args,
):
    """Read ``.npy`` files into the column ``"data"``, one row per first-axis entry (``partitioning``
    and Ray's read arguments as ``read_text``'s)."""
    read, _ = ReadArgs.take("read_numpy", read_args, (), override_num_blocks)
    return _file_read("ReadNumpy", paths, filesystem, _numpy_reader, read, include_paths, file_extensions, partitioning)


def read_binary_files(
    paths,
    *,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=None,
    partitioning=None,
    **read_args,
):
    """Read whole files as bytes into the column ``"bytes"`` (and ``"path"`` with include_paths;
    ``partitioning`` and Ray's read arguments as ``read_text``'s)."""
    read, _ = ReadArgs.take("read_binary_files", read_args, (), override_num_blocks)
    return _file_read(
        "ReadBinary", paths, filesystem, _binary_reader, read, include_paths, file_extensions, partitioning
    )


def read_orc(
    paths,
    *,
    filesystem=None,
    include_paths=False,
    override_num_blocks=None,
    file_extensions=("orc",),
    partitioning=None,
    **read_args,
):
    """Read ORC files with pyarrow.orc; a select_columns after it reads only those columns. In a
    directory only files ending in ``file_extensions`` are read (``.orc`` by default, as Ray;
    ``partitioning`` and Ray's read arguments as ``read_text``'s)."""
    read, _ = ReadArgs.take("read_orc", read_args, (), override_num_blocks)
    return _file_read("ReadORC", paths, filesystem, _orc_reader, read, include_paths, file_extensions, partitioning)
