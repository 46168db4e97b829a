"""``read_parquet``: Parquet files cut into blocks by row groups, with column, filter and partition
pushdown into the scan; blocks are sized by the in-memory bytes of the columns read. Unreadable
files and mismatched schemas fail at the call, as the other sources' arguments do."""

import functools

import pyarrow as pa
import pyarrow.fs as pafs

from ember.data import block as blk
from ember.data import partitioning as partition
from ember.data.context import DataContext
from ember.data.partitioning import Partitioning, PartitionStyle
from ember.data.plan import Read
from ember.data.sources import BlockReadTask, ReadArgs, _group, _min_blocks, _partitions, read_in_order


def _open_for_parquet(fs, path: str):
    """A local file is memory-mapped: the reader decompresses straight from the page cache instead
    of first copying each column chunk out of it (a read() per chunk), which took a tenth of a read
    task's CPU (system time 0.45 -> 0.25 s per 2 GB of Parquet). The decoded table owns its memory
    either way: nothing of the block refers to the mapping once the read returns."""
    if isinstance(fs, pafs.LocalFileSystem):
        return pa.memory_map(path)
    return fs.open_input_file(path)


def _read_parquet_pieces(fs, pieces, filter_expr, partitions, include_paths, columns, limit):
    """One block from ``pieces`` ((path, row group ids) each). ``partitions``: None, or the
    partition fields and, by path, what each file's directories say of its rows
    (``partitioning.expression``): the scan adds those columns and skips the files a filter on them
    rules out. ``include_paths``: a "path" column after the others."""
    if include_paths and columns is not None:
        columns = [c for c in columns if c != "path"]

    def read_one(piece, rows_wanted):
        path, row_groups = piece
        return _read_piece(fs, path, row_groups, filter_expr, partitions, columns, rows_wanted)

    return read_in_order(pieces, read_one, include_paths, limit)


def _read_piece(fs, path, row_groups, filter_expr, partitions, columns, limit) -> pa.Table:
    if filter_expr is None and limit is None and partitions is None:
        import pyarrow.parquet as pq

        # The plain reader: a column comes back as one contiguous chunk (the scanner cuts it into
        # batches), so numpy batches of a whole block need no copy, and a block has a handful of
        # buffers for the store instead of one per batch and column. One thread: the task is the
        # unit of parallelism, and each has one CPU.
        with _open_for_parquet(fs, path) as source:
            return pq.ParquetFile(source).read_row_groups(row_groups, columns=columns, use_threads=False)
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
    return scanner.head(limit) if limit is not None else scanner.to_table()


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
    for j in range(row_group.num_columns):
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
    fs, file_groups, schema, filter_expr, override, partitions, include_paths, columns, light: bool, pushed=None
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
                functools.partial(_read_parquet_pieces, fs, [p for p, _, _ in group], filter_expr, mine, include_paths),
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
    include_paths=False,
    **read_args,
):
    """Read Parquet files; ``columns`` and ``filter`` (a pyarrow.dataset expression) are pushed into
    the scan, so unread columns and filtered-out row groups never leave the file. ``partitioning``
    (a ``Partitioning``; Hive-style ``name=value`` directories by default, None for none) adds the
    values the files' directories carry as columns after the files' own, strings unless its
    ``field_types`` say otherwise; a filter on them skips the files they rule out.
    ``include_paths`` adds each row's file as "path" (a filter then runs after the read instead of
    in it). Ray's read arguments (``num_cpus``, ``ray_remote_args``, ``concurrency``,
    ``shuffle="files"``, ``ignore_missing_paths``, ...: ``sources.ReadArgs``) are taken too; the
    arguments Ray hands on to pyarrow are refused."""
    import pyarrow.dataset as pds

    from ember.data.dataset import Dataset

    read, _ = ReadArgs.take("read_parquet", read_args, (), override_num_blocks)
    if not isinstance(include_paths, bool):
        raise TypeError(f"read_parquet: include_paths must be a bool, got {include_paths!r}.")
    fs, files = read.files(paths, filesystem, file_extensions)
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
    partitions = _partitions(partitioning, filesystem, [path for path, _ in file_groups], first[1].names)
    if partitions is not None:
        fields, values = partitions
        first = (first[0], pa.schema([*first[1], *fields], first[1].metadata))
        partitions = (fields, {path: partition.expression(v) for path, v in values.items()})
    if include_paths:
        first = (first[0], pa.schema([*first[1], pa.field("path", pa.string())], first[1].metadata))
    if columns is not None:
        missing = [c for c in columns if c not in first[1].names]
        if missing:
            raise ValueError(f"read_parquet: no column(s) {missing} in {first[1].names}.")
        columns = list(columns)
    plan_tasks = functools.partial(
        _parquet_tasks, fs, file_groups, first[1], filter, read.override_num_blocks, partitions, include_paths
    )
    tasks = plan_tasks(columns, False)
    # The executor plans the tasks again once it knows which columns are read (a select pushed
    # down) and whether a user function runs in them.
    return Dataset(
        Read(
            "ReadParquet",
            tasks,
            columns=columns,
            plan_tasks=plan_tasks,
            filterable=not include_paths,  # the scan knows no "path" column to filter on
            remote_args=read.remote_args,
            concurrency=read.concurrency,
        )
    )
