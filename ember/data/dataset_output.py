"""Dataset's output methods (to pandas/Arrow, writes to files), kept apart from the rest of the class."""

import warnings

import pyarrow as pa

from ember.data import block as blk
from ember.data import iterator as it
from ember.data.plan import MapOp, Stage


def _dataset():
    from ember.data import dataset

    return dataset


def _positive(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}.")


def _given(**options) -> dict:
    """The options the caller set (not None)."""
    return {name: value for name, value in options.items() if value is not None}


class OutputMethods:
    """Mixed into Dataset: the ways a dataset leaves ember.data (a driver-side table, refs to its
    blocks, files). Like AllToAllMethods it works through ``self._plan`` and public Dataset methods,
    with three exceptions: ``self._bundles()`` streams the plan's blocks where holding every ref first
    (``materialize``) is not wanted, and a write records its execution in ``self._last_stats`` so that
    ``stats()`` describes it, and the writes check the columns they name against the schema the
    plan already knows (``_missing_columns``) before anything runs.
    """

    def to_pandas(self, limit: int | None = None):
        """Every row in one pandas DataFrame."""
        table = self.to_arrow()
        if limit is not None and table.num_rows > limit:
            raise ValueError(f"The dataset has more than the given limit of {limit} rows.")
        return blk.to_pandas(table)

    def to_arrow(self) -> pa.Table:
        """Every row in one pyarrow Table."""
        return it.fetch_table(self._bundles())

    def to_arrow_refs(self) -> list:
        """The blocks, as ObjectRefs to pyarrow Tables (the plan runs first)."""
        return [ref for ref, _ in self.materialize()._plan.bundles]

    def to_pandas_refs(self) -> list:
        """The blocks as ObjectRefs to pandas DataFrames, one per block, each converted by a task
        (the plan runs first; no block comes to the driver)."""
        from ember.data.interop import pandas_refs

        return pandas_refs(self.materialize()._plan.bundles)

    def to_numpy_refs(self, *, column: str | None = None) -> list:
        """The blocks as ObjectRefs to numpy data, one per block, each converted by a task: a dict of
        arrays (one per column) or, with ``column``, that column's array."""
        from ember.data.interop import numpy_refs

        return numpy_refs(self.materialize()._plan.bundles, column)

    def write_parquet(
        self,
        path: str,
        *,
        partition_cols=None,
        filesystem=None,
        min_rows_per_file=None,
        max_rows_per_file=None,
        ray_remote_args=None,
        concurrency=None,
        mode="append",
        **arrow_parquet_args,
    ) -> None:
        """Write the dataset as Parquet files under the directory ``path``: one file per block, or
        with ``min_rows_per_file`` one per run of consecutive blocks holding at least that many rows
        (the last file may hold fewer), each cut into files of at most ``max_rows_per_file`` rows.
        ``partition_cols``: Hive-style directories (``col=value/``) by those columns' values, which
        the files then leave out and ``read_parquet`` reads back from the paths (as strings).
        ``ray_remote_args`` (such as ``num_cpus``) and ``concurrency`` (at most that many write tasks
        at once) shape the write tasks. ``mode`` (a ``SaveMode``) says what to do when ``path``
        exists: "append" (the default), "overwrite", "ignore" or "error". ``arrow_parquet_args`` go
        to ``pyarrow.parquet.write_table``."""
        if partition_cols is not None:
            if isinstance(partition_cols, str) or not all(isinstance(c, str) for c in partition_cols):
                raise TypeError(f"partition_cols must be a list of column names, got {partition_cols!r}.")
            partition_cols = list(partition_cols)
            missing, names = self._missing_columns(partition_cols)
            if missing:
                raise ValueError(f"write_parquet: no column(s) {missing} to partition by in {names}.")
        _positive("max_rows_per_file", max_rows_per_file)
        if max_rows_per_file is not None and min_rows_per_file is not None and min_rows_per_file > max_rows_per_file:
            raise ValueError(
                f"min_rows_per_file ({min_rows_per_file}) must not be more than"
                f" max_rows_per_file ({max_rows_per_file})."
            )
        self._write(
            "parquet",
            path,
            filesystem,
            arrow_parquet_args,
            min_rows_per_file,
            ray_remote_args,
            concurrency,
            mode,
            partition_cols=partition_cols or None,
            max_rows_per_file=max_rows_per_file,
        )

    def write_csv(
        self,
        path: str,
        *,
        filesystem=None,
        min_rows_per_file=None,
        ray_remote_args=None,
        concurrency=None,
        mode="append",
        **arrow_csv_args,
    ) -> None:
        """Write the dataset as CSV files under the directory ``path`` (files, tasks and ``mode`` as
        ``write_parquet``); ``arrow_csv_args`` go to ``pyarrow.csv.write_csv``."""
        self._write("csv", path, filesystem, arrow_csv_args, min_rows_per_file, ray_remote_args, concurrency, mode)

    def write_json(
        self,
        path: str,
        *,
        filesystem=None,
        min_rows_per_file=None,
        ray_remote_args=None,
        concurrency=None,
        mode="append",
        **pandas_json_args,
    ) -> None:
        """Write the dataset as JSON lines files under ``path`` (files, tasks and ``mode`` as
        ``write_parquet``); ``pandas_json_args`` go to ``DataFrame.to_json``."""
        self._write("json", path, filesystem, pandas_json_args, min_rows_per_file, ray_remote_args, concurrency, mode)

    def write_orc(
        self,
        path: str,
        *,
        filesystem=None,
        try_create_dir: bool = True,
        arrow_open_stream_args=None,
        filename_provider=None,
        arrow_orc_args_fn=None,
        min_rows_per_file=None,
        ray_remote_args=None,
        concurrency=None,
        mode="append",
        **arrow_orc_args,
    ) -> None:
        """Write the dataset as ORC files under the directory ``path``, which ``read_orc`` reads back
        (files, tasks and ``mode`` as ``write_parquet``); ``arrow_orc_args`` go to
        ``pyarrow.orc.write_table``."""
        # Ray's options this write does not implement go on to _write, which refuses them by name.
        args = dict(arrow_orc_args, try_create_dir=try_create_dir) | _given(
            arrow_open_stream_args=arrow_open_stream_args,
            filename_provider=filename_provider,
            arrow_orc_args_fn=arrow_orc_args_fn,
        )
        self._write("orc", path, filesystem, args, min_rows_per_file, ray_remote_args, concurrency, mode)

    def write_numpy(
        self,
        path: str,
        *,
        column: str,
        filesystem=None,
        try_create_dir: bool = True,
        arrow_open_stream_args=None,
        filename_provider=None,
        min_rows_per_file=None,
        ray_remote_args=None,
        concurrency=None,
        num_rows_per_file=None,
        mode="append",
    ) -> None:
        """Write the column ``column`` as ``.npy`` files under the directory ``path``, which
        ``read_numpy`` reads back (files, tasks and ``mode`` as ``write_parquet``). A tensor column
        gives one array of shape (rows, *shape) per file."""
        if not isinstance(column, str):
            raise TypeError(f"write_numpy: column must be a str, got {type(column).__name__}.")
        missing, names = self._missing_columns([column])
        if missing:
            raise ValueError(f"write_numpy: no column {column!r} in {names}.")
        args = {"column": column, "try_create_dir": try_create_dir} | _given(
            arrow_open_stream_args=arrow_open_stream_args,
            filename_provider=filename_provider,
            num_rows_per_file=num_rows_per_file,
        )
        self._write("numpy", path, filesystem, args, min_rows_per_file, ray_remote_args, concurrency, mode)

    def write_images(
        self,
        path: str,
        column: str,
        file_format: str = "png",
        *,
        filesystem=None,
        try_create_dir: bool = True,
        arrow_open_stream_args=None,
        filename_provider=None,
        ray_remote_args=None,
        concurrency=None,
        mode="append",
    ) -> None:
        """Write the images of ``column`` (ndarrays, as ``read_images`` makes them) under the
        directory ``path``, one ``file_format`` file per row, encoded with Pillow (tasks and
        ``mode`` as ``write_parquet``)."""
        if not isinstance(column, str):
            raise TypeError(f"write_images: column must be a str, got {type(column).__name__}.")
        from ember.data.images import _pillow

        image = _pillow()
        image.init()  # registers every format Pillow has a writer for (image.SAVE)
        extension = file_format.lower() if isinstance(file_format, str) else None
        pillow_format = image.registered_extensions().get(f".{extension}", str(extension).upper())
        if pillow_format not in image.SAVE:
            raise ValueError(
                f"write_images: Pillow cannot write {file_format!r}; it writes {sorted(f.lower() for f in image.SAVE)}."
            )
        missing, names = self._missing_columns([column])
        if missing:
            raise ValueError(f"write_images: no column {column!r} in {names}.")
        args = {
            "column": column,
            "file_format": pillow_format,
            "extension": extension,
            "try_create_dir": try_create_dir,
        }
        args |= _given(arrow_open_stream_args=arrow_open_stream_args, filename_provider=filename_provider)
        self._write("images", path, filesystem, args, None, ray_remote_args, concurrency, mode)

    def write_sql(self, sql: str, connection_factory, ray_remote_args=None, concurrency=None) -> None:
        """Write the rows to a database with a Python DB API 2 connector: each write task opens a
        connection with ``connection_factory()``, runs ``sql`` (an INSERT with one parameter per
        column, in column order) with ``executemany`` over its blocks' rows, and commits.
        ``ray_remote_args`` and ``concurrency`` shape the write tasks."""
        from ember.data.sql import SQLDatasink

        self.write_datasink(
            SQLDatasink(sql, connection_factory), ray_remote_args=ray_remote_args, concurrency=concurrency
        )

    def write_datasink(self, datasink, *, ray_remote_args=None, concurrency=None) -> None:
        """Write the dataset to a custom ``Datasink``: ``on_write_start`` on the driver, then write
        tasks calling ``datasink.write`` on the blocks (one task per block, or per run of blocks
        holding ``min_rows_per_write`` rows), then ``on_write_complete`` with a ``WriteResult``; on
        an error, ``on_write_failed`` and the error raised (with its own type, as a TaskError).
        ``ray_remote_args`` and ``concurrency`` shape the write tasks."""
        from ember.data.datasink import write_datasink

        write_datasink(self, datasink, ray_remote_args, concurrency)

    def _missing_columns(self, columns: list) -> tuple:
        """(those of ``columns`` the plan's known schema lacks, its column names): a write checks
        the columns it names before anything runs. Nothing is missing where the schema is known
        only by running the plan; the write tasks check then."""
        from ember.data.dataset import _known_schema

        schema = _known_schema(self._plan)
        if schema is None:
            return [], None
        return [c for c in columns if c not in schema.names], schema.names

    def _write(
        self,
        fmt,
        path,
        filesystem,
        args,
        min_rows_per_file,
        ray_remote_args,
        concurrency,
        mode,
        partition_cols=None,
        max_rows_per_file=None,
    ):
        from ember.data.sinks import RAY_WRITE_OPTIONS, prepare, save_mode, write_stage

        # Ray's option, not the file format's: whether the write makes the directory.
        create_dir = args.pop("try_create_dir", True)

        if "num_rows_per_file" in args:  # Ray's older name for it, deprecated there too
            warnings.warn("num_rows_per_file is deprecated: use min_rows_per_file.", DeprecationWarning, stacklevel=3)
            older = args.pop("num_rows_per_file")
            min_rows_per_file = older if min_rows_per_file is None else min_rows_per_file
        _positive("min_rows_per_file", min_rows_per_file)

        unsupported = sorted(RAY_WRITE_OPTIONS.intersection(args))
        if unsupported:
            # They would reach pyarrow's writer and fail inside every write task instead.
            raise TypeError(
                f"write_{fmt}() does not support Ray's {', '.join(unsupported)} yet: leave "
                f"{'it' if len(unsupported) == 1 else 'them'} out (min_rows_per_file gives fewer, larger files)."
            )
        if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
            raise TypeError(f"ray_remote_args must be a dict, got {type(ray_remote_args).__name__}.")
        ds = _dataset()
        _, cap = ds._compute_of(ds._noop, None, concurrency, f"write_{fmt}")
        remote_args = ds._remote_args(None, None, None, None, ray_remote_args or {})
        target = prepare(path, filesystem, save_mode(mode), create_dir=bool(create_dir))
        if target is None:  # mode="ignore" and the directory exists
            return
        fs, root = target
        stage = Stage("write", write_stage(fmt, fs, root, args, partition_cols, max_rows_per_file))
        name = f"Write{fmt.upper() if fmt in ('csv', 'orc') else fmt.capitalize()}"
        written = ds.Dataset(MapOp(name, self._plan, stage, None, remote_args, False, cap, min_rows=min_rows_per_file))
        for _ in written._bundles():
            pass
        self._last_stats = written._last_stats
