"""Writes: each block becomes one file, written by the task that made the block."""

import enum
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ember.data.block import column_to_numpy


class SaveMode(str, enum.Enum):
    """What a write does when its directory exists already (Ray's ``SaveMode``)."""

    APPEND = "append"  # add this write's files beside those there
    OVERWRITE = "overwrite"  # delete what is there first
    IGNORE = "ignore"  # write nothing
    ERROR = "error"  # raise FileExistsError


def save_mode(mode) -> SaveMode:
    try:
        return SaveMode(mode)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in SaveMode)
        raise ValueError(f"mode must be a SaveMode or one of {choices}, got {mode!r}.") from None


def prepare(path: str, filesystem, mode: SaveMode = SaveMode.APPEND, create_dir: bool = True):
    """The filesystem and directory a write goes to, made ready for ``mode`` (and created unless
    ``create_dir`` is false); None when ``mode`` is IGNORE and the directory exists (nothing is to
    be written)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, got {type(path).__name__}.")
    path = os.fspath(path)
    if filesystem is None:
        if "://" in path and not path.startswith("file://"):
            filesystem, path = pafs.FileSystem.from_uri(path)
        else:
            filesystem = pafs.LocalFileSystem()
            path = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        if mode is SaveMode.ERROR:
            raise FileExistsError(f"{path} exists already (mode='error').")
        if mode is SaveMode.IGNORE:
            return None
        if mode is SaveMode.OVERWRITE:
            filesystem.delete_dir_contents(path)
    if create_dir:
        filesystem.create_dir(path, recursive=True)
    return filesystem, path


# Ray's own write options (not the file format's) that ember.data does not implement: refused at the
# call rather than handed on to pyarrow or pandas as unknown arguments.
RAY_WRITE_OPTIONS = frozenset(
    {
        "partition_cols",  # write_parquet's own arguments; the other writes refuse them
        "max_rows_per_file",
        "filename_provider",
        "arrow_parquet_args_fn",
        "arrow_csv_args_fn",
        "arrow_orc_args_fn",
        "pandas_json_args_fn",
        "arrow_open_stream_args",
    }
)


class _Writer:
    """The stage function of a write: writes its batch, returns a row naming each file written.
    Parquet only: ``partition_cols`` (Hive-style directories, as ``read_parquet`` reads them) and
    ``max_rows_per_file`` (a block larger than that is cut into several files)."""

    def __init__(self, fmt, fs, root, args, partition_cols=None, max_rows_per_file=None):
        self.fmt, self.fs, self.root, self.args = fmt, fs, root, args
        self.partition_cols, self.max_rows_per_file = partition_cols, max_rows_per_file
        self.prefix = uuid.uuid4().hex[:12]  # one write's files sort by block, apart from other writes
        self.__name__ = f"write_{fmt}"

    def __call__(self, table: pa.Table, index: int):
        if table.num_rows == 0:
            return pa.table({"path": pa.array([], pa.string()), "num_rows": pa.array([], pa.int64())})
        if self.partition_cols or self.max_rows_per_file:
            return self._write_parquet_dataset(table, index)
        if self.fmt == "images":
            return self._write_images(table, index)
        path = f"{self.root}/{self.prefix}_{index:06d}.{'npy' if self.fmt == 'numpy' else self.fmt}"
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            with self.fs.open_output_stream(path) as out:
                pq.write_table(table, out, **self.args)
        elif self.fmt == "csv":
            import pyarrow.csv as pacsv

            with self.fs.open_output_stream(path) as out:
                pacsv.write_csv(table, out, **self.args)
        elif self.fmt == "orc":
            import pyarrow.orc as paorc

            with self.fs.open_output_stream(path) as out:
                paorc.write_table(table, out, **self.args)
        elif self.fmt == "numpy":
            column = self.args["column"]
            if column not in table.column_names:
                raise ValueError(f"write_numpy: no column {column!r} in {table.column_names}.")
            # No pickled objects: read_numpy (np.load with allow_pickle=False) must read the file.
            with self.fs.open_output_stream(path) as out:
                np.save(out, column_to_numpy(table.column(column)), allow_pickle=False)
        else:
            text = table.to_pandas().to_json(orient="records", lines=True, **self.args)
            with self.fs.open_output_stream(path) as out:
                out.write(text.encode())
        return pa.table({"path": [path], "num_rows": [table.num_rows]})

    def _write_images(self, table: pa.Table, index: int) -> pa.Table:
        """A file per row: the ``column`` image (an ndarray Pillow can take) in ``file_format``."""
        from PIL import Image

        column, file_format = self.args["column"], self.args["file_format"]
        if column not in table.column_names:
            raise ValueError(f"write_images: no column {column!r} in {table.column_names}.")
        paths = []
        for row, image in enumerate(column_to_numpy(table.column(column))):
            path = f"{self.root}/{self.prefix}_{index:06d}_{row:06d}.{self.args['extension']}"
            with self.fs.open_output_stream(path) as out:
                Image.fromarray(np.asarray(image)).save(out, format=file_format)
            paths.append(path)
        return pa.table({"path": pa.array(paths, pa.string()), "num_rows": pa.array([1] * len(paths), pa.int64())})

    def _write_parquet_dataset(self, table: pa.Table, index: int) -> pa.Table:
        # pyarrow's dataset writer splits the block by partition values and by row count; the
        # partition columns live in the directory names only, as Hive (and Ray) write them.
        import pyarrow.dataset as pds

        file_format = pds.ParquetFileFormat()
        args = dict(self.args)
        group_rows = args.pop("row_group_size", None) or 1 << 20
        if self.max_rows_per_file:
            group_rows = min(group_rows, self.max_rows_per_file)
        written = []
        pds.write_dataset(
            table,
            self.root,
            format=file_format,
            filesystem=self.fs,
            partitioning=self.partition_cols or None,
            partitioning_flavor="hive" if self.partition_cols else None,
            basename_template=f"{self.prefix}_{index:06d}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",  # names are this write's own: nothing is replaced
            max_rows_per_file=self.max_rows_per_file or 0,
            max_rows_per_group=group_rows,
            min_rows_per_group=0,
            file_options=file_format.make_write_options(**args),
            use_threads=False,  # one CPU per write task
            file_visitor=lambda file: written.append((file.path, file.metadata.num_rows)),
        )
        paths, rows = zip(*sorted(written)) if written else ((), ())
        return pa.table({"path": pa.array(paths, pa.string()), "num_rows": pa.array(rows, pa.int64())})


def write_stage(fmt, fs, root, args, partition_cols=None, max_rows_per_file=None):
    return _Writer(fmt, fs, root, args, partition_cols, max_rows_per_file)
